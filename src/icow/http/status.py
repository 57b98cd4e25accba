"""gRPC status codes as HTTP statuses, and the JSON error body: ``{"error": "..."}``."""

from __future__ import annotations

import grpc
import orjson

from ..protocol.errors import InferenceServerError

# As KServe's REST spec and Triton answer: the client's fault 4xx, the server's 5xx.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_status(number: int) -> grpc.StatusCode:
    """The status code of its number (as icow._plane reports a refusal)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


class HttpError(Exception):
    """An answer other than 200, with its message."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers

    @classmethod
    def of(cls, error: InferenceServerError) -> HttpError:
        return cls(HTTP_STATUS.get(error.code, 500), error.message)

    def body(self) -> bytes:
        return orjson.dumps({"error": self.message})


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)
