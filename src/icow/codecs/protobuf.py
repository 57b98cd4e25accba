"""The protobuf codec: ModelInfer bytes to and from icow's core types with the
generated message classes and numpy. The baseline that the native codec
(native.py) is compared against, in benchmarks and differential tests;
``icow serve --codec protobuf`` serves with it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from .._proto import inference_pb2 as pb
from ..protocol.datatypes import from_numpy, lookup
from ..protocol.errors import invalid
from ..protocol.tensors import from_contents, from_raw, to_raw
from ..runtime.model import Model
from ..shm.registry import Leases
from ..shm.tensors import ShmRange, input_array, shm_range, write_output
from .request import InferRequest


def decode_request(data: bytes, leases: Leases | None = None) -> InferRequest:
    """Parse and check a serialized ModelInferRequest; shared-memory regions
    its tensors name are held by ``leases`` (None: shared memory is refused)."""
    leases = leases or Leases(None)
    try:
        msg = pb.ModelInferRequest.FromString(data)
    except DecodeError as e:
        raise invalid(f"malformed ModelInferRequest: {e}") from None
    raw = list(msg.raw_input_contents)
    in_message = [t for t in msg.inputs if "shared_memory_region" not in t.parameters]
    if raw and len(raw) != len(in_message):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(in_message)} inputs"
                      + (" outside shared memory" if len(in_message) != len(msg.inputs) else "")
                      + "; it needs one per input, in order")
    request = InferRequest(msg.model_name, msg.model_version, msg.id, parameters=_parameters(msg.parameters))
    raw_next = iter(raw)  # raw_input_contents holds the inputs outside shared memory, in order
    for tensor in msg.inputs:
        what = f"input '{tensor.name}'"
        if tensor.name in request.inputs:
            raise invalid(f"{what} appears twice in the request")
        where = shm_range(_parameters(tensor.parameters), leases, what)
        request.inputs[tensor.name] = (input_array(where, tensor.datatype, tuple(tensor.shape), what)
                                       if where is not None else _array(tensor, next(raw_next) if raw else None, what))
    for output in msg.outputs:
        where = shm_range(_parameters(output.parameters), leases, f"output '{output.name}'")
        if where is not None:
            request.shm_outputs[output.name] = where
        request.outputs.append(output.name)
    return request


def _array(tensor, raw: bytes | None, what: str) -> np.ndarray:
    try:
        datatype = lookup(tensor.datatype)
    except KeyError as e:
        raise invalid(f"{what}: {e.args[0]}") from None
    has_typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
    if raw is not None and has_typed:
        raise invalid(f"{what}: has typed contents while the request also uses raw_input_contents; "
                      "send every input one way")
    shape = list(tensor.shape)
    return from_raw(raw, datatype, shape, what) if raw is not None else from_contents(tensor.contents, datatype,
                                                                                       shape, what)


def _parameters(parameters) -> dict:
    """InferParameter messages as plain values, as the native parser gives them."""
    return {key: getattr(p, p.WhichOneof("parameter_choice")) if p.WhichOneof("parameter_choice") else None
            for key, p in parameters.items()}


def infer(model: Model, request: InferRequest) -> bytes:
    """Run ``request`` on ``model``; the serialized response."""
    outputs = model.run(request.inputs, request.outputs, deadline_ns=request.deadline_ns, alive=request.alive,
                        parameters=request.parameters)
    return encode_response(model.name, str(model.version), request.id, outputs, request.shm_outputs)


def encode_response(model_name: str, model_version: str, request_id: str,
                    outputs: Mapping[str, np.ndarray], shm_outputs: Mapping[str, ShmRange] | None = None) -> bytes:
    """A serialized ModelInferResponse with every output in raw_output_contents,
    but those in ``shm_outputs``: copied into their regions, with an empty entry."""
    msg = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, array in outputs.items():
        datatype = from_numpy(array.dtype)
        msg.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        where = (shm_outputs or {}).get(name)
        if where is not None:
            write_output(where, array, name)
            msg.raw_output_contents.append(b"")
        else:
            msg.raw_output_contents.append(to_raw(array, datatype))
    return msg.SerializeToString()
