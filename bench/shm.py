"""``python -m bench --shm``: issue 9's benchmark. Identity FP32 at 12 MiB and
64 MiB, concurrency 1 and 4, through system shared memory and through gRPC bytes
on one server (``icow serve --allow-client-shm``), and this machine's memcpy
bandwidth measured in the same run. Targets: shm ≥ 10x the bytes path's req/s at
both sizes; tensor bytes (in + out) per second through shm ≥ 0.5x memcpy at 64 MiB."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import machine
from .harness import Env, pin_client
from .measure import Result, measure
from .workloads import identity_large

TARGETS = ["icow_shm_bytes", "icow_shm", "icow_client_bytes", "icow_client_shm"]
SPEEDUP = 10.0  # shm req/s over bytes req/s
MEMCPY_SHARE = 0.5  # shm tensor bytes/s over memcpy bytes/s, at 64 MiB


def memcpy_bandwidth(nbytes: int = 64 << 20, seconds: float = 2.0) -> float:
    """Bytes per second that one thread of this process copies, 64 MiB at a time (median)."""
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return nbytes / float(np.median(times))


def main(args: argparse.Namespace, prefix: Path) -> int:
    started = dt.datetime.now(dt.timezone.utc)
    info = machine.describe()
    pinning = pin_client()
    warning = machine.load_warning(info["loadavg_start"])
    print(f"icow bench --shm  {started:%Y-%m-%d %H:%M:%SZ}  commit {info['commit']}\n"
          f"machine: {info['cpu']}, {info['cores']} cores; load average {info['loadavg_start']}\n"
          f"pinning: {pinning.note}\nmethod: {args.duration:g}s per target after {args.warmup:g}s warm-up")
    if warning:
        print(warning)
    workloads = [identity_large(c, mib) for mib in (12, 64) for c in (1, 4)]
    env = Env(pinning, keep=args.keep)
    results: list[Result] = []
    memcpy = []
    try:
        for workload in workloads:
            memcpy.append(memcpy_bandwidth())  # between rows, on the client CPU: the same moment's machine
            for name in TARGETS:
                r = measure(name, workload, env, args.duration, args.warmup)
                results.append(r)
                print(f"  {r.workload:<20} {r.target:<18} "
                      + (f"FAILED {r.error}" if r.error else f"{r.rps:>8.1f} req/s {r.mb_s:>8.0f} MB/s"), flush=True)
    finally:
        anomalies = env.close()
    bandwidth = float(np.median(memcpy))
    table, checks = report(results, bandwidth)
    end_load = machine.load()
    print(f"\nmemcpy: {bandwidth / 1e6:.0f} MB/s (median of {len(memcpy)} measurements, "
          f"{min(memcpy) / 1e6:.0f}–{max(memcpy) / 1e6:.0f})\n\n{table}\n\n" + "\n".join(checks))
    print(f"load average: start {info['loadavg_start']}, end {end_load}")
    document = {"date": started.isoformat(timespec="seconds"), "machine": {**info, "loadavg_end": end_load},
                "pinning": pinning.note, "duration_s": args.duration, "warmup_s": args.warmup,
                "memcpy_bytes_per_s": memcpy, "results": [asdict(r) for r in results], "checks": checks,
                "server_log_anomalies": anomalies, "notes": env.notes, "warning": warning}
    path = prefix.with_name(prefix.name + "-shm.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.with_suffix(".md").write_text(
        f"# icow bench --shm, {document['date']}\n\n    {info['cpu']}; commit {info['commit']}; load average "
        f"{info['loadavg_start']} → {end_load}\n    {pinning.note}\n    memcpy {bandwidth / 1e6:.0f} MB/s\n\n"
        f"```\n{table}\n```\n\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    print(f"results written to {path} and {path.with_suffix('.md').name}")
    return 1 if any(r.error for r in results) or any("NOT met" in c for c in checks) else 0


def report(results: list[Result], memcpy: float) -> tuple[str, list[str]]:
    """The table (ratios within the run) and the issue's checks."""
    by = {(r.workload, r.target): r for r in results if r.error is None}
    lines = [f"{'workload':<20} {'target':<18} {'req/s':>8} {'MB/s':>7} {'x bytes':>8} {'/memcpy':>8} "
             f"{'srv CPU ms/req':>14}"]
    for r in results:
        if r.error:
            lines.append(f"{r.workload:<20} {r.target:<18} FAILED {r.error}")
            continue
        base = by.get((r.workload, r.target.replace("shm", "bytes") if r.target.endswith("shm") else ""))
        ratio = f"{r.rps / base.rps:8.1f}" if base and base is not r else f"{'':>8}"
        cpu = f"{r.server_cpu_us / 1e3:14.1f}" if r.server_cpu_us else f"{'':>14}"
        lines.append(f"{r.workload:<20} {r.target:<18} {r.rps:8.1f} {r.mb_s:7.0f} {ratio} "
                     f"{r.mb_s * 1e6 / memcpy:8.2f} {cpu}")
    checks = []
    for mib in (12, 64):
        for c in (1, 4):
            w = f"identity-{mib}MiB-c{c}"
            shm, raw = by.get((w, "icow_shm")), by.get((w, "icow_shm_bytes"))
            if shm and raw:
                x = shm.rps / raw.rps
                checks.append(f"{w}: shm {x:.1f}x the bytes path's req/s (target ≥ {SPEEDUP:g}x: "
                              f"{'met' if x >= SPEEDUP else 'NOT met'})")
            if mib == 64 and shm:
                share = shm.mb_s * 1e6 / memcpy
                checks.append(f"{w}: shm tensor bytes {shm.mb_s:.0f} MB/s = {share:.2f} x memcpy "
                              f"(target ≥ {MEMCPY_SHARE}: {'met' if share >= MEMCPY_SHARE else 'NOT met'})")
    return "\n".join(lines), checks
