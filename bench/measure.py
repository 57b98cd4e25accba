"""Measuring one target on one workload: the closed-loop Python load generator,
and the /proc readings of the server around the timed window."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from icow.services import plane as native_plane

from . import procstat
from .harness import Env, Server, Target
from .workloads import Workload

# name -> "module:class"; imported when used, so a missing client library
# fails its own rows only. Baselines first: they are the denominators.
TARGETS = {
    "ort_inprocess": "bench.baselines.ort_inprocess:OrtInProcess",
    "echo_server": "bench.baselines.echo_server:EchoServer",
    "echo_server_aio": "bench.baselines.echo_server:EchoServerAio",
    "icow_protobuf": "bench.scenarios.icow_grpc:IcowProtobuf",
    "icow_native": "bench.scenarios.icow_grpc:IcowNative",
    "icow_python": "bench.scenarios.icow_grpc:IcowPython",
    "icow_tritonclient": "bench.scenarios.icow_tritonclient:IcowTritonClient",
    "icow_shm_bytes": "bench.scenarios.icow_shm:IcowShmBytes",
    "icow_shm": "bench.scenarios.icow_shm:IcowShm",
    "icow_client_bytes": "bench.scenarios.icow_shm:IcowClientBytes",
    "icow_client_shm": "bench.scenarios.icow_shm:IcowClientShm",
    # the native data plane (icow._plane; fails its rows where it was not built) and its floor
    "plane_echo": "bench.baselines.plane_server:PlaneEcho",
    "icow_plane": "bench.scenarios.icow_grpc:IcowPlane",
    # the peer: MLServer 1.7 (bench/setup_mlserver.sh), REST and gRPC
    "mlserver_rest": "bench.scenarios.mlserver:MLServerRest",
    "mlserver_grpc": "bench.scenarios.mlserver:MLServerGrpc",
    # icow's HTTP/REST binding (issue 21): binary tensors, and JSON
    "icow_http": "bench.scenarios.icow_http:IcowHttp",
    "icow_http_json": "bench.scenarios.icow_http:IcowHttpJson",
    "http_echo": "bench.baselines.http_echo:HttpEcho",
}
# The native plane and its floor join the defaults where icow._plane was built: it is
# what `icow serve` runs by default.
DEFAULT_TARGETS = ["ort_inprocess", "echo_server", "icow_protobuf", "icow_native",
                   *(["plane_echo", "icow_plane"] if native_plane.available() else [])]
PEERS = ["mlserver_rest", "mlserver_grpc"]


def default_targets(client: str) -> list[str]:
    """The set run without --scenarios: DEFAULT_TARGETS, and with perf_analyzer the
    MLServer peer too where bench/setup_mlserver.sh has made its venv."""
    from .scenarios import mlserver

    return DEFAULT_TARGETS + (PEERS if client == "perf_analyzer" and mlserver.installed() else [])


FLOORS = ("echo_server", "echo_server_aio", "plane_echo", "http_echo")  # transport floors: no ratio of their own


def floor_of(target: str) -> str:
    """The echo of ``target``'s own gRPC stack: × echo's denominator."""
    if target.startswith("icow_http"):
        return "http_echo"
    return "plane_echo" if target == "icow_plane" else "echo_server"


@dataclass
class Result:
    workload: str
    target: str
    client: str  # "python" (bench's own load generator), "perf_analyzer" or "in-process"
    concurrency: int
    calls: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float | None = None
    mb_s: float = 0.0
    server_cpu_us: float | None = None  # per request; for ort_inprocess: this process's CPU per call
    server_peak_rss_mib: float | None = None
    peak_rss_scope: str | None = None  # "window" (VmHWM reset before it) or "lifetime"
    client_cpu_pct: float | None = None  # the load generator's CPU over the window, % of one CPU
    x_echo: float | None = None  # req/s ÷ the req/s of its stack's echo (floor_of), same workload
    x_protobuf: float | None = None  # req/s ÷ icow_protobuf's req/s, same workload
    p50_vs_echo_us: float | None = None  # p50 − its stack's echo's p50
    error: str | None = None
    rounds: int = 1  # rounds this row is the median of (--rounds)
    failed_rounds: int = 0  # rounds left out of it because they failed
    x_echo_range: tuple[float, float] | None = None  # lowest and highest x_echo of the rounds


def load_target(name: str) -> Target:
    module, cls = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def describe_error(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"gRPC {e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


# -- the server's side of a window ------------------------------------------

class ServerWindow:
    """CPU time and peak RSS of a server process, and of its child processes
    (found at ``start``), across a timed window."""

    def __init__(self, server: Server | None) -> None:
        self.pids = [server.pid] if server is not None else []
        self.cpu_start: float | None = None
        self.cpu_seconds: float | None = None
        self.peak_rss: int | None = None
        self.scope = "window"

    def start(self) -> None:
        if not self.pids:
            return
        self.pids = [self.pids[0], *procstat.descendants(self.pids[0])]
        # Reset first: the one server saw every earlier workload (12 MiB ones too),
        # and VmHWM would otherwise be the peak of its whole life.
        if not all([procstat.reset_peak_rss(pid) for pid in self.pids]):
            self.scope = "lifetime"
        self.cpu_start = _sum(procstat.cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        if not self.pids or self.cpu_start is None:
            return
        end = _sum(procstat.cpu_seconds(pid) for pid in self.pids)
        self.cpu_seconds = None if end is None else end - self.cpu_start
        # With children: the sum of each process's peak, at least the peak of their sum (peaks may not coincide).
        self.peak_rss = _sum(procstat.peak_rss_bytes(pid) for pid in self.pids)

    def fill(self, result: Result, requests: int) -> None:
        if self.cpu_seconds is not None and requests > 0:
            result.server_cpu_us = self.cpu_seconds / requests * 1e6
        if self.peak_rss is not None:
            result.server_peak_rss_mib = self.peak_rss / (1 << 20)
            result.peak_rss_scope = self.scope


def _sum(values) -> float | None:
    """The sum, or None where any reading failed (a process gone: no figure beats a wrong one)."""
    values = list(values)
    return None if None in values else sum(values)


# -- the Python load generator ------------------------------------------------

@dataclass
class Phase:
    latencies_ns: np.ndarray
    seconds: float
    cpu_seconds: float  # this process's CPU (every thread) over the phase
    error: str | None


def run_phase(call: Callable[[], None], threads: int, seconds: float) -> Phase:
    """``threads`` closed loops of ``call`` for ``seconds``; stops all at the first error."""
    barrier = threading.Barrier(threads + 1)  # +1: this thread starts the CPU clock with them
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
    cpu0 = time.process_time()  # process-wide: all client threads, gRPC's included
    barrier.wait()
    for w in workers:
        w.join()
    cpu = time.process_time() - cpu0
    wall = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9
    return Phase(np.fromiter((x for lat in latencies for x in lat), dtype=np.int64), wall, cpu,
                 errors[0] if errors else None)


def measure(name: str, workload: Workload, env: Env, duration: float, warmup: float) -> Result:
    """Set up ``name`` for ``workload``, warm it, time it with the Python client, tear it down."""
    result = Result(workload.name, name, "python", workload.concurrency)
    target = setup_target(name, workload, env, result)
    if target is None:
        return result
    if target.server is None:
        result.client = "in-process"
    window = ServerWindow(target.server)
    try:
        phase = run_phase(target.call, workload.concurrency, warmup)
        if phase.error is None:
            window.start()
            phase = run_phase(target.call, workload.concurrency, duration)
            window.stop()
    finally:
        target.teardown()
    if phase.error is not None:
        result.error = phase.error
        return result
    fill(result, phase, workload)
    window.fill(result, result.calls)
    if target.server is None:  # in-process: the process's own CPU is the compute's
        result.server_cpu_us = phase.cpu_seconds / max(result.calls, 1) * 1e6
    return result


def setup_target(name: str, workload: Workload, env: Env, result: Result) -> Target | None:
    """The target, set up and its answer checked; None (and result.error) when that failed."""
    try:
        target = load_target(name)
    except ImportError as e:
        result.error = f"setup: {describe_error(e)}"
        return None
    try:
        target.setup(workload, env)
        env.repin_client(f"{name} (client)")
        return target
    except Exception as e:
        result.error = f"setup: {describe_error(e)}"
        with contextlib.suppress(Exception):  # close what setup opened before it failed
            target.teardown()
        return None


def fill(result: Result, phase: Phase, workload: Workload) -> None:
    lat_us = phase.latencies_ns / 1e3
    result.calls = int(lat_us.size)
    result.seconds = round(phase.seconds, 3)
    result.rps = result.calls / phase.seconds
    result.p50_us, result.p99_us = (float(x) for x in np.percentile(lat_us, [50, 99]))
    result.mean_us = float(lat_us.mean())
    result.mb_s = workload.payload_bytes * result.rps / 1e6
    result.client_cpu_pct = 100 * phase.cpu_seconds / phase.seconds


def compare(results: list[Result]) -> None:
    """Fill the ratios to the echo of each target's own stack and to icow_protobuf,
    from the same workload."""
    by_key = {(r.workload, r.target): r for r in results if r.error is None}
    for r in by_key.values():
        if r.client == "in-process":
            continue  # no transport: not comparable with a server
        echo = by_key.get((r.workload, floor_of(r.target)))
        proto = by_key.get((r.workload, "icow_protobuf"))
        if echo is not None and r.target not in FLOORS and echo.rps > 0:
            r.x_echo = r.rps / echo.rps
            r.p50_vs_echo_us = r.p50_us - echo.p50_us
        if proto is not None and r.target.startswith("icow_") and r.target != "icow_protobuf" and proto.rps > 0:
            r.x_protobuf = r.rps / proto.rps
