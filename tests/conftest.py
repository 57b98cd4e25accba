"""Fixtures: a model repository for tests and the real server on a loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import make_models  # noqa: E402
from icow._proto import inference_pb2, inference_pb2_grpc  # noqa: E402

# Session fixtures of their own files: a SeaweedFS server, the litecow 0.1.0 client's virtualenv.
pytest_plugins = ["seaweedfs", "litecow_client"]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (held open together, so none is given twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class ServerProcess:
    """A running ``icow serve`` subprocess."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    metrics_port: int = 0  # 0: metrics off
    http_port: int = 0  # 0: HTTP off

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_ready(server: ServerProcess, timeout: float = 60.0,
                channel: Callable[[str], grpc.Channel] = grpc.insecure_channel,
                metadata: Sequence[tuple[str, str]] = ()) -> None:
    deadline = time.monotonic() + timeout
    with channel(server.url) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"icow serve exited with {server.proc.returncode}:\n{server.log()}")
            try:
                if stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=1, metadata=metadata).ready:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"icow serve did not come up in {timeout}s:\n{server.log()}")


def start_server(repo: Path | str | None, *args: str, log_dir: Path, env: dict[str, str] | None = None,
                 **wait) -> ServerProcess:
    """Start ``python -m icow serve`` on ``repo`` (None: the bundled examples) and
    wait until it is ready; ``wait`` (channel, metadata) says how to ask it.
    Metrics and HTTP go to free ports unless ``args`` say otherwise (8002 and 8000 may be
    taken). A port found free can be taken before the server binds it (a client's ephemeral
    port, another test's server): then the start is tried again on new ports."""
    for attempt in range(4):
        try:
            return _start_server(repo, args, log_dir, env, wait)
        except PortTaken:
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """The server could not bind a port this fixture chose for it."""


def _start_server(repo: Path | str | None, args: Sequence[str], log_dir: Path, env: dict[str, str] | None,
                  wait: dict) -> ServerProcess:
    port, metrics_port, http_port = free_ports(3)
    if "--metrics-port" in args:
        metrics_port = int(args[args.index("--metrics-port") + 1])
    elif "--no-metrics" in args:
        metrics_port = 0
    else:
        args = (*args, "--metrics-port", str(metrics_port))
    if "--http-port" in args:
        http_port = int(args[args.index("--http-port") + 1])
    else:
        args = (*args, "--http-port", str(http_port))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "icow", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    if repo is not None:
        cmd += ["--model-repository", str(repo)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = ServerProcess(proc, port, log_path, metrics_port, http_port)
    try:
        _wait_ready(server, **wait)
    except RuntimeError as e:
        server.stop()
        if proc.returncode is not None and "Address already in use" in server.log():
            raise PortTaken(str(e)) from e
        raise
    except BaseException:
        server.stop()
        raise
    return server


def build_test_repository(repo: Path) -> Path:
    """The examples plus test-only models: every datatype, a broken file, a broken
    config, version policies."""
    shutil.copytree(ROOT / "examples" / "models", repo)
    make_models.write(make_models.identity_all_types(), repo, "dtypes")
    for datatype in (*make_models.ALL_TYPES, *make_models.BITS_TYPES):
        make_models.write(make_models.identity(datatype), repo, f"identity_{datatype}")
    broken = repo / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an onnx model")
    for version, factor in ((1, 1.0), (2, 2.0), (3, 3.0)):
        make_models.write(make_models.scale(factor), repo, "latest2", version)
        make_models.write(make_models.scale(factor), repo, "specific", version)
    (repo / "latest2" / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 2 } }\n")
    (repo / "specific" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1, 3] } }\n")
    make_models.write(make_models.scale(1.0), repo, "badconfig")
    (repo / "badconfig" / "config.pbtxt").write_text("max_batch_size: [this is not text format\n")
    return repo


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "models")


# (codec, data plane) of the protocol tests' servers. The native codec runs on both
# planes; the protobuf codec (the baseline) on the native plane, whose fast path it
# turns off, so that its requests take the way through to grpcio.
SERVER_KINDS = [("native", "native"), ("native", "grpcio"), ("protobuf", "native")]


@pytest.fixture(scope="session", params=SERVER_KINDS, ids=[f"{c}-codec-{p}-plane" for c, p in SERVER_KINDS])
def server_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Each protocol test runs once per codec and once per data plane, so they cannot drift apart."""
    return request.param


@pytest.fixture(scope="session")
def codec(server_kind: tuple[str, str]) -> str:
    return server_kind[0]


@pytest.fixture(scope="session")
def plane(server_kind: tuple[str, str]) -> str:
    return server_kind[1]


@pytest.fixture(scope="session")
def server(test_repo: Path, server_kind: tuple[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per (codec, plane) for the session, every model of the test repository loaded."""
    codec, plane = server_kind
    srv = start_server(test_repo, "--codec", codec, "--data-plane", plane, log_dir=tmp_path_factory.mktemp("logs"))
    if plane == "native":
        assert "data plane: native" in srv.log(), srv.log()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Factory for servers of a test's own, stopped when the test ends."""
    started: list[ServerProcess] = []

    def make(repo: Path | str | None, *args: str, **kwargs) -> ServerProcess:
        srv = start_server(repo, *args, log_dir=tmp_path / "logs", **kwargs)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def ops_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples plus the operations tests' models (tests/ops_helpers.py)."""
    from ops_helpers import build_ops_repository

    return build_ops_repository(tmp_path_factory.mktemp("ops") / "models")
