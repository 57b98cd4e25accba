"""The echo on granian's RSGI interface: one awaitable for the body and one
call for the whole reply, no per-message dicts as in ASGI."""

from __future__ import annotations

from typing import Any

from . import protocol


async def _chunked(proto: Any) -> bytes | None:
    # granian has no body limit of its own: a chunked body is counted as it comes.
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > protocol.MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def app(scope: Any, proto: Any) -> None:
    path, method = scope.path, scope.method
    if method == "POST" and path in protocol.INFER:
        length = scope.headers.get("content-length")
        if length is not None and int(length) > protocol.MAX_BODY:
            reply = protocol.error(413, "request body too large")
        else:
            body = await proto() if length is not None else await _chunked(proto)
            reply = (protocol.error(413, "request body too large") if body is None
                     else protocol.infer(body, scope.headers.get("inference-header-content-length")))
    elif method == "GET":
        reply = protocol.get(path)
    else:
        reply = protocol.error(405, f"{method} not served")
    headers = [("content-type", reply.content_type)]
    if reply.header_length is not None:
        headers.append(("inference-header-content-length", str(reply.header_length)))
    proto.response_bytes(reply.status, headers, reply.body)
