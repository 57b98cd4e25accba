"""The native data plane's floor as a bench target: ``plane_echo``, icow._plane's
grpc++ callback server (generic service, raw bytes) echoing ModelInfer entirely in
C++, the request's slices sent back as they came (no Python on the call): the
transport floor of the native plane, as ``echo_server`` is grpcio's.

For perf_analyzer the other methods go through to the echo baseline's protobuf
handlers (a grpcio server on a Unix socket in the same process, as icow's backend
is); its statistics count the C++ echoes.

Run as a server: ``python -m bench.baselines.plane_server --port P --model-repository DIR``.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc

from ..harness import MAX_MESSAGE, Env, Server
from .echo_server import OPTIONS, SERVICE, Echo, EchoServer, _handler


class PlaneEcho(EchoServer):
    name = "plane_echo"
    description = "grpc++ callback generic server (icow._plane) echoing ModelInfer in C++"

    def start(self, env: Env) -> Server:
        return plane_server(env)


def plane_server(env: Env) -> Server:
    return env.server("plane-echo", lambda port: ["-m", "bench.baselines.plane_server", "--port", str(port),
                                                  "--model-repository", str(env.repo)], _probe)


def _probe(channel: grpc.Channel) -> bool:
    ready = channel.unary_unary(f"/{SERVICE}/ServerReady")(b"", timeout=1)
    return ready == b"\x08\x01"  # ServerReadyResponse(ready=True)


# -- the server ---------------------------------------------------------------

def serve(port: int, repository: Path) -> None:
    from icow import _plane

    echo = Echo(repository)
    backend = f"unix:{tempfile.mkdtemp(prefix='plane-echo-')}/grpc.sock"
    python = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    python.add_generic_rpc_handlers((_handler(echo),))
    python.add_insecure_port(backend)
    python.start()
    address = f"127.0.0.1:{port}"
    server = _plane.Server(address, backend, echo=True, max_message_bytes=MAX_MESSAGE)
    echo.calls = _Calls(server)  # statistics count the C++ echoes
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"plane echo (gRPC C++ {_plane.GRPC_VERSION}) on {address}", flush=True)
    done.wait()
    server.stop(1.0)
    python.stop(0)


class _Calls:
    """``next()`` as Echo's itertools counter does it: the plane's count of echoed calls."""

    def __init__(self, server) -> None:
        self.server, self.extra = server, 0

    def __next__(self) -> int:
        self.extra += 1  # Echo.statistics' own call to next() counts one, as itertools.count does
        return self.server.served_fast + self.extra - 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-repository", type=Path, required=True)
    args = parser.parse_args()
    serve(args.port, args.model_repository)
