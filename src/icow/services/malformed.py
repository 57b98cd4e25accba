"""Requests that do not parse are INVALID_ARGUMENT, on every method.

grpcio parses a request with the handler's deserializer before any handler code
runs, and answers a failure with INTERNAL ("Exception deserializing request!")
and a traceback in the log: a client's bad bytes reported as the server's fault.
This interceptor takes the parsing over, so that the answer says what it is.
ModelInfer and ICOW/get_inference parse their own bytes, and are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .handlers import Wrapped, like


class MalformedRequests(grpc.ServerInterceptor):
    """Parses each request itself: one that does not parse is INVALID_ARGUMENT, naming the
    method. First among the interceptors, so that those after it see parsed requests."""

    def __init__(self) -> None:
        self._wrapped = Wrapped(_parsing)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method (UNIMPLEMENTED), or one that reads the bytes itself
        return self._wrapped(handler, details.method)

    def wrapped_count(self) -> int:
        return len(self._wrapped)


def _parsing(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` taking bytes, parsed with its own deserializer."""
    deserialize = handler.request_deserializer
    behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)

    def parse(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return deserialize(data)
        except Exception as e:  # whatever the parser raises, the bytes were the cause
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: {e}")

    if handler.request_streaming:
        def parsed(requests: Iterator[bytes], context: grpc.ServicerContext):
            return behavior((parse(data, context) for data in requests), context)
    else:
        def parsed(data: bytes, context: grpc.ServicerContext):
            return behavior(parse(data, context), context)

    return like(handler, parsed, parsed=False)
