"""The native codec: ModelInfer bytes parsed and built by the compiled
extension (ext/), with no protobuf objects. Raw input contents stay where they
arrived, in the request bytes; outputs are written into their place in the
response bytes, by ONNX Runtime itself where the model allows (Model.run_into).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import _wire
from ..protocol.datatypes import DATATYPES
from ..protocol.errors import invalid
from ..protocol.tensors import check_rank
from ..runtime.model import Model
from ..shm.registry import Leases
from ..shm.tensors import input_array, shm_allocate, shm_range
from .request import InferRequest

_LITTLE = {name: d.numpy.newbyteorder("<") for name, d in DATATYPES.items() if name != "BYTES"}


def decode_request(data: bytes, leases: Leases | None = None) -> InferRequest:
    """Parse and check a serialized ModelInferRequest; arrays view ``data``, or
    the shared-memory regions they lie in (held by ``leases``; None: refused)."""
    leases = leases or Leases(None)
    try:
        model_name, model_version, request_id, parameters, inputs, outputs = _wire.parse_request(data)
    except ValueError as e:
        raise invalid(str(e)) from None
    request = InferRequest(model_name, model_version, request_id, parameters=parameters)
    for name, datatype, shape, parameters, contents in inputs:
        what = f"input '{name}'"
        check_rank(shape, what)  # the parser took any rank; numpy takes 64
        where = shm_range(parameters, leases, what)
        if where is None and contents is None:  # the parser saw a region name the checks refused
            raise invalid(f"{what}: shared_memory_region must name a registered region")
        request.inputs[name] = (input_array(where, datatype, shape, what) if where is not None
                                else _array(datatype, shape, contents))
    for name, parameters in outputs:
        where = shm_range(parameters, leases, f"output '{name}'")
        if where is not None:
            request.shm_outputs[name] = where
        request.outputs.append(name)
    return request


def infer(model: Model, request: InferRequest) -> bytes:
    """Run ``request`` on ``model``; the serialized response."""
    allocate = functools.partial(_wire.ResponseBuffer, model.name, str(model.version), request.id)
    if request.shm_outputs:
        allocate = shm_allocate(allocate, request.shm_outputs)
    return model.run_into(request.inputs, request.outputs, allocate, deadline_ns=request.deadline_ns,
                          alive=request.alive, parameters=request.parameters).finish()


def _array(datatype: str, shape: tuple[int, ...], contents) -> np.ndarray:
    if datatype != "BYTES":  # sizes were checked by the parser
        return np.frombuffer(contents, dtype=_LITTLE[datatype]).reshape(shape)
    items = _wire.unpack_bytes(contents, math.prod(shape))  # first: it refuses a count the bytes cannot hold
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)
