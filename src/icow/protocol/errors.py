"""The one exception type of icow, on both sides of the wire.

The server's core raises it with the gRPC status a client should see; the
client raises it with the status and message the server sent.
"""

from __future__ import annotations

import grpc

# A status message travels in the call's trailing metadata, which gRPC clients refuse
# past 8 KiB by default: a message that echoed a hostile name (a 100 000-character
# tensor name, input names twice) whole turned the refusal into RESOURCE_EXHAUSTED.
# No message is longer than this many characters (at most 4 KiB of UTF-8).
MAX_MESSAGE_CHARS = 1024


def shortened(text: str, keep: int) -> str:
    """``text`` whole when it has at most ``keep`` characters, else its first ``keep``
    and its length, e.g. ``mmmm... (100000 characters)``."""
    if len(text) <= keep:
        return text
    return f"{text[:keep]}... ({len(text)} characters)"


class InferenceServerError(Exception):
    """An error with the gRPC status code that reports it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = shortened(message, MAX_MESSAGE_CHARS)
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
