"""``python -m bench --handler``: the CPU that icow's grpcio ModelInfer handler
spends per call, in this process with no gRPC: the Python path (``--no-fast-path``)
against the fast path in C++ (``icow._plane``'s Direct), identity FP32 [1, 16],
``--handler-calls`` calls each after a tenth as many for warm-up. A loop keeps
the caches hot; ``--handler-evict MIB`` also times each call after writing MIB
elsewhere, closer to a server, where gRPC's work between calls evicts them. What
it leaves out (gRPC, the GIL shared with grpcio's threads) the server targets measure."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from icow.repository.repository import Repository
from icow.services import plane as native_plane
from icow.services.oip import InferenceService

from . import machine, models
from .harness import pin_client
from .workloads import identity_small


class Context:
    """What the handler asks of grpcio's context: no deadline, never cancelled."""

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return True

    def abort(self, code, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


def repository(root: Path) -> Repository:
    (root / "identity" / "1").mkdir(parents=True)
    onnx.save(models.identity(), str(root / "identity" / "1" / "model.onnx"))
    (root / "identity" / "config.pbtxt").write_text(models.IDENTITY_CONFIG)
    repo = Repository(root)
    repo.load("identity")
    return repo


def cpu_per_call(service: InferenceService, data: bytes, calls: int) -> float:
    """µs of this process's CPU per call, after a warm-up."""
    context = Context()
    for _ in range(calls // 10):
        service.ModelInferBytes(data, context)
    start = time.process_time()
    for _ in range(calls):
        service.ModelInferBytes(data, context)
    return (time.process_time() - start) / calls * 1e6


def cpu_per_evicted_call(service: InferenceService, data: bytes, calls: int, mib: int) -> float:
    """µs of this thread's CPU per call, each after `mib` MiB were written elsewhere
    (not counted): the call with cold caches, as between a server's other work."""
    context = Context()
    other = np.zeros(mib << 20, np.uint8)
    spent = 0
    for _ in range(calls):
        other += 1
        start = time.thread_time_ns()
        service.ModelInferBytes(data, context)
        spent += time.thread_time_ns() - start
    return spent / calls / 1e3


def main(args: argparse.Namespace, prefix: Path) -> int:
    if not native_plane.available():
        raise SystemExit(f"--handler needs icow._plane: {native_plane.UNAVAILABLE_REASON}")
    started = dt.datetime.now(dt.timezone.utc)
    info = machine.describe()
    pinning = pin_client()
    repo = repository(Path(tempfile.mkdtemp(prefix="icow-bench-handler-")))
    data = identity_small(1).request_bytes
    service = InferenceService(repo)
    evicted_calls = max(1, args.handler_calls // 10)  # each costs the writes before it too
    python = cpu_per_call(service, data, args.handler_calls)
    python_evicted = cpu_per_evicted_call(service, data, evicted_calls, args.handler_evict) \
        if args.handler_evict else None
    service.fast = native_plane.DirectPath(repo, 2**31 - 1)
    service.fast.refresh()
    fast = cpu_per_call(service, data, args.handler_calls)
    if service.fast.counts["served_fast"] < args.handler_calls:
        raise SystemExit("the fast path did not serve the calls: the figure would be the Python path's")
    fast_evicted = cpu_per_evicted_call(service, data, evicted_calls, args.handler_evict) \
        if args.handler_evict else None
    line = (f"ModelInfer handler, identity 1x16, in process: Python path {python:.1f} µs CPU per call, "
            f"fast path {fast:.1f} µs ({fast / python:.2f}x)")
    if args.handler_evict:
        line += (f"; after {args.handler_evict} MiB written elsewhere before each call: Python path "
                 f"{python_evicted:.1f} µs, fast path {fast_evicted:.1f} µs")
    print(f"icow bench --handler  {started:%Y-%m-%d %H:%M:%SZ}  commit {info['commit']}\n"
          f"machine: {info['cpu']}; load average {info['loadavg_start']}; {pinning.note}\n{line}")
    document = {"date": started.isoformat(timespec="seconds"), "machine": info, "pinning": pinning.note,
                "calls": args.handler_calls, "python_path_us": python, "fast_path_us": fast,
                "evict_mib": args.handler_evict, "python_path_evicted_us": python_evicted,
                "fast_path_evicted_us": fast_evicted}
    path = prefix.with_name(prefix.name + "-handler.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.with_suffix(".md").write_text(f"# icow bench --handler, {document['date']}\n\n    {info['cpu']}; commit "
                                       f"{info['commit']}; load average {info['loadavg_start']}\n\n{line}\n")
    print(f"results written to {path} and {path.with_suffix('.md').name}")
    return 0
