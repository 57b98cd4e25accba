"""``python -m bench --leak``: the soak. The icow server (native codec, on the
``--leak-plane``: native by default, as ``icow serve`` runs) answers
identity 1×16 requests from 8 client threads; its RSS is read after every
``first`` requests up to ``last`` (default 10k and 100k). A leak of even a few
bytes per request grows RSS linearly with the count; the target is RSS(last)
within 5 % of RSS(first). The first block doubles as the warm-up: allocator
pools, gRPC's buffers and ONNX Runtime's arena have grown by then."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import machine, procstat
from .harness import Env, pin_client
from .measure import describe_error
from .scenarios.icow_grpc import IcowGrpc, IcowNative, IcowPlane
from .workloads import identity_small

LIMIT = 1.05  # RSS(last) / RSS(first)
THREADS = 8


def run_count(call: Callable[[], None], threads: int, count: int) -> str | None:
    """``count`` calls of ``call`` shared by ``threads`` closed loops; the first error, if any."""
    tickets = itertools.count()  # next() is atomic under the GIL
    errors: list[str] = []

    def loop() -> None:
        try:
            while not errors and next(tickets) < count:
                call()
        except Exception as e:
            errors.append(describe_error(e))

    workers = [threading.Thread(target=loop, name=f"bench-soak-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors[0] if errors else None


def soak(target: IcowGrpc, first: int, last: int) -> tuple[list[dict], str | None]:
    """RSS samples after every ``first`` requests up to ``last``."""
    samples, done, t0 = [], 0, time.perf_counter()
    pid = target.server.pid
    for mark in range(first, last + 1, first):
        error = run_count(target.call, THREADS, mark - done)
        if error:
            return samples, error
        done = mark
        samples.append({"requests": mark, "rss_mib": procstat.rss_bytes(pid) / (1 << 20),
                        "peak_rss_mib": procstat.peak_rss_bytes(pid) / (1 << 20),
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {mark:>9,} requests  RSS {samples[-1]['rss_mib']:8.1f} MiB  ({samples[-1]['seconds']} s)",
              flush=True)
    return samples, None


def main(args: argparse.Namespace, prefix: Path) -> int:
    first, last = (int(x) for x in args.leak_requests.split(","))
    if not 0 < first < last:
        raise SystemExit("--leak-requests needs FIRST,LAST with 0 < FIRST < LAST")
    started = dt.datetime.now(dt.timezone.utc)
    info = machine.describe()
    pinning = pin_client()
    workload = identity_small(THREADS)
    print(f"icow bench --leak  {started:%Y-%m-%d %H:%M:%SZ}  commit {info['commit']}\n"
          f"machine: {info['cpu']}, {info['cores']} cores; load average {info['loadavg_start']}\n"
          f"pinning: {pinning.note}\n"
          f"icow serve --codec native --data-plane {args.leak_plane}, {workload.name}: {THREADS} threads, "
          f"RSS (VmRSS) every {first:,} requests")
    env = Env(pinning, keep=args.keep)
    target = IcowPlane() if args.leak_plane == "native" else IcowNative()
    try:
        target.setup(workload, env)
        samples, error = soak(target, first, last)
        target.teardown()
    finally:
        anomalies = env.close()
    verdict = _verdict(samples, first, last, error)
    print(verdict)
    document = {"date": started.isoformat(timespec="seconds"), "machine": {**info, "loadavg_end": machine.load()},
                "pinning": pinning.note, "data_plane": args.leak_plane,
                "workload": workload.name, "threads": THREADS, "samples": samples,
                "limit_ratio": LIMIT, "verdict": verdict, "error": error, "server_log_anomalies": anomalies}
    path = prefix.with_name(prefix.name + "-leak.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    rows = "\n".join(f"| {s['requests']:,} | {s['rss_mib']:.1f} | {s['peak_rss_mib']:.1f} | {s['seconds']} |"
                     for s in samples)
    path.with_suffix(".md").write_text(
        f"# icow bench --leak, {document['date']}\n\n    {info['cpu']}; commit {info['commit']}; "
        f"load average {info['loadavg_start']} → {document['machine']['loadavg_end']}\n    {pinning.note}\n\n"
        f"| requests | RSS MiB | peak RSS MiB | s |\n|--:|--:|--:|--:|\n{rows}\n\n{verdict}\n")
    print(f"results written to {path} and {path.with_suffix('.md').name}")
    return 0 if error is None and "NOT" not in verdict else 1


def _verdict(samples: list[dict], first: int, last: int, error: str | None) -> str:
    if error or len(samples) < 2:
        return f"soak FAILED: {error or 'too few samples'}"
    a, b = samples[0]["rss_mib"], samples[-1]["rss_mib"]
    ratio = b / a
    met = "met" if ratio <= LIMIT else "NOT met"
    return (f"RSS after {first:,}: {a:.1f} MiB; after {last:,}: {b:.1f} MiB; ratio {ratio:.3f} "
            f"(target ≤ {LIMIT:.2f}: {met})")
