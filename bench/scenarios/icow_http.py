"""icow's HTTP/REST binding (``icow serve --http-port``): ``icow_http`` sends Triton's
binary tensors (what tritonclient.http and perf_analyzer send by default) and asks for
binary outputs; ``icow_http_json`` sends and takes JSON ``data``. One server on the
native data plane, the default ``icow serve``, with its gRPC port beside: perf_analyzer
calls the HTTP port, and the ratio that matters (issue 21) is against ``icow_plane``."""

from __future__ import annotations

import json
import os
import shlex

import numpy as np

from ..harness import BenchError, Env, Server, free_port
from ..rest import Poster
from ..workloads import Workload
from . import _ready

HEADER_LENGTH = "Inference-Header-Content-Length"


_PORTS: dict[int, int] = {}  # the HTTP port of each run's server (by id of its Env)


def icow_http_server(env: Env) -> tuple[Server, int]:
    """The icow server with HTTP on, shared by both HTTP targets; and its HTTP port."""
    port = _PORTS.setdefault(id(env), free_port())
    extra = [*shlex.split(os.environ.get("ICOW_BENCH_SERVER_ARGS", "")),
             *(["--device", env.device] if env.device != "cpu" else [])]
    if "icow-http" not in env.servers:
        env.notes.append(f"icow-http server options: --data-plane native --http-port {port} {' '.join(extra)}")
    server = env.server("icow-http", lambda grpc_port: [
        "-m", "icow", "serve", "--model-repository", str(env.repo), "--host", "127.0.0.1", "--port", str(grpc_port),
        "--data-plane", "native", "--http-port", str(port), "--metrics-port", "0", *extra], _ready)
    return server, port


class IcowHttp:
    name = "icow_http"
    binary = True
    description = ("icow serve --http-port: POST /v2/models/M/infer with Triton's binary tensors in and out "
                   "(Inference-Header-Content-Length), keep-alive")
    server: Server | None = None

    def setup(self, workload: Workload, env: Env) -> None:
        server, port = icow_http_server(env)
        self.start(server, workload, env, port)

    def start(self, server: Server, workload: Workload, env: Env, port: int | None = None) -> None:
        """Calls ``workload`` on ``server``'s HTTP ``port`` (its only port when None)."""
        self.server = server
        self.address = ("127.0.0.1", port or server.port)
        body, headers = request(workload, self.binary)
        self.poster = Poster(self.name, self.address, f"/v2/models/{workload.model}/infer", body, headers)
        env.check(self.name, workload, output(*self.poster.post(), workload.output))

    def pa_endpoint(self) -> list[str]:
        formats = [] if self.binary else ["--input-tensor-format", "json", "--output-tensor-format", "json"]
        return ["-i", "http", "-u", f"{self.address[0]}:{self.address[1]}", *formats]

    def call(self) -> None:
        self.poster.post()

    def teardown(self) -> None:
        self.poster.close()


class IcowHttpJson(IcowHttp):
    name = "icow_http_json"
    binary = False
    description = "icow serve --http-port: POST /v2/models/M/infer with JSON data in and out, keep-alive"


def request(workload: Workload, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The request body and headers, as tritonclient.http would send them."""
    tensor = {"name": workload.input, "datatype": "FP32", "shape": list(workload.shape)}
    if not binary:
        tensor["data"] = workload.array.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    raw = workload.array.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": [tensor], "outputs": [{"name": workload.output,
                                                          "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def output(data: bytes, header_length: str | None, name: str) -> np.ndarray:
    """Output ``name`` of an answer, binary or JSON."""
    size = int(header_length) if header_length is not None else len(data)
    header = json.loads(data[:size])
    at = size
    for tensor in header["outputs"]:
        binary = tensor.get("parameters", {}).get("binary_data_size")
        if tensor["name"] == name:
            values = (np.frombuffer(data[at:at + binary], dtype="<f4") if binary is not None
                      else np.asarray(tensor["data"], dtype=np.float32))
            return values.reshape(tensor["shape"])
        at += binary or 0
    raise BenchError(f"icow answered without output '{name}'")
