"""Transport floor: a grpcio server like icow's (sync server, ThreadPoolExecutor,
a raw-bytes handler on ModelInfer's path) that returns the request unchanged.

The client sends the very ModelInferRequest bytes that icow gets, so the gap
between this and ``icow_native`` is what icow does between receiving and sending:
parse, run the model, build the response.

For Triton's perf_analyzer, which asks for a model's metadata, config and
statistics before and during a run, it also answers those from the config.pbtxt
files of ``--model-repository`` (off the hot path, with protobuf). The echoed
request parses as a ModelInferResponse (fields 1-5 have the same numbers and
layouts), which perf_analyzer accepts: it does not check outputs unless asked.

``echo_server_aio`` is the same echo on grpc.aio's asyncio server: the
measurement behind icow's choice of server (docs/architecture.md, "Concurrency").

Run as a server: ``python -m bench.baselines.echo_server --port P [--model-repository DIR] [--aio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import text_format

from icow._proto import inference_pb2 as pb
from icow._proto import model_config_pb2 as mc

from ..harness import CHANNEL_OPTIONS, MAX_MESSAGE, MODEL_INFER, BenchError, Env, Server
from ..workloads import Workload

SERVICE = "inference.GRPCInferenceService"
WORKERS = 16  # icow serve's default --workers


class EchoServer:
    name = "echo_server"
    description = "grpcio sync server returning the ModelInferRequest bytes unchanged"
    server: Server | None = None

    def start(self, env: Env) -> Server:
        return echo_server(env)

    def setup(self, workload: Workload, env: Env) -> None:
        self.server = self.start(env)
        self.channel = grpc.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes both ways
        self.request = workload.request_bytes
        if self.stub(self.request) != self.request:
            raise BenchError(f"{self.name} did not echo the request")

    def call(self) -> None:
        self.stub(self.request)

    def teardown(self) -> None:
        self.channel.close()


class EchoServerAio(EchoServer):
    name = "echo_server_aio"
    description = "grpc.aio (asyncio) server returning the ModelInferRequest bytes unchanged"

    def start(self, env: Env) -> Server:
        return echo_server(env, aio=True)


def echo_server(env: Env, aio: bool = False) -> Server:
    return env.server("echo-aio" if aio else "echo",
                      lambda port: ["-m", "bench.baselines.echo_server", "--port", str(port),
                                    "--model-repository", str(env.repo), *(["--aio"] if aio else [])], _probe)


def _probe(channel: grpc.Channel) -> bool:
    return channel.unary_unary(MODEL_INFER)(b"", timeout=1) == b""


# -- the server ---------------------------------------------------------------

class Echo:
    """ModelInfer echoes; the rest answers what a load generator asks about models."""

    def __init__(self, repository: Path | None) -> None:
        self.configs: dict[str, mc.ModelConfig] = {}
        if repository is not None:
            for path in sorted(repository.glob("*/config.pbtxt")):
                self.configs[path.parent.name] = text_format.Parse(path.read_text(), mc.ModelConfig())
        self.calls = itertools.count()  # next() is atomic under the GIL: no lock on the hot path
        self.counted = 0

    def infer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        next(self.calls)
        return request

    def _config(self, name: str, context: grpc.ServicerContext) -> mc.ModelConfig:
        if name not in self.configs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")
        return self.configs[name]

    def metadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        config = self._config(request.name, context)

        def tensors(specs) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=mc.DataType.Name(s.data_type).removeprefix("TYPE_").replace("STRING", "BYTES"),
                shape=list(s.dims)) for s in specs]

        return pb.ModelMetadataResponse(name=config.name, versions=["1"], platform="onnxruntime_onnx",
                                        inputs=tensors(config.input), outputs=tensors(config.output))

    def config(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._config(request.name, context))

    def statistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        """Every echoed call counted as a success of the asked model: the bench
        reads the count to know how many requests a perf_analyzer run made."""
        count = next(self.calls) - self.counted  # next() itself takes one: counted keeps them out
        self.counted += 1
        names = [request.name] if request.name else list(self.configs)
        success = pb.StatisticDuration(count=count)
        return pb.ModelStatisticsResponse(model_stats=[
            pb.ModelStatistics(name=n, version="1", inference_count=count, execution_count=count,
                               inference_stats=pb.InferStatistics(success=success)) for n in names])

    def server_metadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="icow-bench-echo", version="0")

    def ready(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def live(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def model_ready(self, request, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name in self.configs)


def _unary(method, request_cls, response_cls) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(method, request_deserializer=request_cls.FromString,
                                               response_serializer=response_cls.SerializeToString)


OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
           ("grpc.so_reuseport", 0)]


def _handler(echo: Echo, wrap=lambda f: f) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(wrap(echo.infer)),  # raw bytes both ways, as icow's
        "ModelMetadata": _unary(wrap(echo.metadata), pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": _unary(wrap(echo.config), pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": _unary(wrap(echo.statistics), pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "ServerMetadata": _unary(wrap(echo.server_metadata), pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ServerReady": _unary(wrap(echo.ready), pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ServerLive": _unary(wrap(echo.live), pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ModelReady": _unary(wrap(echo.model_ready), pb.ModelReadyRequest, pb.ModelReadyResponse),
    })


def serve(port: int, repository: Path | None, workers: int = WORKERS) -> None:
    """Serve the echo on 127.0.0.1:``port`` until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    server.add_generic_rpc_handlers((_handler(Echo(repository)),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_aio(port: int, repository: Path | None) -> None:
    """The same echo on grpc.aio: handlers are coroutines on one event loop."""

    def coroutine(method):
        async def handle(request, context):
            return method(request, context)
        return handle

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((_handler(Echo(repository), coroutine),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-repository", type=Path, help="answer metadata/config for these models")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--aio", action="store_true", help="serve on grpc.aio instead of the sync server")
    args = parser.parse_args()
    if args.aio:
        asyncio.run(serve_aio(args.port, args.model_repository))
    else:
        serve(args.port, args.model_repository, args.workers)
