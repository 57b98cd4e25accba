"""Triton's C++ load generator perf_analyzer as the client (``--client perf_analyzer``).

Installed apart by ``bash bench/setup_perf_analyzer.sh`` into bench/.perf-venv
(it ships only in the tritonclient 2.41.0 wheel). It runs as a child of this
process, so it inherits the client CPU pin. What it reports (req/s, p50, p99 over
its stable windows) goes in the row; the bench adds what it cannot see: the
server's CPU time and peak RSS from /proc over the whole perf_analyzer run,
divided by the requests the server counted in its statistics over that run.
"""

from __future__ import annotations

import csv
import io
import os
import resource
import subprocess
import time
from pathlib import Path

import grpc

from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc

from .harness import CHANNEL_OPTIONS, Env, Server, Target
from .measure import Result, ServerWindow, run_phase, setup_target
from .models import ROOT
from .workloads import Workload

VENV = ROOT / "bench" / ".perf-venv"
QUICK_STABILITY = 1000  # %: a smoke run on a busy machine must not fail for want of stability


class PerfAnalyzerMissing(RuntimeError):
    pass


def command() -> tuple[list[str], dict[str, str]]:
    """perf_analyzer's path and the environment it needs (libcudart.so.12 on
    LD_LIBRARY_PATH, even on a machine with no GPU)."""
    binary = VENV / "bin" / "perf_analyzer"
    cudart = sorted(VENV.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
    if not binary.exists() or not cudart:
        raise PerfAnalyzerMissing(f"perf_analyzer is not installed in {VENV}: run bash bench/setup_perf_analyzer.sh")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cudart[-1]), env.get("LD_LIBRARY_PATH")]))
    return [str(binary)], env


def version() -> str:
    try:
        cmd, env = command()
        out = subprocess.run([*cmd, "--version"], env=env, capture_output=True, text=True, timeout=30).stdout
        return out.strip() or "unknown"
    except (PerfAnalyzerMissing, OSError, subprocess.TimeoutExpired) as e:
        return f"absent ({e})"


def served(server: Server, model: str) -> int:
    """Successful inferences the server has counted for ``model`` (all versions)."""
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stats = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=model), timeout=10)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def endpoint(target: Target) -> list[str]:
    """perf_analyzer's protocol and URL for ``target``: Triton's gRPC on its server's
    port, unless the target says otherwise (``pa_endpoint``: MLServer's REST)."""
    own = getattr(target, "pa_endpoint", None)
    return own() if own is not None else ["-i", "grpc", "-u", target.server.address]


def count(target: Target, model: str) -> int:
    """Requests the target's server has answered for ``model``: its own ``served``
    where it has one (MLServer has no ModelStatistics), else Triton's statistics."""
    own = getattr(target, "served", None)
    return own(model) if own is not None else served(target.server, model)


def arguments(workload: Workload, endpoint: list[str], csv_path: Path, duration: float, quick: bool,
              stability: float | None) -> list[str]:
    # Three windows of duration/3: perf_analyzer needs three stable windows and
    # reports them merged, so the figure covers about ``duration`` seconds. A 12 MiB
    # request takes tens of ms: a window of a few requests has an infinite latency
    # deviation and never counts as stable, so those windows last 1 s at least.
    window_ms = max(1000 if workload.bulk else 100, int(duration * 1000 / 3))
    args = ["-m", workload.model, *endpoint,
            "--concurrency-range", str(workload.concurrency),
            "--shape", f"{workload.input}:{','.join(map(str, workload.shape))}",
            "--input-data", "random", "-p", str(window_ms), "-f", str(csv_path)]
    if quick:
        args += ["-s", str(QUICK_STABILITY), "-r", "3"]
    elif stability is not None:
        args += ["-s", f"{stability:g}"]
    return args


def parse_csv(text: str) -> dict[str, float]:
    """The one row of perf_analyzer's -f CSV (its columns vary with the server's
    statistics; the ones read here are always there)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise ValueError(f"expected one row in perf_analyzer's CSV, got {len(rows)}")
    row = rows[0]
    return {"rps": float(row["Inferences/Second"]), "p50_us": float(row["p50 latency"]),
            "p99_us": float(row["p99 latency"])}


def measure(name: str, workload: Workload, env: Env, duration: float, warmup: float, quick: bool,
            stability: float | None) -> Result:
    """One server target on one workload, driven by perf_analyzer after ``warmup``
    seconds of the bench's own calls at the same concurrency: a server on a VM
    that sat idle answers its first seconds of calls up to twice as slowly, which
    perf_analyzer has no warm-up to absorb."""
    result = Result(workload.name, name, "perf_analyzer", workload.concurrency)
    try:
        cmd, pa_env = command()
    except PerfAnalyzerMissing as e:
        result.error = str(e)
        return result
    target = setup_target(name, workload, env, result)  # starts the server, checks its answer
    if target is None:
        return result
    try:
        warm = run_phase(target.call, workload.concurrency, warmup)
    finally:
        target.teardown()  # perf_analyzer brings its own channel
    if warm.error is not None:
        result.error = f"warm-up: {warm.error}"
        return result
    server = target.server
    csv_path = env.dir / f"pa-{name}-{workload.name}.csv"
    window = ServerWindow(server)
    try:
        before = count(target, workload.model)
        window.start()
        cpu0, t0 = _children_cpu(), time.perf_counter()
        run = subprocess.run([*cmd, *arguments(workload, endpoint(target), csv_path, duration, quick, stability)],
                             env=pa_env, capture_output=True, text=True, timeout=max(120.0, 40 * duration))
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        window.stop()
        requests = count(target, workload.model) - before
    except (grpc.RpcError, subprocess.TimeoutExpired, OSError) as e:
        result.error = f"perf_analyzer: {type(e).__name__}: {e}"
        return result
    if run.returncode != 0 or not csv_path.exists():
        tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
        result.error = f"perf_analyzer exited with {run.returncode}: {' | '.join(tail)}"
        return result
    figures = parse_csv(csv_path.read_text())
    result.calls, result.seconds = requests, round(wall, 3)
    result.rps, result.p50_us, result.p99_us = figures["rps"], figures["p50_us"], figures["p99_us"]
    result.mb_s = workload.payload_bytes * result.rps / 1e6
    result.client_cpu_pct = 100 * cpu / wall
    window.fill(result, requests)
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: perf_analyzer
    return usage.ru_utime + usage.ru_stime
