"""The native codec: ModelInfer bytes parsed and built by the compiled
extension (ext/), with no protobuf objects. Raw input contents stay where they
arrived, in the request bytes; outputs are written into their place in the
response bytes, by ONNX Runtime itself where the model allows (Model.run_into).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _wire
from .datatypes import DATATYPES
from .errors import invalid
from .model import Model
from .request import InferRequest, reject_shared_memory

_LITTLE = {name: d.numpy.newbyteorder("<") for name, d in DATATYPES.items() if name != "BYTES"}


def decode_request(data: bytes) -> InferRequest:
    """Parse and check a serialized ModelInferRequest; arrays view ``data``."""
    try:
        model_name, model_version, request_id, _, inputs, outputs = _wire.parse_request(data)
    except ValueError as e:
        raise invalid(str(e)) from None
    request = InferRequest(model_name, model_version, request_id)
    for name, datatype, shape, parameters, contents in inputs:
        reject_shared_memory(parameters, f"input '{name}'")
        request.inputs[name] = _array(datatype, shape, contents)
    for name, parameters in outputs:
        reject_shared_memory(parameters, f"output '{name}'")
        request.outputs.append(name)
    return request


def infer(model: Model, request: InferRequest) -> bytes:
    """Run ``request`` on ``model``; the serialized response."""
    allocate = functools.partial(_wire.ResponseBuffer, model.name, str(model.version), request.id)
    return model.run_into(request.inputs, request.outputs, allocate, deadline_ns=request.deadline_ns,
                          alive=request.alive).finish()


def _array(datatype: str, shape: tuple[int, ...], contents) -> np.ndarray:
    if datatype != "BYTES":  # sizes were checked by the parser
        return np.frombuffer(contents, dtype=_LITTLE[datatype]).reshape(shape)
    array = np.empty(math.prod(shape), dtype=object)
    array[:] = _wire.unpack_bytes(contents, array.size)
    return array.reshape(shape)
