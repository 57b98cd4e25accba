"""Runs one Python stack's echo server embedded in a thread of this process,
the way icow would host it next to its gRPC server (whose main thread blocks
elsewhere), not as the framework's own CLI process tree.

    python -m bench.spike.serve uvicorn|granian-asgi|granian-rsgi PORT
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

# Seconds a connection may idle or dawdle (bench.spike.hostile shortens it).
TIMEOUT = int(os.environ.get("SPIKE_TIMEOUT", "30"))


def uvicorn_server(port: int) -> tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]:
    import uvicorn

    from .asgi_app import app
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", http="httptools",
                            lifespan="off", access_log=False, log_level="warning",
                            timeout_keep_alive=TIMEOUT)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True
    return server.serve, stop


def granian_server(port: int, rsgi: bool) -> tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server.embed import Server

    if rsgi:
        from .rsgi_app import app
    else:
        from .asgi_app import app  # type: ignore[assignment]
    server = Server(app, address="127.0.0.1", port=port,
                    interface=Interfaces.RSGI if rsgi else Interfaces.ASGI,
                    http=HTTPModes.http1, runtime_threads=1, log_enabled=False,
                    http1_settings=HTTP1Settings(header_read_timeout=TIMEOUT * 1000))
    return server.serve, server.stop


def main(argv: list[str]) -> int:
    stack, port = argv[0], int(argv[1])
    import uvloop  # both stacks run their Python side on uvloop
    if stack == "uvicorn":
        serve, stop = uvicorn_server(port)
    elif stack in ("granian-asgi", "granian-rsgi"):
        serve, stop = granian_server(port, stack == "granian-rsgi")
    else:
        raise SystemExit(f"unknown stack {stack}")
    loop = uvloop.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())

    thread = threading.Thread(target=run, name=f"http-{stack}", daemon=True)
    thread.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    # The main thread stands for icow's gRPC server: it only waits here.
    while not done.wait(0.5) and thread.is_alive():
        pass
    loop.call_soon_threadsafe(stop)
    thread.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
