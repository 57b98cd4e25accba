"""ONNX Runtime's telemetry store: the server keeps none under $HOME, and serves where
$HOME cannot be written (a read-only root filesystem, as in deploy/kubernetes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

from helpers import infer_input


@pytest.fixture(autouse=True)
def server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server must turn telemetry off itself: nothing of this process's may do it for it."""
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def answers(url: str) -> None:
    x = np.arange(4, dtype=np.float32)
    result = tc.InferenceServerClient(url).infer("scale", [infer_input("x", x, "FP32")]).as_numpy("y")
    np.testing.assert_array_equal(result, x * 3)  # version 2 of the example: y = 3x


@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_nothing_written_under_home(make_server, tmp_path: Path, plane: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = make_server(None, "--data-plane", plane, env={"HOME": str(home)})
    answers(server.url)
    assert not list(home.rglob("*")), sorted(map(str, home.rglob("*")))


def test_serves_with_home_unwritable(make_server, tmp_path: Path) -> None:
    """HOME a regular file: nothing can be made under it, even as root (which chmod would not stop)."""
    home = tmp_path / "not-a-folder"
    home.write_text("")
    server = make_server(None, env={"HOME": str(home)})
    answers(server.url)
    assert "telemetry" not in server.log(), server.log()
