"""The native gRPC data plane — the spike of issue 8, experimental, off by default.

``icow._plane`` is a grpc++ server (callback API, one generic service on raw
bytes) built only where the gRPC C++ libraries were found at build time. This
module puts icow's v2 service behind it: ModelInfer's request bytes go from
C++ straight to the codec (``native_codec.decode_request`` reads them in place,
in gRPC's own slice), every other method through the same protobuf handlers
grpcio uses. Nothing in ``icow serve`` uses it yet; docs/native-plane.md says
what was measured and what the build-out needs (deadlines, cancellation, auth,
TLS, interceptors and statistics of the request log are not wired here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from .errors import InferenceServerError
from .v2 import SERVICE, InferenceService, method_handlers

log = logging.getLogger("icow.native_plane")

try:
    from . import _plane
except ImportError as e:  # built without the gRPC C++ libraries, or they are missing at run time
    _plane = None
    UNAVAILABLE_REASON: str | None = f"icow._plane cannot be imported ({e}): the native data plane is not available"
else:
    UNAVAILABLE_REASON = None

Answer = bytes | tuple[int, str]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]


def available() -> bool:
    """True where ``icow._plane`` was built and loads."""
    return _plane is not None


def model_infer_handler(service: InferenceService) -> Callable[[memoryview], Answer]:
    """ModelInfer as ``_plane`` calls it: request bytes in, response bytes or (code, message) out."""
    codec, repository, limit = service.codec, service.repository, service.max_message_bytes

    def handle(data: memoryview) -> Answer:
        try:
            request = codec.decode_request(data)
            model = repository.get(request.model_name, request.model_version)
            response = codec.infer(model, request)
            if len(response) > limit:
                return (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                        f"the response of model '{model.name}' is {len(response)} bytes, over the server's limit "
                        f"of {limit} bytes")
            return response
        except InferenceServerError as e:
            return (e.code.value[0], e.message)
        except Exception as e:
            log.exception("ModelInfer failed")
            return (_INTERNAL, f"ModelInfer failed: {type(e).__name__}: {e}")

    return handle


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What v2's protobuf handlers ask of a grpc.ServicerContext, for calls that
    came through the native plane (no deadline, no metadata: the spike's scope)."""

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Abort(code, details)

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return True

    def invocation_metadata(self) -> tuple:
        return ()


def other_handler(service: InferenceService) -> Callable[[str, memoryview], Answer]:
    """Every method but ModelInfer, through the protobuf handlers grpcio serves them with."""
    handlers = {f"/{SERVICE}/{name}": h for name, h in method_handlers(service).items()}

    def handle(method: str, data: memoryview) -> Answer:
        handler = handlers.get(method)
        if handler is None or handler.unary_unary is None:
            return (grpc.StatusCode.UNIMPLEMENTED.value[0], f"method {method} is not served on the native plane")
        try:
            request = handler.request_deserializer(bytes(data))
            return handler.response_serializer(handler.unary_unary(request, _Context()))
        except _Abort as e:
            return (e.code.value[0], e.details)
        except Exception as e:
            log.exception("%s failed", method)
            return (_INTERNAL, f"{method} failed: {type(e).__name__}: {e}")

    return handle


def serve(service: InferenceService, address: str, max_message_bytes: int = 2**31 - 1):
    """Serve ``service`` on the native plane at ``address``; the running ``_plane.Server``."""
    if _plane is None:
        raise RuntimeError(UNAVAILABLE_REASON)
    return _plane.Server(address, model_infer_handler(service), other_handler(service),
                         max_message_bytes=max_message_bytes)
