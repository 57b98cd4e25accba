"""The fast lane: an inference request whose tensors are all binary, in and out, is
answered in C++ (icow._plane's Direct.serve_http: the native plane's checks, plan and
bound run) with no numpy object and no copy of its tensors. Only its JSON header is
read here (orjson, once, by the caller). Anything else — JSON tensors, shared memory,
parameters the lane does not know, errors — takes the full path (dispatch.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..protocol.errors import InferenceServerError
from .status import grpc_status

_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_INPUT_KEYS = frozenset({"name", "datatype", "shape", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
# priority and timeout act only on models the lane does not serve (runtime/request_policy.py)
_PARAMETERS = frozenset({"binary_data_output", "timeout", "priority"})


class Serve(Protocol):
    def __call__(self, model: str, version: str, id: str, inputs: list, outputs: list, body: Any,
                 deadline_ns: int, alive: Any, may_wait: bool, brief_only: bool) -> Any: ...


def _alive() -> bool:
    return True  # on the event loop the run is now: nobody can have gone meanwhile


class FastLane:
    """``serve``: the serve_http of a Direct on the entries gRPC's fast path uses (the
    native plane's, or grpcio's fast path's), so both transports wait in one line for
    a model's instances."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve

    def answer(self, model: str, version: str, header: dict, body: Any, binary_at: int, deadline_ns: int | None,
               on_loop: bool, alive: Callable[[], bool] | None = None) -> tuple[bytes, int] | None:
        """The answer and its JSON header's length; None: the full path serves it.
        ``on_loop``: called on the event loop, which must not wait (an idle instance,
        a brief model, or None). Raises InferenceServerError when the request left the
        model's line unserved."""
        lane = _lane(header, binary_at, len(body))
        if lane is None:
            return None
        request_id, inputs, outputs = lane
        answer = self._serve(model, version, request_id, inputs, outputs, body, deadline_ns or 0, alive or _alive,
                             not on_loop, on_loop)
        if answer is None or len(answer) == 2:
            return answer
        code, message, _, _ = answer
        raise InferenceServerError(grpc_status(code), message)


def _lane(header: dict, at: int, size: int) -> tuple[str, list, list] | None:
    """(id, inputs as (name, datatype, shape, offset, size), output names) of a request
    the lane can take, else None."""
    if not header.keys() <= _REQUEST_KEYS:
        return None
    request_id = header.get("id", "")
    parameters = header.get("parameters", {})
    inputs, outputs = header.get("inputs"), header.get("outputs", [])
    if (type(request_id) is not str or type(parameters) is not dict or not parameters.keys() <= _PARAMETERS
            or type(inputs) is not list or not inputs or type(outputs) is not list):
        return None
    binary_all = parameters.get("binary_data_output", False) is True
    lane_inputs = []
    for tensor in inputs:
        entry = _input(tensor, at)
        if entry is None:
            return None
        lane_inputs.append(entry)
        at += entry[4]
    if at != size or (not outputs and not binary_all):
        return None
    names = [_output(tensor, binary_all) for tensor in outputs]
    return None if None in names else (request_id, lane_inputs, names)


def _input(tensor: Any, at: int) -> tuple[str, str, list, int, int] | None:
    if type(tensor) is not dict or not tensor.keys() <= _INPUT_KEYS:
        return None
    name, datatype, shape, parameters = (tensor.get("name"), tensor.get("datatype"), tensor.get("shape"),
                                         tensor.get("parameters"))
    if (type(name) is not str or type(datatype) is not str or type(shape) is not list or len(shape) > 64
            or not all(type(d) is int and 0 <= d < 2**62 for d in shape)
            or type(parameters) is not dict or len(parameters) != 1):
        return None
    size = parameters.get("binary_data_size")
    if type(size) is not int or size < 0:
        return None
    return name, datatype, shape, at, size


def _output(tensor: Any, binary_all: bool) -> str | None:
    if type(tensor) is not dict or not tensor.keys() <= _OUTPUT_KEYS or type(tensor.get("name")) is not str:
        return None
    parameters = tensor.get("parameters", {})
    if parameters == {} and binary_all or parameters == {"binary_data": True}:
        return tensor["name"]
    return None
