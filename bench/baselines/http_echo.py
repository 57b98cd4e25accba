"""The transport floor of icow's HTTP stack: the spike's echo (bench/spike, the same
uvicorn + httptools + uvloop in a thread, a plain ASGI app, orjson for the header)
answering the ``identity`` model's infer with its input. No ONNX Runtime, no icow: what
``icow_http`` cannot go below on this machine (docs/http-spike.md)."""

from __future__ import annotations

import json
import os
import urllib.request

import grpc

from ..harness import Env, Server
from ..scenarios.icow_http import IcowHttp
from ..workloads import Workload


def echo_server(env: Env, workload: Workload) -> Server:
    ports: dict[str, int] = {}

    # the echo's tensor names (bench/spike/protocol.py), inherited by the server at its start
    os.environ["ICOW_ECHO_INPUT"], os.environ["ICOW_ECHO_OUTPUT"] = workload.input, workload.output

    def args(port: int) -> list[str]:
        ports["http"] = port
        return ["-m", "bench.spike.serve", "uvicorn", str(port)]

    def ready(_: grpc.Channel) -> bool:  # an HTTP server: the gRPC channel is not used
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=1):
                return True
        except OSError:
            return False

    return env.server("http-echo", args, ready)


class HttpEcho(IcowHttp):
    name = "http_echo"
    description = ("the spike's uvicorn + httptools + uvloop echo (bench/spike): identity's infer answered with its "
                   "input, binary tensors; the HTTP stack's floor")

    def setup(self, workload: Workload, env: Env) -> None:
        if workload.model != "identity":
            raise ValueError("http_echo answers only the identity model")
        self.start(echo_server(env, workload), workload, env)

    def served(self, model: str) -> int:
        """Echoes answered, from its statistics (it has no gRPC port for the bench's count)."""
        url = f"http://{self.address[0]}:{self.address[1]}/v2/models/{model}/versions/1/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.load(response)["model_stats"][0]["inference_count"])

    def pa_endpoint(self) -> list[str]:
        return [*super().pa_endpoint(), "-x", "1"]  # perf_analyzer wants /versions/1/stats of it
