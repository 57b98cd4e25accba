"""The echo as a plain ASGI app (no framework): what uvicorn and granian's ASGI
interface both serve. The real REST app will also be plain ASGI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import protocol

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole request body, or None when it would pass MAX_BODY. Checked as
    it arrives too: a chunked body has no Content-Length to check first."""
    for name, value in scope["headers"]:
        if name == b"content-length" and int(value) > protocol.MAX_BODY:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > protocol.MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if method == "POST" and path in protocol.INFER:
        body = await _body(scope, receive)
        if body is None:
            reply = protocol.error(413, "request body too large")
        else:
            header_length = None
            for name, value in scope["headers"]:
                if name == b"inference-header-content-length":
                    header_length = value.decode("latin-1")
            reply = protocol.infer(body, header_length)
    elif method == "GET":
        reply = protocol.get(path)
    else:
        reply = protocol.error(405, f"{method} not served")
    headers = [(b"content-type", reply.content_type.encode()),
               (b"content-length", str(len(reply.body)).encode())]
    if reply.header_length is not None:
        headers.append((b"inference-header-content-length", str(reply.header_length).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
