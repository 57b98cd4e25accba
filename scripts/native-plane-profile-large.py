"""Server CPU per large identity call (12 MiB, or 64 MiB with --workload), and a `perf
record -g` profile, of icow on the native plane (``plane``) or on grpcio (``grpcio``):
docs/native-plane.md.

The server runs on CPU 0, this client on CPU 1, for 6 s at concurrency 1. ``--reuse-pages``
starts the server with glibc's mmap and trim thresholds at 1 GiB, so large buffers reuse
pages instead of faulting in fresh ones.

    python scripts/native-plane-profile-12mib.py plane|grpcio [--reuse-pages] [--workload identity-64MiB-c1]
    perf report -i /tmp/icow-plane-profile-plane.data --no-children --sort dso
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import CHANNEL_OPTIONS, MODEL_INFER, free_port  # noqa: E402
from bench.models import build_repository  # noqa: E402
from bench.workloads import all_workloads  # noqa: E402


def cpu_ticks(pid: int) -> int:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of every thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plane", choices=["plane", "grpcio"])
    parser.add_argument("--reuse-pages", action="store_true")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--workload", default="identity-12MiB-c1")
    args = parser.parse_args()

    workload = {w.name: w for w in all_workloads()}[args.workload]
    repo = build_repository(pathlib.Path(tempfile.mkdtemp()) / "models")
    port = free_port()
    server = ["-m", "icow", "serve", "--no-metrics", "--http-port", "0", "--host", "127.0.0.1", "--port", str(port),
              "--model-repository", str(repo), "--data-plane", "native" if args.plane == "plane" else "grpcio"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.reuse_pages:
        env.update(MALLOC_MMAP_THRESHOLD_="1073741824", MALLOC_TRIM_THRESHOLD_="1073741824")
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, *server], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.sched_setaffinity(0, {1})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            infer = channel.unary_unary(MODEL_INFER)
            for _ in range(300):
                try:
                    infer(workload.request_bytes, timeout=5)
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
            for _ in range(5):
                infer(workload.request_bytes)
            out = f"/tmp/icow-plane-profile-{args.plane}.data"
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-o", out, "-p", str(proc.pid), "--",
                                     "sleep", str(args.seconds)])
            start, before, calls = time.monotonic(), cpu_ticks(proc.pid), 0
            while time.monotonic() - start < args.seconds:
                infer(workload.request_bytes)
                calls += 1
            used = cpu_ticks(proc.pid) - before
            perf.wait()
        ms = used / os.sysconf("SC_CLK_TCK") * 1000 / calls
        print(f"{args.plane}{' (pages reused)' if args.reuse_pages else ''}: {calls} calls, "
              f"{ms:.1f} ms server CPU per call; profile in {out}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
