"""The HTTP server: uvicorn (httptools parser, uvloop) on a thread of the server's
process, serving HttpApp on its own port beside the gRPC one. The spike that chose
it is in docs/http-spike.md.

uvicorn bounds neither a request's head nor the time a client takes to send it: a
connection that dribbled its headers a byte a second stayed open for ever, and one
that sent headers without end grew the server's memory without end (measured: 20 MB
of header lines, 32 MB more resident). GuardedProtocol, uvicorn's httptools protocol
with three limits, closes that: the head (request line and headers) within
MAX_HEAD_BYTES and MAX_HEADERS, 431 (414 for the URL) beyond; the head within
``read_timeout_s`` of the connection's start or the request's first byte, and no
pause longer than that inside a body, 408 and the connection closed otherwise. Its
refusals, and the parser's own, are JSON ``{"error": ...}`` like every other answer."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from pathlib import Path

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .app import HttpApp

log = logging.getLogger(__name__)

try:
    import uvloop
except ImportError:  # uvloop is Linux/macOS only; asyncio's loop works, slower
    uvloop = None


class HttpListener:
    """Listens at once (so a taken port fails the start); serves from start() until stop()."""

    def __init__(self, app: HttpApp, host: str, port: int, *, tls: tuple[Path, Path, Path | None] | None = None,
                 keep_alive_s: int = 75, read_timeout_s: float = 60.0) -> None:
        self.app = app
        self._socket = _bind(host, port)
        self.port = self._socket.getsockname()[1]
        cert, key, ca = tls or (None, None, None)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", http=guarded(read_timeout_s), ws="none",
            loop="none", server_header=False, proxy_headers=False, timeout_keep_alive=keep_alive_s, backlog=2048,
            ssl_certfile=cert, ssl_keyfile=key, ssl_ca_certs=ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if ca else ssl.CERT_NONE)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="icow-http-loop", daemon=True)
        self._started = threading.Event()
        self.stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()
            self.stopped.set()

    async def _serve(self) -> None:
        self._started.set()
        await self._server.serve(sockets=[self._socket])

    def stop(self, grace: float) -> threading.Event:
        """New connections refused; answers in progress get ``grace`` seconds to finish."""
        self._server.config.timeout_graceful_shutdown = max(1, round(grace))
        self._server.should_exit = True
        if not self._thread.is_alive():
            self.stopped.set()
        threading.Thread(target=lambda: (self.stopped.wait(), self.app.close()), daemon=True).start()
        return self.stopped


MAX_HEAD_BYTES = 64 << 10  # request line and headers; Node allows 16 KiB, nginx 32 KiB, Go 1 MiB
MAX_HEADERS = 256  # gunicorn allows 100, Node 2000


def guarded(read_timeout_s: float) -> type[GuardedProtocol]:
    """GuardedProtocol with this timeout, as uvicorn makes one protocol per connection."""
    return type("GuardedProtocol", (GuardedProtocol,), {"read_timeout_s": read_timeout_s})


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head and no stall without end."""

    read_timeout_s = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # bytes received since the request began, while its head is incomplete
        self._in_head = True
        self._head_size = 0  # the head as parsed: URL, names and values
        self._headers = 0
        self._refusal: tuple[int, str] | None = None  # set by a callback that stops the parser
        self._last_data = self.loop.time()
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.read_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._last_data = self.loop.time()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no websockets here: answered as plain HTTP
        except httptools.HttpParserError as e:
            self.refuse(*(self._refusal or (400, f"not a valid HTTP/1.1 request: {e}")))
            return
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:  # a head not finished yet, and too long
            self.refuse(431, f"the request's head (request line and headers) is over {MAX_HEAD_BYTES} bytes")

    # The parser's callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_size, self._headers = True, 0, 0
        if self._head_timer is None:  # a second request on a kept-alive connection
            self._head_timer = self.loop.call_later(self.read_timeout_s, self._head_late)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            self._stop(414, f"the URL is over {MAX_HEAD_BYTES} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self._stop(431, f"the request has over {MAX_HEADERS} headers")
        if self._head_size > MAX_HEAD_BYTES:
            self._stop(431, f"the request's head (request line and headers) is over {MAX_HEAD_BYTES} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self.read_timeout_s, self._body_late)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head

    # Limits

    def _stop(self, status: int, message: str) -> None:
        """Refuse the request from inside the parser: its exception ends feed_data."""
        self._refusal = (status, message)
        raise ValueError(message)

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # connected and said nothing: no answer to give
            return
        self.refuse(408, f"the request's head did not come within {self.read_timeout_s:g} s "
                         "(--http-read-timeout-secs)")

    def _body_late(self) -> None:
        self._body_timer = None
        if self.cycle is None or not self.cycle.more_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the server stopped reading (the app has not taken the last part yet)
            self._last_data = now
        quiet = now - self._last_data
        if quiet < self.read_timeout_s:
            self._body_timer = self.loop.call_later(self.read_timeout_s - quiet, self._body_late)
            return
        self.refuse(408, f"the body stalled: nothing came for {self.read_timeout_s:g} s (--http-read-timeout-secs)")

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error and close the connection; only close it
        where the answer would not be this request's (one is under way)."""
        self._cancel_timers()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head:  # a request the app has not seen: the previous one must be answered
            answer = cycle is None or cycle.response_complete
        else:  # the app's request: its body failed
            answer = not cycle.response_started
        if answer:
            body = orjson.dumps({"error": message})
            head = [STATUS_LINE[status], *(b"%s: %s\r\n" % h for h in self.server_state.default_headers),
                    b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(body)]
            self.transport.write(b"".join(head) + body)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive answers http.disconnect, its send writes nothing
            cycle.message_event.set()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:  # uvicorn's own, as JSON
        self.refuse(400, msg)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: a taken port must fail
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
