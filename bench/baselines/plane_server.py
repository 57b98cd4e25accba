"""The native data plane's spike (issue 8, docs/native-plane.md) as bench targets:
``icow._plane``'s grpc++ callback server (generic service, raw bytes).

- ``plane_echo``: ModelInfer echoed entirely in C++, the request's slices sent
  back as they came (no Python on the call). The **transport floor of the
  native plane**, as ``echo_server`` is grpcio's.
- ``icow_plane``: the grpc++ server hands the request bytes to Python (GIL per
  call), where icow's native codec parses them in gRPC's own slice, the
  repository finds the model and ONNX Runtime runs it into the response buffer:
  the spike's "C++ server → Python handler → codec → model" path.

For perf_analyzer the other methods are answered in Python: ``plane_echo`` by
the echo baseline's protobuf handlers (its statistics count the C++ echoes),
``icow_plane`` by icow's own v2 handlers.

Run as a server: ``python -m bench.baselines.plane_server --port P --mode echo|icow --model-repository DIR``.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

import grpc

from ..harness import CHANNEL_OPTIONS, MAX_MESSAGE, MODEL_INFER, BenchError, Env, Server
from ..scenarios.icow_grpc import output
from ..workloads import Workload
from .echo_server import SERVICE, Echo, _handler


class PlaneEcho:
    name = "plane_echo"
    description = "grpc++ callback generic server (icow._plane) echoing ModelInfer in C++"
    mode = "echo"
    server: Server | None = None

    def setup(self, workload: Workload, env: Env) -> None:
        self.server = plane_server(env, self.mode)
        self.channel = grpc.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes both ways
        self.request = workload.request_bytes
        self.check(self.stub(self.request), workload, env)

    def check(self, answer: bytes, workload: Workload, env: Env) -> None:
        if answer != self.request:
            raise BenchError("plane_echo did not echo the request")

    def call(self) -> None:
        self.stub(self.request)

    def teardown(self) -> None:
        self.channel.close()


class IcowPlane(PlaneEcho):
    name = "icow_plane"
    description = "icow's v2 service behind icow._plane: grpc++ → Python handler (GIL per call) → native codec → ORT"
    mode = "icow"

    def check(self, answer: bytes, workload: Workload, env: Env) -> None:
        env.check(self.name, workload, output(answer, workload.output))


class PlaneLean(IcowPlane):
    name = "plane_lean"
    description = ("NOT icow: grpc++ → a minimal Python handler (parse, bind, ONNX Runtime run, build; "
                   "no checks, scheduler or statistics): a bound on issue 8's 'GIL per run' design")
    mode = "lean"


def plane_server(env: Env, mode: str) -> Server:
    return env.server(f"plane-{mode}", lambda port: ["-m", "bench.baselines.plane_server", "--port", str(port),
                                                     "--mode", mode, "--model-repository", str(env.repo)], _probe)


def _probe(channel: grpc.Channel) -> bool:
    ready = channel.unary_unary(f"/{SERVICE}/ServerReady")(b"", timeout=1)
    return ready == b"\x08\x01"  # ServerReadyResponse(ready=True)


# -- the server ---------------------------------------------------------------

def serve(port: int, mode: str, repository: Path) -> None:
    from icow import _plane

    address = f"127.0.0.1:{port}"
    if mode == "echo":
        echo = Echo(repository)
        # ModelInfer: no handler, echoed in C++; the rest: the echo baseline's protobuf handlers
        server = _plane.Server(address, None, _other(_handler(echo)), max_message_bytes=MAX_MESSAGE)
        echo.calls = _Calls(server)  # statistics count the C++ echoes
    elif mode == "lean":
        echo = Echo(repository)
        server = _plane.Server(address, _lean_handler(repository), _other(_handler(echo)),
                               max_message_bytes=MAX_MESSAGE)
        echo.calls = _Calls(server)
    else:
        from icow import native_plane
        from icow.repository import Repository
        from icow.v2 import InferenceService

        repo = Repository(repository)
        service = InferenceService(repo, explicit_control=False, max_message_bytes=MAX_MESSAGE)
        repo.load_all(None)
        service.ready = True
        server = native_plane.serve(service, address, max_message_bytes=MAX_MESSAGE)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"plane ({mode}, gRPC C++ {_plane.GRPC_VERSION}) on {address}", flush=True)
    done.wait()
    server.stop(1.0)


def _lean_handler(repository: Path):
    """ModelInfer as issue 8's build-out would do it, but in Python: parse (C++), one
    ONNX Runtime run with the input bound where it lies in the request and the output
    bound into its slot of the response (C++ builder), no checks beyond the parser's,
    no scheduler, no statistics. Single-input, single-output FP32 models only. What
    the GIL-per-run design costs at most, since the build-out does the Python parts in C++."""
    import numpy as np
    import onnxruntime as ort

    from icow import _wire
    from icow.ort_binding import Binder

    models = {}
    for path in sorted(repository.glob("*/1/model.onnx")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if len(session.get_inputs()) == 1 and len(session.get_outputs()) == 1:
            models[path.parent.parent.name] = (Binder(session), session.get_inputs()[0].name,
                                               session.get_outputs()[0].name)

    def handle(data: memoryview):
        name, _, request_id, _, inputs, _ = _wire.parse_request(data)
        binder, input_name, output_name = models[name]
        _, _, shape, _, contents = inputs[0]
        response = _wire.ResponseBuffer(name, "1", request_id, [(output_name, "FP32", shape, len(contents))])
        binding = binder.bind([(input_name, np.float32, shape, _wire.address_of(contents))],
                              [(output_name, np.float32, shape, response.address(0))])
        binder.run(binding)  # identity: output shape = input shape
        response.mark_written(0)
        return response.finish()

    return handle


class _Details:
    """What grpc.GenericRpcHandler.service() is asked with: the method's name."""

    method = ""


def _other(generic: grpc.GenericRpcHandler):
    """Answer a method with the echo baseline's protobuf handler for it."""
    from icow.native_plane import _Abort, _Context

    def handle(method: str, data: memoryview):
        details = _Details()
        details.method = method
        handler = generic.service(details)
        if handler is None:
            return (grpc.StatusCode.UNIMPLEMENTED.value[0], f"{method} is not served")
        try:
            request = handler.request_deserializer(bytes(data)) if handler.request_deserializer else bytes(data)
            response = handler.unary_unary(request, _Context())
            return handler.response_serializer(response) if handler.response_serializer else response
        except _Abort as e:
            return (e.code.value[0], e.details)

    return handle


class _Calls:
    """``next()`` as Echo's itertools counter does it: the plane's count of ModelInfer calls."""

    def __init__(self, server) -> None:
        self.server, self.extra = server, 0

    def __next__(self) -> int:
        self.extra += 1  # Echo.statistics' own call to next() counts one, as itertools.count does
        return self.server.calls + self.extra - 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("echo", "icow", "lean"), required=True)
    parser.add_argument("--model-repository", type=Path, required=True)
    args = parser.parse_args()
    serve(args.port, args.mode, args.model_repository)
