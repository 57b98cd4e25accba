"""A three-step ensemble against its steps called one by one (issue 22, item 5).

    python -m bench.ensemble [--seconds 5] [--concurrency 1,8] [--plane native] [--device cpu]
                             [--step-batching] [--output PREFIX]

Three models, each ``y = relu(x @ W)`` on a [1, 256] FP32 row (a 256x256 weight), chained
as the ensemble ``chain``. Measured on one server (``icow serve``, ``--plane``):

- ``ensemble``: one ModelInfer of ``chain`` per request;
- ``three calls``: the client calls ``s0``, ``s1``, ``s2`` one after the other, each
  answer's bytes sent on as the next request's input (three round trips);
- ``one call``: ModelInfer of ``s1`` alone (one ModelInfer's overhead: its server CPU
  less its in-process run);
- ``in-process``: the three sessions run one after the other in this process (the
  compute floor), with icow's session options.

The server runs on one CPU, this process (clients, in-process floor) on another.
Each client row runs ``--seconds`` at each concurrency (threads, raw ModelInfer bytes)
and reports requests/s and the server's CPU per request (/proc). The target: ensemble
CPU per request <= the steps' in-process time + 1.3 x one ModelInfer's overhead, and
at concurrency 8 the ensemble's throughput >= 2 x the three-call client's.
Writes ``bench/results/<UTC time>-ensemble.{json,md}`` (or ``PREFIX-ensemble.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2 as pb

from .harness import CHANNEL_OPTIONS, MODEL_INFER, Server, pin_client
from .procstat import cpu_seconds
from .scenarios import _ready

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 256
STEPS = ("s0", "s1", "s2")
CHAIN = f'''platform: "ensemble"
max_batch_size: 8
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "s0" model_version: -1 input_map {{ key: "x" value: "IN" }} output_map {{ key: "y" value: "A" }} }},
  {{ model_name: "s1" model_version: -1 input_map {{ key: "x" value: "A" }} output_map {{ key: "y" value: "B" }} }},
  {{ model_name: "s2" model_version: -1 input_map {{ key: "x" value: "B" }} output_map {{ key: "y" value: "OUT" }} }}
] }}
'''


def step_model(seed: int) -> onnx.ModelProto:
    """y = relu(x @ W), batch dimension dynamic."""
    w = np.random.default_rng(seed).standard_normal((WIDTH, WIDTH)).astype(np.float32) / 16
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build(repo: Path, threads: int = 0, batching: bool = False) -> None:
    """The three models (``threads``: their intra-op threads, 0: icow's default; ``batching``:
    dynamic batching with no delay, so that each step waits in its model's queue) and ``chain``."""
    config = (f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{threads}" }} }}\n'
              if threads else "") + ("dynamic_batching { }\n" if batching else "")
    for seed, name in enumerate(STEPS):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(step_model(seed).SerializeToString())
        if config:
            (repo / name / "config.pbtxt").write_text(config)
    (repo / "chain" / "1").mkdir(parents=True)
    (repo / "chain" / "config.pbtxt").write_text(CHAIN)


def request(model: str, name: str, data: bytes) -> bytes:
    message = pb.ModelInferRequest(model_name=model, raw_input_contents=[data])
    message.inputs.add(name=name, datatype="FP32", shape=[1, WIDTH])
    return message.SerializeToString()


def output(answer: bytes) -> bytes:
    return pb.ModelInferResponse.FromString(answer).raw_output_contents[0]


def in_process(repo: Path, x: np.ndarray, seconds: float, threads: int, device: str = "cpu") -> float:
    """Seconds per request of the three sessions run in turn (intra-op threads as icow gives them;
    on ``device``, numpy arrays in and out of each run, as a client of ONNX Runtime's Python API has them)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    providers = ["CPUExecutionProvider"] if device == "cpu" else [
        ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}), "CPUExecutionProvider"]
    sessions = [ort.InferenceSession(str(repo / n / "1" / "model.onnx"), options, providers=providers)
                for n in STEPS]

    def once() -> np.ndarray:
        y = x
        for s in sessions:
            y = s.run(None, {"x": y})[0]
        return y

    for _ in range(200):
        once()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        count += 1
    return (time.perf_counter() - start) / count


def drive(address: str, call: Callable[[Callable], None], concurrency: int, seconds: float, pid: int) -> dict:
    """``call(infer)`` in ``concurrency`` threads for ``seconds``: requests/s and server CPU per request."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    infer = channel.unary_unary(MODEL_INFER)
    for _ in range(100):
        call(infer)
    counts = [0] * concurrency
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            call(infer)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)  # the measuring window itself, not an ordering of events
    stop.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    channel.close()
    total = sum(counts)
    return {"requests_per_s": total / elapsed, "server_cpu_us_per_request": cpu / total * 1e6, "requests": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--plane", choices=["native", "grpcio"], default="native")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of each step model (0: icow's default, one per CPU; with several, "
                             "ONNX Runtime's pools spin between the steps' runs and the CPU figures measure that)")
    parser.add_argument("--device", default="cpu", help="where the models run: cpu, cuda or cuda:N "
                        "(icow serve --device; the in-process floor on the same device)")
    parser.add_argument("--step-batching", action="store_true",
                        help="the step models batch (dynamic_batching, no delay): steps go through their queues")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    pinning = pin_client()  # this process (client, in-process floor) on one CPU, the server on another
    x = np.random.default_rng(9).standard_normal((1, WIDTH)).astype(np.float32)
    data = x.tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        build(repo, args.threads, args.step_batching)
        floor = in_process(repo, x, args.seconds, args.threads, args.device)
        serve = ["-m", "icow", "serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--data-plane",
                 args.plane, "--device", args.device, "--no-metrics", "--port"]
        server = Server("icow", lambda port: [*serve, str(port)], _ready, Path(tmp) / "server.log",
                        pinning.server_cpu)
        server.start()
        try:
            rows = measure(server, data, [int(c) for c in args.concurrency.split(",")], args.seconds, x)
        finally:
            server.stop()
    report = summarize(rows, floor, args, f"{cpus} CPUs, {pinning.note}")
    prefix = args.output or ROOT / "bench" / "results" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}-ensemble.json").write_text(json.dumps(report, indent=2))
    Path(f"{prefix}-ensemble.md").write_text(report["markdown"])
    print(report["markdown"])
    return 0


def measure(server: Server, data: bytes, concurrencies: list[int], seconds: float, x: np.ndarray) -> dict:
    chain, single = request("chain", "IN", data), request("s1", "x", data)

    def ensemble(infer) -> None:
        infer(chain)

    def three(infer) -> None:
        payload = data
        for name in STEPS:
            payload = output(infer(request(name, "x", payload)))

    def one(infer) -> None:
        infer(single)

    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:  # same answer both ways
        infer = channel.unary_unary(MODEL_INFER)
        piped = np.frombuffer(output(infer(chain)), np.float32)
        payload = data
        for name in STEPS:
            payload = output(infer(request(name, "x", payload)))
        assert np.allclose(piped, np.frombuffer(payload, np.float32), rtol=1e-5), "ensemble != three calls"
    rows = {}
    for c in concurrencies:
        for label, call in (("ensemble", ensemble), ("three calls", three), ("one call (s1)", one)):
            rows[f"{label} c{c}"] = drive(server.address, call, c, seconds, server.pid)
    return rows


def summarize(rows: dict, floor: float, args: argparse.Namespace, machine: str) -> dict:
    one = rows.get("one call (s1) c1")
    overhead_us = one["server_cpu_us_per_request"] - floor / 3 * 1e6 if one else float("nan")
    target_us = floor * 1e6 + 1.3 * overhead_us
    lines = [f"# Ensemble bench ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, plane {args.plane}, "
             f"{machine}, load {os.getloadavg()[0]:.1f}, intra-op threads per step "
             f"{args.threads or 'one per CPU'}{', steps batching' if args.step_batching else ''}, "
             f"device {args.device})", "",
             f"in-process, three steps: {floor * 1e6:.1f} us per request (the compute floor)",
             f"one ModelInfer's overhead (s1's server CPU less a third of the floor): {overhead_us:.1f} us",
             f"target server CPU per ensemble request: <= {target_us:.1f} us", "",
             "| row | requests/s | server CPU us/request |", "|---|---|---|"]
    lines += [f"| {k} | {r['requests_per_s']:.0f} | {r['server_cpu_us_per_request']:.1f} |" for k, r in rows.items()]
    ratios = {}
    for c in args.concurrency.split(","):
        ens, three = rows.get(f"ensemble c{c}"), rows.get(f"three calls c{c}")
        if ens and three:
            ratios[c] = ens["requests_per_s"] / three["requests_per_s"]
            lines.append(f"\nconcurrency {c}: ensemble / three calls throughput = {ratios[c]:.2f}x")
    return {"rows": rows, "in_process_us": floor * 1e6, "overhead_us": overhead_us, "target_us": target_us,
            "throughput_ratio": ratios, "python": sys.version.split()[0], "markdown": "\n".join(lines) + "\n"}


if __name__ == "__main__":
    sys.exit(main())
