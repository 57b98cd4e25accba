"""The peer users would pick instead of icow: MLServer 1.7 (Seldon's KServe-v2
server) with a custom ONNX Runtime runtime (``bench/baselines/mlserver_onnx.py``),
over REST (``mlserver_rest``) and over gRPC (``mlserver_grpc``).

One MLServer, started once from bench/.mlserver-venv (``bash
bench/setup_mlserver.sh``), serves every model of the bench's repository on both
protocols. Its settings are MLServer's defaults except where the bench must
differ: free ports instead of 8080/8081/8082 (its metrics server stays on, as by
default: the bench reads its request count there), 127.0.0.1, gRPC messages up
to 256 MiB (4 MiB by default: the 12 MiB workloads need more) and the metrics'
multiprocess folder in the run's temporary folder. So
``parallel_workers`` is its default, 1: the model runs in one worker process
beside the server's (both are measured), and ``debug`` is on (access logs).

perf_analyzer drives the REST side (JSON tensors: MLServer does not take Triton's
binary extension). It cannot drive the gRPC side: before it sends a request it
calls Triton's ModelConfig RPC, which MLServer does not have ("Method not
found"), so ``mlserver_grpc`` is always measured with the bench's own client
(runner.py), and the row says so.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc

from ..harness import CHANNEL_OPTIONS, MAX_MESSAGE, MODEL_INFER, BenchError, Env, Server, free_port
from ..models import ROOT
from ..rest import Poster
from ..workloads import Workload

VENV = ROOT / "bench" / ".mlserver-venv"
RUNTIME = "bench.baselines.mlserver_onnx.OnnxModel"


def installed() -> bool:
    return (VENV / "bin" / "mlserver").exists()


def mlserver(env: Env) -> Server:
    """The MLServer for the bench's repository, started on first use."""
    if not installed():
        raise BenchError(f"MLServer is not installed in {VENV}: run bash bench/setup_mlserver.sh")
    folder = env.dir / "mlserver"
    models = sorted(p.parent.parent.name for p in env.repo.glob("*/1/model.onnx"))
    if "mlserver" not in env.servers:
        write_models(folder, env.repo, models)
        env.notes.append("mlserver: MLServer 1.7.1's defaults (parallel_workers 1, debug on, metrics on) "
                         "but for free ports, 127.0.0.1 and 256 MiB gRPC messages")
    return env.server("mlserver", lambda port: _command(folder, port), _probe(models),
                      python=str(VENV / "bin" / "python"))


def write_models(folder: Path, repo: Path, models: list[str]) -> None:
    """One model-settings.json per model: the runtime, and the file it loads."""
    for model in models:
        (folder / model).mkdir(parents=True, exist_ok=True)
        settings = {"name": model, "implementation": RUNTIME,
                    "parameters": {"uri": str(repo / model / "1" / "model.onnx")}}
        (folder / model / "model-settings.json").write_text(json.dumps(settings, indent=2))


def _command(folder: Path, grpc_port: int) -> list[str]:
    """Writes settings.json with ``grpc_port`` (the port the bench probes) and
    free ones for REST and metrics; the command line that starts MLServer on it."""
    settings = {"host": "127.0.0.1", "grpc_port": grpc_port, "http_port": free_port(),
                "metrics_port": free_port(), "grpc_max_message_length": MAX_MESSAGE,
                "metrics_dir": str(folder / ".metrics")}  # by default ./.metrics: the repository's root
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    return [str(VENV / "bin" / "mlserver"), "start", str(folder)]


def settings(env: Env) -> dict:
    """The running MLServer's settings.json: its ports."""
    return json.loads((env.dir / "mlserver" / "settings.json").read_text())


def _probe(models: list[str]):
    """Ready once every model is: MLServer answers ServerReady before it has
    registered any (all of none are ready)."""
    def ready(channel: grpc.Channel) -> bool:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        return all(stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=1).ready for m in models)
    return ready


class MLServerTarget:
    """What both protocols share: the server, and its request count for perf_analyzer."""

    server: Server | None = None

    def served(self, model: str) -> int:
        """Successful inferences of ``model`` (REST and gRPC) from MLServer's Prometheus metrics."""
        url = f"http://127.0.0.1:{self.ports['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        prefix = f'model_infer_request_success_total{{model="{model}",'
        return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)))

    def start(self, env: Env) -> None:
        self.server = mlserver(env)
        self.ports = settings(env)


class MLServerRest(MLServerTarget):
    name = "mlserver_rest"
    description = ("MLServer 1.7.1, custom onnxruntime runtime (NumpyCodec), REST: "
                   "POST /v2/models/M/infer with JSON tensors")

    def setup(self, workload: Workload, env: Env) -> None:
        self.start(env)
        self.address = ("127.0.0.1", self.ports["http_port"])
        body = json.dumps({"inputs": [{"name": workload.input, "datatype": "FP32", "shape": list(workload.shape),
                                       "data": workload.array.ravel().tolist()}]}).encode()
        self.poster = Poster(self.name, self.address, f"/v2/models/{workload.model}/infer", body,
                             {"Content-Type": "application/json"})
        answer = json.loads(self.poster.post()[0])
        output = next(o for o in answer["outputs"] if o["name"] == workload.output)
        env.check(self.name, workload, np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))

    def pa_endpoint(self) -> list[str]:
        return ["-i", "http", "-u", f"{self.address[0]}:{self.address[1]}",
                "--input-tensor-format", "json", "--output-tensor-format", "json"]

    def call(self) -> None:
        self.poster.post()

    def teardown(self) -> None:
        self.poster.close()


class MLServerGrpc(MLServerTarget):
    name = "mlserver_grpc"
    description = ("MLServer 1.7.1, custom onnxruntime runtime (NumpyCodec), gRPC: raw ModelInferRequest bytes "
                   "(raw_input_contents) over a bare grpcio channel")

    def setup(self, workload: Workload, env: Env) -> None:
        self.start(env)
        self.channel = grpc.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes both ways, as icow's rows
        self.request = workload.request_bytes
        env.check(self.name, workload, output(self.stub(self.request), workload.output))

    def call(self) -> None:
        self.stub(self.request)

    def teardown(self) -> None:
        self.channel.close()


def output(data: bytes, name: str) -> np.ndarray:
    """Output ``name`` of a serialized ModelInferResponse, raw or typed (MLServer
    answers with typed contents unless the request asked for raw ones)."""
    response = pb.ModelInferResponse.FromString(data)
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            values = (np.frombuffer(response.raw_output_contents[index], dtype="<f4")
                      if response.raw_output_contents else np.asarray(tensor.contents.fp32_contents, np.float32))
            return values.reshape(tuple(tensor.shape))
    raise BenchError(f"mlserver answered without output '{name}': {[t.name for t in response.outputs]}")
