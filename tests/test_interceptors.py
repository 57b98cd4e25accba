"""The interceptors keep one wrapped handler per method, however many calls go by:
an interceptor after them (auth's refusals, its per-model check) makes a handler
per call, and a cache keyed by handler would keep each of them for good."""

from __future__ import annotations

import grpc

from icow.services.logs import RequestLog
from icow.services.malformed import MalformedRequests


class _Details:
    method = "/inference.GRPCInferenceService/ModelMetadata"
    invocation_metadata = ()


def _fresh_handler(details) -> grpc.RpcMethodHandler:  # what AuthInterceptor returns for a refused call
    return grpc.unary_unary_rpc_method_handler(lambda request, context: None, request_deserializer=bytes)


def test_per_call_handlers_do_not_accumulate():
    for interceptor in (RequestLog(), MalformedRequests()):
        for _ in range(1000):
            interceptor.intercept_service(_fresh_handler, _Details())
        assert interceptor.wrapped_count() == 1, type(interceptor).__name__


def test_a_stable_handler_is_wrapped_once():
    stable = _fresh_handler(None)
    for interceptor in (RequestLog(), MalformedRequests()):
        first = interceptor.intercept_service(lambda details: stable, _Details())
        assert all(interceptor.intercept_service(lambda details: stable, _Details()) is first for _ in range(10))
