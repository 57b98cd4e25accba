"""What scenarios and baselines share: the Target interface, CPU pinning,
server subprocesses and the environment (model repository, reference outputs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from .models import ROOT, build_repository
from .workloads import Workload

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE = 256 << 20
# grpcio refuses messages over 4 MiB unless told otherwise, on both ends.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                   ("grpc.max_receive_message_length", MAX_MESSAGE)]


class Target(Protocol):
    """A scenario or a baseline. ``call`` must be safe from many threads at once.

    ``server`` is set by ``setup`` to the server process the target talks to (its
    CPU time and peak RSS are reported), or None for an in-process target."""

    name: str
    description: str
    server: Server | None

    def setup(self, workload: Workload, env: Env) -> None: ...

    def call(self) -> None: ...

    def teardown(self) -> None: ...


class BenchError(RuntimeError):
    """A target could not be set up or gave a wrong answer."""


# -- pinning ------------------------------------------------------------------

@dataclass
class Pinning:
    server_cpu: int | None
    client_cpu: int | None
    note: str


def pin_client() -> Pinning:
    """Pin this process (every thread it has so far) to the second allowed CPU
    and reserve the first for servers; threads made later inherit the mask."""
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(None, None, "NOT PINNED: this platform has no sched_setaffinity")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return Pinning(None, None, f"NOT PINNED: only {len(allowed)} CPU allowed; client and server share it")
    server, client = allowed[0], allowed[1]
    pin_threads("self", client)
    return Pinning(server, client, f"server on CPU {server}, client on CPU {client}")


def pin_threads(pid: int | str, cpu: int) -> list[str]:
    """Put every thread of ``pid`` on ``cpu``; describe those that were elsewhere.

    Needed after start-up as well: onnxruntime, left to choose its intra-op thread
    count, sets its pool threads' affinity itself, ignoring the process's mask."""
    moved = []
    for tid in _thread_ids(pid):
        try:
            before = os.sched_getaffinity(tid)
            if before != {cpu}:
                os.sched_setaffinity(tid, {cpu})
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                moved.append(f"thread {tid} ({comm}) was on CPUs {sorted(before)}")
        except OSError:  # a thread that ended meanwhile
            pass
    return moved


def _thread_ids(pid: int | str) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return [0] if pid == "self" else [int(pid)]
    return [int(t.name) for t in tasks.iterdir()]


# Runs before the server's interpreter starts, so every thread it makes
# (gRPC pollers, ONNX Runtime's pool) inherits the one-CPU mask.
_PIN_EXEC = ("import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
             "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


# -- server subprocesses ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server subprocess (``python <args>``), pinned when ``cpu`` is given;
    ``python`` is another venv's interpreter for a server that cannot share ours (MLServer)."""

    name: str
    args: Callable[[int], list[str]]  # the command line for a port
    probe: Callable[[grpc.Channel], bool]  # True once the server answers as ready
    log_path: Path
    cpu: int | None
    python: str = sys.executable
    port: int = 0
    proc: subprocess.Popen | None = None
    affinity: list[int] = field(default_factory=list)  # CPUs its threads may use, once started
    escaped: list[str] = field(default_factory=list)  # threads found off ``cpu`` and moved back

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        pin = [] if self.cpu is None else ["-c", _PIN_EXEC, str(self.cpu)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([self.python, *pin, *self.args(self.port)], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if self.cpu is not None:
            self.escaped = pin_threads(self.proc.pid, self.cpu)
        self.affinity = _process_cpus(self.proc.pid)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if self.probe(channel):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise BenchError(f"{self.name} was not ready after {timeout:.0f}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def anomalies(self) -> list[str]:
        """Log lines that say something went wrong (a clean run logs none)."""
        marks = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Exception")
        return [line for line in self.log().splitlines() if any(m in line for m in marks)]


def _process_cpus(pid: int) -> list[int]:
    """The CPUs any thread of ``pid`` may run on: proof that pinning held."""
    cpus: set[int] = set()
    for tid in _thread_ids(pid):
        try:
            cpus |= os.sched_getaffinity(tid)
        except OSError:  # a thread that ended meanwhile
            pass
    return sorted(cpus)


# -- the environment ----------------------------------------------------------

class Env:
    """A temporary model repository, the servers (started once, shared by every
    workload) and the reference outputs that targets check their answers against."""

    def __init__(self, pinning: Pinning, keep: bool = False, device: str = "cpu") -> None:
        self.pinning = pinning
        self.keep = keep
        self.device = device  # where icow and the in-process baseline run the models: cpu, cuda[:N]
        self.dir = Path(tempfile.mkdtemp(prefix="icow-bench-"))
        self.repo = build_repository(self.dir / "models")
        self.servers: dict[str, Server] = {}
        self._failed: dict[str, BenchError] = {}
        self._references: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self.notes: list[str] = []  # what the reader of the results must know

    def repin_client(self, who: str) -> None:
        """Bring back client threads that something (onnxruntime) moved off the client CPU."""
        if self.pinning.client_cpu is not None:
            self._note_moved(who, pin_threads("self", self.pinning.client_cpu), self.pinning.client_cpu)

    def _note_moved(self, who: str, moved: list[str], cpu: int | None) -> None:
        if moved:
            self.notes.append(f"{who}: {len(moved)} thread(s) had left the pinned CPU and were moved back to "
                              f"CPU {cpu}: {'; '.join(moved)}")

    def model_path(self, model: str) -> Path:
        return self.repo / model / "1" / "model.onnx"

    def server(self, name: str, args: Callable[[int], list[str]], probe: Callable[[grpc.Channel], bool],
               python: str = sys.executable) -> Server:
        """The running server ``name``, started on first use; one that failed to
        start fails every later row at once (it would fail the same way)."""
        if name in self._failed:
            raise self._failed[name]
        if name not in self.servers:
            server = Server(name, args, probe, self.dir / f"{name}.log", self.pinning.server_cpu, python)
            try:
                server.start()
            except BenchError as e:
                self._failed[name] = e
                raise
            self.servers[name] = server
            self._note_moved(f"{name} server", server.escaped, server.cpu)
        return self.servers[name]

    def reference(self, workload: Workload) -> np.ndarray:
        """The output onnxruntime gives in this process for the workload's input."""
        key = (workload.model, workload.shape)
        if key not in self._references:
            import onnxruntime as ort

            session = ort.InferenceSession(str(self.model_path(workload.model)), providers=["CPUExecutionProvider"])
            self.repin_client("reference session (client)")
            self._references[key] = session.run([workload.output], {workload.input: workload.array})[0]
        return self._references[key]

    def check(self, target: str, workload: Workload, got: np.ndarray) -> None:
        """Raise unless ``got`` is the reference output."""
        want = self.reference(workload)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            raise BenchError(f"{target} answered {workload.name} wrongly: shape {got.shape}, "
                             f"want {want.shape}; max abs diff "
                             f"{np.abs(got - want).max() if got.shape == want.shape else 'n/a'}")

    def close(self) -> dict[str, list[str]]:
        """Stop the servers; return their log anomalies, by server."""
        for server in self.servers.values():
            server.stop()
        anomalies = {name: s.anomalies() for name, s in self.servers.items()}
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return anomalies
