"""Transport floor: a grpcio server like icow's (sync server, ThreadPoolExecutor,
a raw-bytes handler on ModelInfer's path) that returns the request unchanged.

The client sends the very ModelInferRequest bytes that icow gets, so the gap
between this and ``icow_grpc`` is what icow does between receiving and sending:
parse, run the model, build the response.

Run as a server: ``python -m bench.baselines.echo_server --port P``.
"""

from __future__ import annotations

import argparse
from concurrent import futures

import grpc

from ..harness import CHANNEL_OPTIONS, MAX_MESSAGE, MODEL_INFER, BenchError, Env
from ..workloads import Workload

SERVICE, METHOD = MODEL_INFER.strip("/").split("/")
WORKERS = 16  # icow serve's default --workers


class EchoServer:
    name = "echo_server"
    baseline = None
    description = "grpcio sync server returning the ModelInferRequest bytes unchanged"

    def setup(self, workload: Workload, env: Env) -> None:
        server = env.server("echo", lambda port: ["-m", "bench.baselines.echo_server", "--port", str(port)], _probe)
        self.channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes both ways
        self.request = workload.request_bytes
        if self.stub(self.request) != self.request:
            raise BenchError("echo_server did not echo the request")

    def call(self) -> None:
        self.stub(self.request)

    def teardown(self) -> None:
        self.channel.close()


def _probe(channel: grpc.Channel) -> bool:
    return channel.unary_unary(MODEL_INFER)(b"", timeout=1) == b""


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def serve(port: int, workers: int = WORKERS) -> None:
    """Serve the echo on 127.0.0.1:``port`` until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_send_message_length", MAX_MESSAGE),
                                  ("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args()
    serve(args.port, args.workers)
