"""The first request after a reload, with and without ``model_warmup`` (issue 23, item 5).

    python -m bench.reload [--requests 300] [--rounds 3] [--output PREFIX]

For each case (no warm-up, then warm-up), in a fresh server (``--model-control-mode
explicit``): the steady-state p50 of version 1 (after 50 unmeasured requests), then
version 2 is put in place and loaded (``load_model`` returns once it serves), and the
first request after it, which version 2 answers, is timed. The target: that first
request within 2 x the steady p50. Each round loads a new version again (3, 4, ...).
Writes ``bench/results/<UTC time>-reload.{json,md}`` (or ``PREFIX-reload.*``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import tritonclient.grpc as tc
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SHAPE = [1, 32, 64, 64]
WARMUP = ('model_warmup [ { name: "one" batch_size: 1 inputs { key: "x" value: '
          '{ data_type: TYPE_FP32 dims: [32, 64, 64] random_data: true } } } ]\n')


def model(seed: int) -> onnx.ModelProto:
    """Three 3x3 convolutions of 32 channels on 64x64: a run of a few ms, whose first run
    allocates ONNX Runtime's buffers."""
    rng = np.random.default_rng(seed)
    nodes, weights, name = [], [], "x"
    for i in range(3):
        w = numpy_helper.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.05, f"w{i}")
        weights.append(w)
        nodes += [helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        name = f"r{i}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    dims = ["batch", *SHAPE[1:]]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], weights)
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    built.ir_version = 8
    return built


def publish(repo: Path, version: int) -> None:
    folder = repo / "m" / str(version)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model(version).SerializeToString())


def timed(client: tc.InferenceServerClient, x: np.ndarray) -> tuple[float, str]:
    inputs = [tc.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    start = time.perf_counter()
    result = client.infer("m", inputs)
    return (time.perf_counter() - start) * 1000, result.get_response().model_version


def run_case(warm: bool, requests: int, rounds: int, port: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        publish(repo, 1)
        (repo / "m" / "config.pbtxt").write_text("max_batch_size: 1\n" + (WARMUP if warm else ""))
        log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "icow", "serve", "--port", str(port), "--http-port", "0",
                                   "--no-metrics", "--model-repository", str(repo), "--model-control-mode",
                                   "explicit", "--load-model", "m"], stdout=log, stderr=subprocess.STDOUT)
        try:
            client = tc.InferenceServerClient(f"127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if client.is_model_ready("m"):
                        break
                except Exception:  # not listening yet
                    time.sleep(0.1)
            x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
            firsts, p50s = [], []
            for r in range(rounds):
                for _ in range(50):
                    timed(client, x)
                p50s.append(statistics.median(timed(client, x)[0] for _ in range(requests)))
                publish(repo, r + 2)
                client.load_model("m")  # returns once the new version serves (the policy keeps the latest)
                ms, version = timed(client, x)
                assert version == str(r + 2), f"the first request after the load went to version {version}"
                firsts.append(ms)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
    return {"warm_up": warm, "steady_p50_ms": p50s, "first_after_reload_ms": firsts,
            "ratio": [f / p for f, p in zip(firsts, p50s)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests for each steady p50")
    parser.add_argument("--rounds", type=int, default=3, help="reloads per case")
    parser.add_argument("--port", type=int, default=18551)
    parser.add_argument("--output", help="prefix of the result files (default: bench/results/<UTC time>)")
    args = parser.parse_args(argv)
    cases = [run_case(warm, args.requests, args.rounds, args.port) for warm in (False, True)]
    lines = ["| warm-up | steady p50 (ms) | first after reload (ms) | ratio | within 2x |", "|---|---|---|---|---|"]
    for case in cases:
        for p50, first, ratio in zip(case["steady_p50_ms"], case["first_after_reload_ms"], case["ratio"]):
            lines.append(f"| {'yes' if case['warm_up'] else 'no'} | {p50:.2f} | {first:.2f} | {ratio:.2f} | "
                         f"{'yes' if ratio <= 2 else 'no'} |")
    table = "\n".join(lines)
    print(table)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = Path(args.output) if args.output else ROOT / "bench" / "results" / stamp
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}-reload.json").write_text(json.dumps({"date": stamp, "shape": SHAPE, "cases": cases}, indent=1))
    Path(f"{prefix}-reload.md").write_text(f"# First request after a reload ({stamp})\n\n{table}\n")
    return 0 if all(r <= 2 for r in cases[1]["ratio"]) else 1


if __name__ == "__main__":
    sys.exit(main())
