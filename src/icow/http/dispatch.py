"""A routed request to its endpoint, on a thread of the HTTP pool; the answer as a Reply."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson

from ..protocol.errors import InferenceServerError, invalid
from ..services.oip import InferenceService
from ..shm.registry import Leases
from ..shm.tensors import shm_allocate
from . import body as bodies
from . import endpoints, infer
from .fast import FastLane
from .routes import Route
from .status import HttpError

_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


class Parsed(NamedTuple):
    header: dict  # the JSON header
    binary: memoryview  # the binary tensors after it


class Reply(NamedTuple):
    status: int
    body: bytes | memoryview
    headers: tuple[tuple[bytes, bytes], ...] = ()
    error: str = ""  # for the access log
    request_id: str = ""


def _ok(value: Any = None) -> Reply:
    return Reply(200, b"" if value is None else orjson.dumps(value), (_JSON,))


class Dispatcher:
    def __init__(self, service: InferenceService, max_response_bytes: int) -> None:
        self.service = service
        self.max_response_bytes = max_response_bytes
        # binary requests answered in C++, where icow._plane is built: set by InferenceServer.start,
        # once the data plane whose queue the lane shares is up
        self.fast: FastLane | None = None

    def health(self, endpoint: str) -> Reply:
        if endpoint == "ServerLive":
            return _ok({"live": True})
        if not self.service.ready:
            return Reply(503, orjson.dumps({"ready": False}), (_JSON,), "not ready")
        return _ok({"ready": True})

    def answer(self, route: Route, data: bytes, headers: dict[bytes, bytes]) -> Reply:
        """Every endpoint but inference and health (``infer``, ``health``)."""
        return _ok(self._other(route, _json_body(data)))

    def _other(self, route: Route, body: dict) -> Any:
        s, m, v = self.service, route.model, route.version
        match route.endpoint:
            case "ServerMetadata":
                return endpoints.server_metadata(s)
            case "ModelMetadata":
                return endpoints.model_metadata(s, m, v)
            case "ModelReady":
                return endpoints.model_ready(s, m, v)
            case "ModelConfig":
                return endpoints.model_config(s, m, v)
            case "ModelStatistics":
                return endpoints.model_stats(s, m, v)
            case "RepositoryIndex":
                return endpoints.repository_index(s, body)
            case "RepositoryModelLoad":
                return endpoints.load(s, m, body)
            case "RepositoryModelUnload":
                return endpoints.unload(s, m, body)
            case "TraceSetting" | "LogSettings":
                return endpoints.call(s, route.endpoint, None)
        kind, action = route.kind, route.endpoint.removeprefix("SystemSharedMemory").removeprefix("CudaSharedMemory")
        if action == "Status":
            return endpoints.shm_status(s, kind, route.region)
        if action == "Register":
            return endpoints.shm_register(s, kind, route.region, body)
        return endpoints.shm_unregister(s, kind, route.region)

    def infer_now(self, route: Route, data: bytes, headers: dict[bytes, bytes]) -> Reply | Parsed:
        """On the event loop: the fast lane's answer where it has one without waiting
        (an idle instance, a brief model), else the parsed request for ``infer``."""
        parsed = Parsed(*bodies.split(data, headers.get(bodies.HEADER_LENGTH)))
        if self.fast is not None:
            with _naming(parsed.header):
                reply = self._fast(route, data, parsed, on_loop=True)
            if reply is not None:
                return reply
        return parsed

    def _fast(self, route: Route, data: bytes, parsed: Parsed, on_loop: bool,
              alive: Callable[[], bool] | None = None) -> Reply | None:
        header, binary = parsed
        _check_timeout(header)
        answer = self.fast.answer(route.model, route.version, header, data, len(data) - len(binary),
                                  None, on_loop, alive)
        if answer is None:
            return None
        body, header_length = answer
        return Reply(200, body, (_BINARY, (bodies.HEADER_LENGTH, str(header_length).encode())),
                     request_id=header.get("id", ""))

    def infer(self, route: Route, data: bytes, headers: dict[bytes, bytes], parsed: Parsed | None = None,
              alive: Callable[[], bool] | None = None) -> Reply:
        """``alive``: False once the client has gone (its request then leaves the model's queue)."""
        parsed = parsed or Parsed(*bodies.split(data, headers.get(bodies.HEADER_LENGTH)))
        with _naming(parsed.header):
            if self.fast is not None:
                reply = self._fast(route, data, parsed, on_loop=False, alive=alive)
                if reply is not None:
                    return reply
            return self._infer(route, *parsed, alive)

    def _infer(self, route: Route, header: dict, binary: memoryview, alive: Callable[[], bool] | None) -> Reply:
        _check_timeout(header)
        with Leases(self.service.shm) as held:  # regions the request names stay mapped until it is answered
            request, outputs = infer.decode(header, binary, held)
            model = self.service.repository.get(route.model, route.version, request.id)
            allocate = infer.allocator(model.name, str(model.version), request.id, outputs, request.shm_outputs)
            if request.shm_outputs:
                allocate = shm_allocate(allocate, request.shm_outputs)
            answer = model.run_into(request.inputs, request.outputs, allocate, alive=alive,
                                    parameters=request.parameters)
            held.check()
            body, header_length = answer.finish()
        if len(body) > self.max_response_bytes:
            raise HttpError(413, f"the response of model '{model.name}' is {len(body)} bytes, over the server's "
                                 f"limit of {self.max_response_bytes} bytes: raise it with --max-message-mb, "
                                 "or request fewer outputs or a smaller batch")
        if header_length is None:
            return Reply(200, body, (_JSON,), request_id=request.id)
        return Reply(200, body, (_BINARY, (bodies.HEADER_LENGTH, str(header_length).encode())),
                     request_id=request.id)


@contextlib.contextmanager
def _naming(header: dict) -> Iterator[None]:
    """A failed request's error carries its id: the access log names it, as gRPC's does."""
    try:
        yield
    except (HttpError, InferenceServerError) as e:
        request_id = header.get("id")
        e.request_id = request_id if isinstance(request_id, str) else ""
        raise


def _json_body(data: bytes) -> dict:
    if not data.strip():
        return {}
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise invalid(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def _check_timeout(header: dict) -> None:
    """Refuse a ``timeout`` parameter that is not a number of microseconds. It is the
    request's queue timeout where its model allows that (allow_timeout_override), as over
    gRPC and in Triton (runtime/request_policy.py): not the HTTP call's deadline."""
    parameters = header.get("parameters")
    timeout = parameters.get("timeout") if isinstance(parameters, dict) else None
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0):
        raise invalid(f"parameters.timeout must be a non-negative number of microseconds, got {timeout!r}")
