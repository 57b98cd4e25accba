"""What the interceptors share about grpcio's method handlers: a handler of the same
kind as another, and the one wrapped handler kept per method."""

from __future__ import annotations

from collections.abc import Callable

import grpc

_KINDS = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
          (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}

Wrap = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]


def like(handler: grpc.RpcMethodHandler, behavior: Callable, *, parsed: bool = True) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind running ``behavior``; with ``parsed`` False it
    takes the request's bytes (its own deserializer is not applied)."""
    return _KINDS[handler.request_streaming, handler.response_streaming](
        behavior, request_deserializer=handler.request_deserializer if parsed else None,
        response_serializer=handler.response_serializer)


class Wrapped:
    """Each method's handler wrapped once, not per call. Keyed by method and kept with
    the handler it wraps: an interceptor later in the chain may make a handler per call
    (auth's refusals, its per-model check), which is then wrapped per call, but replaces
    the method's one entry instead of piling up (a cache keyed by handler kept one entry
    per call, for good)."""

    def __init__(self, wrap: Wrap) -> None:
        self._wrap = wrap
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def __call__(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        entry = self._by_method.get(method)
        if entry is None or entry[0] is not handler:
            entry = self._by_method[method] = (handler, self._wrap(handler, method.rsplit("/", 1)[-1]))
        return entry[1]

    def __len__(self) -> int:
        return len(self._by_method)
