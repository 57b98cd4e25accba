"""The HTTP server: uvicorn (httptools parser, uvloop) on a thread of the server's
process, serving HttpApp on its own port beside the gRPC one. The spike that chose
it is in docs/http-spike.md."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from pathlib import Path

import uvicorn

from .app import HttpApp

log = logging.getLogger(__name__)

try:
    import uvloop
except ImportError:  # uvloop is Linux/macOS only; asyncio's loop works, slower
    uvloop = None


class HttpListener:
    """Listens at once (so a taken port fails the start); serves from start() until stop()."""

    def __init__(self, app: HttpApp, host: str, port: int, *, tls: tuple[Path, Path, Path | None] | None = None,
                 keep_alive_s: int = 75) -> None:
        self.app = app
        self._socket = _bind(host, port)
        self.port = self._socket.getsockname()[1]
        cert, key, ca = tls or (None, None, None)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", http="httptools", loop="none",
            server_header=False, proxy_headers=False, timeout_keep_alive=keep_alive_s, backlog=2048,
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
