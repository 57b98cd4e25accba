"""``python -m bench``: every workload against every target, side by side in one run."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from . import machine
from .harness import Env, Pinning, Target, pin_client
from .models import ROOT
from .workloads import Workload, all_workloads

# name -> "module:class"; imported when used, so a missing client library
# fails its own rows only. Baselines first: they are the denominators.
TARGETS = {
    "ort_inprocess": "bench.baselines.ort_inprocess:OrtInProcess",
    "echo_server": "bench.baselines.echo_server:EchoServer",
    "icow_grpc": "bench.scenarios.icow_grpc:IcowGrpc",
    "icow_tritonclient": "bench.scenarios.icow_tritonclient:IcowTritonClient",
}

METHOD = (
    "One process runs every workload; within a workload every target runs in turn, so a scenario and its "
    "baseline are measured minutes apart at most. Servers are subprocesses started once and pinned to the "
    "server CPU; the client (this process and all its threads) is pinned to the client CPU. Per target and "
    "workload: setup and one call whose answer is checked against in-process onnxruntime; 'warmup' seconds "
    "of calls, discarded; then 'duration' seconds in which 'concurrency' threads each call in a closed loop. "
    "req/s = calls / wall time; latency = time.perf_counter_ns around each call, percentiles by numpy "
    "(linear). ratio = req/s of the target / req/s of its baseline in the same workload; +p50 = p50 minus "
    "the baseline's p50. MB/s = (input + output tensor bytes per call) * req/s / 1e6. onnxruntime pins its "
    "own pool threads when left to pick their number; the bench moves any thread found off its CPU back "
    "(see notes)."
)


@dataclass
class Result:
    workload: str
    target: str
    baseline: str | None
    concurrency: int
    calls: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float = 0.0
    mb_s: float = 0.0
    ratio: float | None = None
    p50_delta_us: float | None = None
    error: str | None = None


# -- measuring ----------------------------------------------------------------

@dataclass
class Phase:
    latencies_ns: np.ndarray
    seconds: float
    error: str | None


def run_phase(call: Callable[[], None], threads: int, seconds: float) -> Phase:
    """``threads`` closed loops of ``call`` for ``seconds``; stops all at the first error."""
    barrier = threading.Barrier(threads)
    stop = threading.Event()
    latencies: list[list[int]] = [[] for _ in range(threads)]
    spans: list[tuple[int, int]] = [(0, 0)] * threads
    errors: list[str] = []

    def loop(i: int) -> None:
        record, clock = latencies[i].append, time.perf_counter_ns  # locals: less timer overhead
        barrier.wait()
        start = now = clock()
        deadline = start + int(seconds * 1e9)
        try:
            while now < deadline and not stop.is_set():
                t0 = clock()
                call()
                now = clock()
                record(now - t0)
        except Exception as e:
            errors.append(describe_error(e))
            stop.set()
        spans[i] = (start, clock())

    workers = [threading.Thread(target=loop, args=(i,), name=f"bench-client-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9
    return Phase(np.fromiter((x for lat in latencies for x in lat), dtype=np.int64), wall,
                 errors[0] if errors else None)


def describe_error(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"gRPC {e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


def load_target(name: str) -> Target:
    module, cls = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def measure(name: str, workload: Workload, env: Env, duration: float, warmup: float) -> Result:
    """Set up ``name`` for ``workload``, warm it, time it, tear it down."""
    result = Result(workload.name, name, None, workload.concurrency)
    try:
        target = load_target(name)
        result.baseline = target.baseline
    except ImportError as e:
        result.error = f"setup: {describe_error(e)}"
        return result
    try:
        target.setup(workload, env)
        env.repin_client(f"{name} (client)")
    except Exception as e:
        result.error = f"setup: {describe_error(e)}"
        with contextlib.suppress(Exception):  # close what setup opened before it failed
            target.teardown()
        return result
    try:
        phase = run_phase(target.call, workload.concurrency, warmup)
        if phase.error is None:
            phase = run_phase(target.call, workload.concurrency, duration)
    finally:
        target.teardown()
    if phase.error is not None:
        result.error = phase.error
        return result
    fill(result, phase, workload)
    return result


def fill(result: Result, phase: Phase, workload: Workload) -> None:
    lat_us = phase.latencies_ns / 1e3
    result.calls = int(lat_us.size)
    result.seconds = round(phase.seconds, 3)
    result.rps = result.calls / phase.seconds
    result.p50_us, result.p99_us = (float(x) for x in np.percentile(lat_us, [50, 99]))
    result.mean_us = float(lat_us.mean())
    result.mb_s = workload.payload_bytes * result.rps / 1e6


def compare(results: list[Result]) -> None:
    """Fill ratio and +p50 of each result from its baseline in the same workload."""
    by_key = {(r.workload, r.target): r for r in results if r.error is None}
    for r in by_key.values():
        base = by_key.get((r.workload, r.baseline)) if r.baseline else None
        if base is not None and base.rps > 0:
            r.ratio = r.rps / base.rps
            r.p50_delta_us = r.p50_us - base.p50_us


# -- output -------------------------------------------------------------------

FEW_CALLS = 100  # below this, p99 is the slowest call or next to it
COLUMNS = ("workload", "target", "vs", "calls", "req/s", "p50 µs", "p99 µs", "MB/s", "ratio", "+p50 µs")


def _us(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 100 else f"{x:,.0f}"


def row(r: Result, bulk: bool) -> list[str]:
    if r.error is not None:
        return [r.workload, r.target, r.baseline or "-", "FAILED", r.error[:100], "", "", "", "", ""]
    p99 = _us(r.p99_us) + ("*" if r.calls < FEW_CALLS else "")
    return [r.workload, r.target, r.baseline or "-", f"{r.calls:,}", f"{r.rps:,.0f}", _us(r.p50_us), p99,
            f"{r.mb_s:,.0f}" if bulk else "", "-" if r.ratio is None else f"{r.ratio:.2f}x",
            "-" if r.p50_delta_us is None else f"{r.p50_delta_us:+,.1f}"]


def table(results: list[Result], workloads: list[Workload]) -> str:
    bulk = {w.name: w.bulk for w in workloads}
    rows = [list(COLUMNS)] + [row(r, bulk[r.workload]) for r in results]
    widths = [max(len(cells[i]) for cells in rows if len(cells[i]) < 40) for i in range(len(COLUMNS))]
    lines, previous = [], None
    for cells in rows:
        if previous is not None and cells[0] != previous and previous != COLUMNS[0]:
            lines.append("")
        previous = cells[0]
        left = 3  # text columns left-aligned, numbers right-aligned
        lines.append("  ".join(c.ljust(w) if i < left or cells[3] == "FAILED" and i == 4 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    if any(r.error is None and r.calls < FEW_CALLS for r in results):
        lines.append(f"\n* fewer than {FEW_CALLS} calls: p99 is about the slowest call; run longer (--duration)")
    return "\n".join(lines)


def header(info: dict, pinning: Pinning, args: argparse.Namespace, started: dt.datetime) -> str:
    v = info["versions"]
    return "\n".join([
        f"icow bench  {started:%Y-%m-%d %H:%M:%SZ}  commit {info['commit']}",
        f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, onnxruntime {v['onnxruntime']}, "
        f"grpcio {v['grpcio']}, tritonclient {v['tritonclient']}",
        f"load average at start: {' '.join(map(str, info['loadavg_start']))}",
        f"pinning: {pinning.note}",
        f"method: {args.duration:g}s per target after {args.warmup:g}s warm-up; concurrency 1 and "
        f"{args.concurrency}; ratio = req/s over the 'vs' target's req/s in the same workload",
    ])


# -- command line ---------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1s per target, 0.25s warm-up: a smoke run")
    parser.add_argument("--duration", type=float, help="seconds measured per target and workload (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of discarded calls before each (default 1)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads of the concurrent workloads")
    parser.add_argument("--scenarios", help=f"comma-separated targets (default all): {','.join(TARGETS)}")
    parser.add_argument("--workloads", help="comma-separated workload names (default all; see --list)")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/<date>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository and server logs")
    parser.add_argument("--list", action="store_true", help="list targets and workloads, then exit")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 1.0)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def select(names: str | None, known: list[str], what: str) -> list[str]:
    if not names:
        return known
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return [n for n in known if n in chosen]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = all_workloads(args.concurrency)
    if args.list:
        print("targets:  ", ", ".join(TARGETS), "\nworkloads:", ", ".join(w.name for w in workloads))
        return 0
    targets = select(args.scenarios, list(TARGETS), "scenario")
    chosen = select(args.workloads, [w.name for w in workloads], "workload")
    workloads = [w for w in workloads if w.name in chosen]

    started = dt.datetime.now(dt.timezone.utc)
    info = machine.describe()  # before pinning: it records the CPUs this run may use
    pinning = pin_client()
    warning = machine.load_warning(info["loadavg_start"])
    print(header(info, pinning, args, started))
    if warning:
        print(warning)

    env = Env(pinning, keep=args.keep)
    try:
        results = run_all(targets, workloads, env, args)
    finally:
        anomalies = env.close()
    compare(results)
    info["loadavg_end"] = machine.load()
    print()
    print(table(results, workloads))
    report_anomalies(anomalies)
    for note in env.notes:
        print(f"note: {note}")
    if warning:
        print(warning)  # again, under the table it is about
    if args.keep:
        print(f"repository and server logs kept in {env.dir}")
    document = {
        "date": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "pinning": {**asdict(pinning), "servers": {n: s.affinity for n, s in env.servers.items()}},
        "method": {"text": METHOD, "duration_s": args.duration, "warmup_s": args.warmup,
                   "concurrency": args.concurrency, "quick": args.quick},
        "targets": {n: t for n in targets if (t := describe_target(n))},
        "workloads": [{"name": w.name, "model": w.model, "shape": list(w.shape), "concurrency": w.concurrency,
                       "payload_bytes": w.payload_bytes, "request_bytes": len(w.request_bytes)} for w in workloads],
        "results": [asdict(r) for r in results],
        "server_log_anomalies": anomalies,
        "notes": env.notes,
        "warnings": [warning] if warning else [],
    }
    path = args.json or ROOT / "bench" / "results" / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {path}")
    return 1 if any(r.error for r in results) else 0


def run_all(targets: list[str], workloads: list[Workload], env: Env, args: argparse.Namespace) -> list[Result]:
    """Every workload, and within it every target in turn: a scenario sits beside its baseline."""
    results: list[Result] = []
    for workload in workloads:
        for name in targets:
            r = measure(name, workload, env, args.duration, args.warmup)
            results.append(r)
            print(f"  {r.workload:<20} {r.target:<18} "
                  + (f"FAILED {r.error}" if r.error else f"{r.rps:>10,.0f} req/s  p50 {_us(r.p50_us)} µs"),
                  file=sys.stderr, flush=True)
    return results


def report_anomalies(anomalies: dict[str, list[str]]) -> None:
    for server, lines in anomalies.items():
        if lines:
            print(f"\n{server} server logged {len(lines)} warning/error line(s); the first ones:")
            for line in lines[:10]:
                print(f"  {line}")


def describe_target(name: str) -> dict | None:
    try:
        target = load_target(name)
    except ImportError:
        return None
    return {"baseline": target.baseline, "description": target.description}
