"""The ASGI application: one request in, one answer out. It reads the body under
the server's limits, checks the bearer token, answers a brief binary inference on
the event loop itself (the fast lane, on an idle instance), hands any other work to
a thread of its own pool (a model run may block; the event loop must not) and writes
the answer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..protocol.errors import InferenceServerError
from ..protocol.names import shorten
from ..services.auth import AuthInterceptor, Token, deploy_refusal
from ..services.logs import access_log
from ..services.oip import InferenceService
from . import body as bodies
from .dispatch import Dispatcher, Reply
from .routes import Route, match
from .status import HttpError

log = logging.getLogger(__name__)

# Open with --auth-open-health, as on gRPC (services.auth.HEALTH_AND_METADATA).
OPEN_ENDPOINTS = frozenset({"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata"})
_ALL_MODELS = frozenset({"RepositoryIndex", "ModelStatistics"})  # without a model: about every model
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


@dataclass
class HttpLimits:
    max_body_bytes: int = 2**31 - 1  # --max-message-mb, as on gRPC
    max_concurrent: int = 0  # --max-concurrent-requests, counted once a body is in (as gRPC counts calls); 0: none
    tokens: list[Token] = field(default_factory=list)
    open_health: bool = False


class HttpApp:
    """The REST binding of one InferenceService."""

    def __init__(self, service: InferenceService, limits: HttpLimits, workers: int) -> None:
        self.dispatcher = Dispatcher(service, limits.max_body_bytes)
        self.limits = limits
        self.auth = AuthInterceptor(limits.tokens) if limits.tokens else None
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="icow-http")
        self._lock = threading.Lock()
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return  # lifespan and websocket: nothing to do
        start = time.perf_counter_ns()
        route: Route | None = None
        headers = dict(scope["headers"])
        # the body read to its end: else the connection closes after the answer (the rest would be garbage)
        read = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers
        try:
            route = match(scope["method"], scope["path"])
            token = self._check_token(route, headers)
            data = await self._body(receive, headers)
            read = True
            if token is not None and not token.deploy and route.endpoint == "RepositoryModelLoad":
                # on the pool: a refused deploy's body may be a big JSON document
                await asyncio.get_running_loop().run_in_executor(self.pool, _check_no_deploy, token, data)
            reply = await self._counted(route, data, headers, receive)
        except HttpError as e:
            reply = Reply(e.status, e.body(), e.headers, e.message, getattr(e, "request_id", ""))
        except InferenceServerError as e:
            error = HttpError.of(e)
            reply = Reply(error.status, error.body(), (), error.message, getattr(e, "request_id", ""))
        except Exception as e:  # a bug: the client still gets JSON, and the log the trace
            log.exception("HTTP %s %s failed", scope["method"], scope["path"][:128])
            error = HttpError(500, f"{route.endpoint if route else 'the request'} failed: {type(e).__name__}: {e}")
            reply = Reply(error.status, error.body(), (), error.message)
        if not read:
            reply = reply._replace(headers=(*reply.headers, _CLOSE))
        await _send(send, reply)
        _log(scope, route, reply, start)

    async def _counted(self, route: Route, data: bytes, headers: dict[bytes, bytes], receive: Callable) -> Reply:
        """The answer, under --max-concurrent-requests: a request counts from its body's
        end, so that clients slow to send theirs (or stalled) take no one's place."""
        with self._lock:
            self.in_flight += 1
            busy = self.limits.max_concurrent and self.in_flight > self.limits.max_concurrent
        try:
            if busy:
                raise HttpError(429, "Concurrent request limit exceeded: the server is at "
                                     f"--max-concurrent-requests {self.limits.max_concurrent}")
            return await self._answer(route, data, headers, receive)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _check_token(self, route: Route, headers: dict[bytes, bytes]) -> Token | None:
        """The caller's token, if the call needs one; 401 or 403 when it may not make the call."""
        if self.auth is None or (self.limits.open_health and route.endpoint in OPEN_ENDPOINTS):
            return None
        value = headers.get(b"authorization")
        token = self.auth.authenticate([("authorization", value.decode("latin-1"))] if value else [])
        if isinstance(token, str):
            raise HttpError(401, token.replace("metadata", "header"), ((b"www-authenticate", b"Bearer"),))
        if token.models is None:
            return token
        limited = (f"the token (line {token.line} of the token list) may use only the models "
                   f"{', '.join(sorted(token.models))}: ")
        if route.endpoint in _ALL_MODELS and not route.model:
            raise HttpError(403, limited + "this call spans every model")
        if route.about_a_model and route.model not in token.models:
            raise HttpError(403, limited + f"model '{shorten(route.model)}' is not among them")
        return token

    async def _body(self, receive: Callable, headers: dict[bytes, bytes]) -> bytes:
        limit = self.limits.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise HttpError(413, f"the body is {length[:20].decode(errors='replace')} bytes, over the server's "
                                 f"limit of {limit} bytes (--max-message-mb)")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "the client went away before its body was complete")
        data = message.get("body", b"")
        if message.get("more_body"):
            data = await self._rest_of_body(receive, data, limit)
        encoding = headers.get(b"content-encoding")
        if encoding and encoding.strip().lower() != b"identity":
            data = bodies.decompress(data, encoding, limit)
        return data

    async def _rest_of_body(self, receive: Callable, first: bytes, limit: int) -> bytes:
        """The body's other parts. A client that stalls is cut by the listener
        (GuardedProtocol, --http-read-timeout-secs): receive then answers a disconnect."""
        parts, size = [first], len(first)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the client went away before its body was complete")
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise HttpError(413, f"the body is over the server's limit of {limit} bytes (--max-message-mb)")
            parts.append(part)
            if not message.get("more_body"):
                return b"".join(parts)

    async def _answer(self, route: Route, data: bytes, headers: dict[bytes, bytes], receive: Callable) -> Reply:
        if route.endpoint in ("ServerLive", "ServerReady"):  # probes: never behind the pool's queue
            return self.dispatcher.health(route.endpoint)
        loop = asyncio.get_running_loop()
        if route.endpoint != "ModelInfer":
            return await loop.run_in_executor(self.pool, self.dispatcher.answer, route, data, headers)
        now = self.dispatcher.infer_now(route, data, headers)  # a brief run on an idle instance: no hand-off
        if isinstance(now, Reply):
            return now
        # The body is read: the next receive() ends only when the client goes away, and
        # a request still waiting for the model then leaves its queue unrun (as on gRPC).
        gone = asyncio.ensure_future(receive())
        try:
            return await loop.run_in_executor(self.pool, self.dispatcher.infer, route, data, headers, now,
                                              lambda: not gone.done())
        finally:
            gone.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def _check_no_deploy(token: Token, data: bytes) -> None:
    """403 for a load request with parameters (a deploy) from a token without +deploy."""
    try:
        body = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError:
        return  # the endpoint refuses it as the bad JSON it is
    if isinstance(body, dict) and body.get("parameters"):
        raise HttpError(403, deploy_refusal(token))


async def _send(send: Callable, reply: Reply) -> None:
    headers = [(b"content-length", str(len(reply.body)).encode()), *reply.headers]
    if not any(k == b"content-type" for k, _ in reply.headers):
        headers.append(_JSON)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def _log(scope: dict, route: Route | None, reply: Reply, start: int) -> None:
    ok = reply.status < 400
    level = logging.DEBUG if ok else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    duration_ms = round((time.perf_counter_ns() - start) / 1e6, 3)
    client = scope.get("client")
    fields: dict[str, Any] = {
        "method": f"HTTP {scope['method']} {scope['path'][:128]}", "request_id": reply.request_id,
        "model": shorten(route.model) if route else "", "version": shorten(route.version) if route else "",
        "status": str(reply.status), "duration_ms": duration_ms,
        "peer": f"{client[0]}:{client[1]}" if client else ""}
    details = "" if ok else f": {reply.error}"
    access_log.log(level, "%s %s %s %s %.3f ms%s", fields["method"], fields["model"] or "-",
                   fields["version"] or "-", fields["status"], duration_ms, details, extra=fields)
