"""The protobuf codec: ModelInfer bytes to and from icow's core types with the
generated message classes and numpy. The baseline that the native codec
(native_codec.py) is compared against, in benchmarks and differential tests;
``icow serve --codec protobuf`` serves with it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from ._proto import inference_pb2 as pb
from .datatypes import from_numpy, lookup
from .errors import invalid
from .model import Model
from .request import InferRequest, reject_shared_memory
from .tensors import from_contents, from_raw, to_raw


def decode_request(data: bytes) -> InferRequest:
    """Parse and check a serialized ModelInferRequest."""
    try:
        msg = pb.ModelInferRequest.FromString(data)
    except DecodeError as e:
        raise invalid(f"malformed ModelInferRequest: {e}") from None
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
                      "it needs one per input, in order")
    request = InferRequest(msg.model_name, msg.model_version, msg.id)
    for i, tensor in enumerate(msg.inputs):
        what = f"input '{tensor.name}'"
        if tensor.name in request.inputs:
            raise invalid(f"{what} appears twice in the request")
        reject_shared_memory(tensor.parameters, what)
        try:
            datatype = lookup(tensor.datatype)
        except KeyError as e:
            raise invalid(f"{what}: {e.args[0]}") from None
        has_typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        if raw and has_typed:
            raise invalid(f"{what}: has typed contents while the request also uses raw_input_contents; "
                          "send every input one way")
        shape = list(tensor.shape)
        request.inputs[tensor.name] = (from_raw(raw[i], datatype, shape, what) if raw
                                       else from_contents(tensor.contents, datatype, shape, what))
    for output in msg.outputs:
        reject_shared_memory(output.parameters, f"output '{output.name}'")
        request.outputs.append(output.name)
    return request


def infer(model: Model, request: InferRequest) -> bytes:
    """Run ``request`` on ``model``; the serialized response."""
    outputs = model.run(request.inputs, request.outputs, deadline_ns=request.deadline_ns, alive=request.alive)
    return encode_response(model.name, str(model.version), request.id, outputs)


def encode_response(model_name: str, model_version: str, request_id: str,
                    outputs: Mapping[str, np.ndarray]) -> bytes:
    """A serialized ModelInferResponse with every output in raw_output_contents."""
    msg = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, array in outputs.items():
        datatype = from_numpy(array.dtype)
        msg.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        msg.raw_output_contents.append(to_raw(array, datatype))
    return msg.SerializeToString()
