"""Logging: human-readable or JSON lines, and one access-log line per request.

The access log (logger ``icow.access``) writes a line per unary RPC, and per
request of a ModelStreamInfer stream (services/stream.py), with the method,
request id, model, version, gRPC status and duration: at DEBUG for successful
calls (``--log-level debug`` shows them all) and at INFO for failed ones. The
same wrapper counts the calls (and streamed requests) in flight, so that a
shutdown can tell whether every accepted call finished.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ..protocol.names import shorten
from .handlers import Wrapped

access_log = logging.getLogger("icow.access")

PEER_HEADER = "x-icow-peer"  # as ext/plane/service.hpp names it
# Fields an access-log record carries (as LogRecord attributes, via ``extra``).
ACCESS_FIELDS = ("method", "request_id", "model", "version", "status", "duration_ms", "peer")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the access
    fields when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


JsonFormatter.converter = time.gmtime  # times in UTC, marked Z


def configure(level: str = "info", fmt: str = "text") -> None:
    """Set up the root logger: ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- what the front end tells the access log about the current call ----------

class _Call(threading.local):
    request_id = ""
    model = ""
    version = ""


_call = _Call()


def annotate(**fields: str) -> None:
    """Record request_id, model or version of the call this thread is serving."""
    for name, value in fields.items():
        setattr(_call, name, value)


def begin() -> None:
    """A new call starts on this thread: forget what the last one annotated."""
    _call.request_id = _call.model = _call.version = ""


def annotated() -> tuple[str, str, str]:
    """(request_id, model, version) annotated for the call this thread is serving."""
    return _call.request_id, _call.model, _call.version


# -- the interceptor ------------------------------------------------------------

class RequestLog(grpc.ServerInterceptor):
    """Wraps every unary-unary handler: counts calls in flight, logs each call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self._ids = itertools.count(1)
        self._wrapped = Wrapped(self._wrap)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streams (health Watch) are long-lived: not counted as requests
        return self._wrapped(handler, details.method)  # this runs on every call: wrapped once per method

    def wrapped_count(self) -> int:
        return len(self._wrapped)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary

        def logged(request, context: grpc.ServicerContext):
            self.enter()
            begin()
            start = time.perf_counter_ns()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self.leave()
                code = context.code() if hasattr(context, "code") else None
                ok = not failed and code in (None, grpc.StatusCode.OK)
                level = logging.DEBUG if ok else logging.INFO
                if access_log.isEnabledFor(level):
                    self._log(level, method, request, context, code, ok, start)

        return grpc.unary_unary_rpc_method_handler(logged, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def enter(self) -> None:
        """A request starts: counted in flight until `leave`."""
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _log(self, level: int, method: str, request: Any, context: grpc.ServicerContext,
             code: grpc.StatusCode | None, ok: bool, start: int) -> None:
        status = "OK" if ok else (code.name if code is not None else "UNKNOWN")
        self.write(level, method, status, "" if ok else _details(context), start, _peer(context),
                   model=getattr(request, "name", "") or getattr(request, "model_name", ""),
                   version=getattr(request, "version", ""))

    def log_request(self, method: str, code: grpc.StatusCode, details: str, start: int,
                    context: grpc.ServicerContext) -> None:
        """The access-log line of one request of a stream (ModelStreamInfer), from what
        this thread annotated; ``start`` is its perf_counter_ns() at arrival."""
        ok = code == grpc.StatusCode.OK
        level = logging.DEBUG if ok else logging.INFO
        if access_log.isEnabledFor(level):
            self.write(level, method, code.name, details, start, _peer(context))

    def write(self, level: int, method: str, status: str, details: str, start: int, peer: str, *,
              model: str = "", version: str = "") -> None:
        """One access-log line; the annotated model and version win over ``model`` and ``version``."""
        duration_ms = round((time.perf_counter_ns() - start) / 1e6, 3)
        # shortened: a hostile name would make every line of the access log as long as itself
        fields = {"method": method, "request_id": _call.request_id or f"icow-{next(self._ids)}",
                  "model": shorten(_call.model or model), "version": shorten(_call.version or version),
                  "status": status, "duration_ms": duration_ms, "peer": peer}
        details = f": {details}" if status != "OK" else ""
        access_log.log(level, "%s %s %s %s %.3f ms%s", method, fields["model"] or "-", fields["version"] or "-",
                       status, duration_ms, details, extra=fields)


def _peer(context: grpc.ServicerContext) -> str:
    """The client's address. A call the native plane passed on comes over its private Unix
    socket, with the client's own address in PEER_HEADER (the plane drops one a client sent)."""
    peer = context.peer()
    if peer.startswith("unix:"):
        for key, value in context.invocation_metadata() or ():
            if key == PEER_HEADER:
                return value
    return peer


def _details(context: grpc.ServicerContext) -> str:
    try:
        details = context.details() or ""
    except Exception:  # older grpcio without ServicerContext.details()
        return ""
    return details.decode(errors="replace") if isinstance(details, bytes) else details
