"""The one exception type of icow, on both sides of the wire.

The server's core raises it with the gRPC status a client should see; the
client raises it with the status and message the server sent.
"""

from __future__ import annotations

import grpc


class InferenceServerError(Exception):
    """An error with the gRPC status code that reports it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"[{code.name}] {message}")
        self.code = code
        self.message = message


def invalid(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.UNAVAILABLE, message)


def unimplemented(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.UNIMPLEMENTED, message)
