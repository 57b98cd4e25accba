"""The icow command line."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import tritonclient.grpc as tc

from helpers import infer_input
from icow import __version__
from icow.services import plane as native_plane


def icow(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icow", *args], capture_output=True, text=True, timeout=timeout)


def test_version():
    result = icow("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"icow {__version__}"


def test_help_names_the_commands_and_options():
    assert "serve" in icow("--help").stdout
    text = icow("serve", "--help").stdout
    for option in ("--model-repository", "--host", "--port", "--model-control-mode", "--load-model", "8001"):
        assert option in text


def test_serves_the_bundled_examples_by_default(make_server):
    server = make_server(None)
    client = tc.InferenceServerClient(server.url)
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(client.infer("scale", [infer_input("x", x, "FP32")]).as_numpy("y"), x * 3)
    log = server.log()
    assert f"listening on {server.url}" in log
    plane = "native" if native_plane.available() else "grpcio"
    ready = "ready: 5 model version(s): mixed:1, mlp:1, scale:1, scale:2, strings:1"
    assert f"{ready}; serving on the {plane} data plane" in log


def test_missing_repository_is_an_error(tmp_path):
    result = icow("serve", "--model-repository", str(tmp_path / "nope"))
    assert result.returncode == 1 and "is not a directory" in result.stderr


def test_port_in_use_is_an_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = icow("serve", "--model-repository", str(tmp_path), "--port", str(port))
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_two_model_repositories_are_refused_never_the_last_one_silently(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    result = icow("serve", "--model-repository", str(tmp_path / "a"), "--model-repository", str(tmp_path / "b"))
    assert result.returncode == 2
    assert f"--model-repository is given 2 times ({tmp_path / 'a'}, {tmp_path / 'b'})" in result.stderr
    assert "icow serves one repository" in result.stderr


def test_load_model_needs_explicit_mode(tmp_path):
    result = icow("serve", "--model-repository", str(tmp_path), "--load-model", "mlp")
    assert result.returncode == 2 and "--model-control-mode explicit" in result.stderr


def test_stops_cleanly_on_sigterm(make_server, tmp_path):
    server = make_server(tmp_path)
    server.proc.terminate()
    assert server.proc.wait(timeout=20) == 0
    assert "received SIGTERM" in server.log() and "stopped" in server.log()


def test_second_server_on_the_same_port_fails(make_server, tmp_path):
    first = make_server(tmp_path)
    result = icow("serve", "--model-repository", str(tmp_path), "--port", str(first.port))
    assert result.returncode == 1 and "cannot listen" in result.stderr
