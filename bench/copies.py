"""``python -m bench --copies``: bytes each server copies per 12 MiB request,
counted by valgrind's DHAT in copy mode (``--tool=dhat --mode=copy``), which
records every memcpy/memmove/strcpy-family call with its call stack and size.

Each server (echo, icow --codec native, icow --codec protobuf) runs twice under
valgrind, answering ``LOW`` and then ``HIGH`` identity 12 MiB requests; the
difference of the two totals divided by HIGH − LOW is what one request costs,
start-up copies (module loading, model weights) cancelling out. Each copy is
put to the library that called the copy routine: the first frame of its stack
that lies in a shared object other than libc/libpython/valgrind's. Not counted:
the kernel's copies (socket buffer → gRPC's slices and back), which every
server of this stack pays alike, and copies made by inlined loops rather than a
call to memcpy (none of significant size on this path)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from . import machine
from .baselines.echo_server import _probe as echo_probe
from .baselines.plane_server import _probe as plane_probe
from .harness import CHANNEL_OPTIONS, MODEL_INFER, BenchError, free_port
from .models import ROOT, build_repository
from .scenarios import _ready as icow_probe
from .scenarios.icow_grpc import output
from .workloads import identity_large

LOW, HIGH = 1, 4
# (path fragment of the calling shared object, the name it is reported under); first match wins.
LIBRARIES = (("grpc/_cython", "grpcio"), ("icow/_plane", "icow _plane"), ("libgrpc", "gRPC C++ (libgrpc)"),
             ("onnxruntime", "onnxruntime"), ("icow/_wire", "icow _wire"), ("numpy", "numpy"),
             ("google/_upb", "protobuf (upb)"), ("protobuf", "protobuf"))
NOT_CALLERS = ("vgpreload", "libc.so", "libc-", "libpython", "ld-linux", "libstdc++")


SERVERS = ["echo", "icow-native", "icow-protobuf"]
PLANE_SERVERS = ["plane-echo", "plane-icow"]  # the native data plane (icow._plane), with --copies-servers


def server_args(name: str, port: int, repo: Path) -> list[str]:
    if name == "echo":
        return ["-m", "bench.baselines.echo_server", "--port", str(port), "--model-repository", str(repo)]
    if name == "plane-echo":
        return ["-m", "bench.baselines.plane_server", "--port", str(port), "--model-repository", str(repo)]
    codec, plane = ("native", "native") if name == "plane-icow" else (name.removeprefix("icow-"), "grpcio")
    return ["-m", "icow", "serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--port", str(port),
            "--codec", codec, "--data-plane", plane,
            "--no-metrics", "--http-port", "0"]  # side by side: they cannot all have metrics on 8002, HTTP on 8000


def count_run(name: str, requests: int, repo: Path, out: Path) -> Path:
    """Run server ``name`` under DHAT, send ``requests`` 12 MiB requests, stop it;
    the path of DHAT's JSON output."""
    port, dhat = free_port(), out / f"{name}-{requests}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = ["valgrind", "--tool=dhat", "--mode=copy", "--num-callers=24", f"--dhat-out-file={dhat}",
           sys.executable, *server_args(name, port, repo)]
    with open(out / f"{name}-{requests}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _send(name, port, requests, proc)
    finally:
        proc.send_signal(signal.SIGINT)  # both servers stop cleanly on SIGINT: DHAT then writes its file
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not dhat.exists():
        raise BenchError(f"{name}: DHAT wrote no {dhat.name}; see {out / f'{name}-{requests}.log'}")
    return dhat


def _send(name: str, port: int, requests: int, proc: subprocess.Popen) -> None:
    workload = identity_large(1)
    probe = echo_probe if name == "echo" else plane_probe if name == "plane-echo" else icow_probe
    deadline = time.monotonic() + 600  # python + onnxruntime start slowly under valgrind
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode} under valgrind")
            try:
                if probe(channel):
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} was not ready under valgrind after 600 s")
            time.sleep(0.5)
        stub = channel.unary_unary(MODEL_INFER)
        for _ in range(requests):
            answer = stub(workload.request_bytes, timeout=300)
            ok = answer == workload.request_bytes if name in ("echo", "plane-echo") else \
                output(answer, workload.output).tobytes() == workload.array.tobytes()
            if not ok:
                raise BenchError(f"{name} answered wrongly under valgrind")


def by_library(dhat: Path) -> dict[str, int]:
    """Bytes copied, by the library that called the copy routine."""
    data = json.loads(dhat.read_text())
    frames = data["ftbl"]
    totals: dict[str, int] = {}
    for pp in data["pps"]:
        caller = _caller([frames[f] for f in pp["fs"]])
        totals[caller] = totals.get(caller, 0) + pp["tb"]
    return totals


def _caller(stack: list[str]) -> str:
    for frame in stack[1:]:  # frame 0 is the copy routine itself
        if "(in /" not in frame or any(x in frame for x in NOT_CALLERS):
            continue
        for fragment, library in LIBRARIES:
            if fragment in frame:
                return library
        return "other: " + frame.rsplit("/", 1)[-1].rstrip(")")
    return "python"  # only interpreter frames: a copy made by CPython itself


def per_request(low: dict[str, int], high: dict[str, int]) -> dict[str, float]:
    keys = set(low) | set(high)
    return {k: (high.get(k, 0) - low.get(k, 0)) / (HIGH - LOW) for k in keys}


def main(args: argparse.Namespace, prefix: Path) -> int:
    if shutil.which("valgrind") is None:
        print("--copies needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    started = dt.datetime.now(dt.timezone.utc)
    tensor = identity_large(1).tensor_bytes
    work = Path(tempfile.mkdtemp(prefix="icow-bench-copies-"))
    repo = build_repository(work / "models")
    servers = args.copies_servers.split(",") if args.copies_servers else SERVERS
    unknown = set(servers) - set(SERVERS + PLANE_SERVERS)
    if unknown:
        print(f"--copies-servers: unknown {', '.join(sorted(unknown))}; known: {', '.join(SERVERS + PLANE_SERVERS)}",
              file=sys.stderr)
        return 1
    print(f"counting copies per {tensor / (1 << 20):.0f} MiB identity request with valgrind DHAT "
          f"({LOW} and {HIGH} requests per server, {2 * len(servers)} runs side by side; minutes)", flush=True)
    with ThreadPoolExecutor(max_workers=2 * len(servers)) as pool:
        runs = {(s, n): pool.submit(count_run, s, n, repo, work) for s in servers for n in (LOW, HIGH)}
        try:
            counted = {s: per_request(by_library(runs[s, LOW].result()), by_library(runs[s, HIGH].result()))
                       for s in servers}
        except BenchError as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
    text = table(counted, tensor)
    print(text)
    document = {"date": started.isoformat(timespec="seconds"), "machine": machine.describe(),
                "method": __doc__, "tensor_bytes": tensor, "requests": [LOW, HIGH],
                "bytes_copied_per_request": counted}
    path = prefix.with_name(prefix.name + "-copies.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.with_suffix(".md").write_text(f"# icow bench --copies, {document['date']}\n\n```\n{text}\n```\n")
    print(f"results written to {path} and {path.with_suffix('.md').name}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"DHAT files and logs kept in {work}")
    return 0


def table(counted: dict[str, dict[str, float]], tensor: int) -> str:
    """Per server: bytes copied per request by library, in MiB and in tensor sizes."""
    lines = [f"bytes copied per request (user space; tensor = {tensor / (1 << 20):.0f} MiB)"]
    for server, libs in counted.items():
        total = sum(libs.values())
        lines.append(f"  {server:<14} total {total / (1 << 20):8.1f} MiB = {total / tensor:5.2f} × tensor")
        for lib, b in sorted(libs.items(), key=lambda kv: -kv[1]):
            if abs(b) >= 0.01 * tensor:  # below 1 % of the tensor: headers, names, noise
                lines.append(f"      {lib:<22} {b / (1 << 20):8.1f} MiB = {b / tensor:5.2f} ×")
    return "\n".join(lines)
