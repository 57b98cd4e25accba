"""The real lIteCOW client, ``litecow==0.1.0`` from PyPI, unchanged, in a virtualenv
of its own: it pins numpy < 2 and its generated code needs protobuf 3.20.x, which
cannot share icow's environment. The tests drive it through litecow_calls.py.

Fixture: ``litecow`` (session) — call ``litecow(url, [call, ...])``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REQUIREMENTS = ["litecow==0.1.0", "grpcio", "numpy<2", "protobuf==3.20.3"]
RUNNER = Path(__file__).with_name("litecow_calls.py")


def litecow_env() -> Path:
    """The virtualenv's python, made on first use and kept in the temp folder for
    later runs (keyed by the requirements and this Python's version)."""
    key = hashlib.sha256(json.dumps([REQUIREMENTS, sys.version]).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"icow-litecow-0.1.0-{key}"
    python = root / "bin" / "python"
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time; the others wait, then use it
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
            install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                      *REQUIREMENTS], capture_output=True, text=True)
            assert install.returncode == 0, f"pip install {' '.join(REQUIREMENTS)} failed:\n{install.stderr}"
            (root / ".complete").touch()
    return python


def encode(array: np.ndarray) -> dict:
    """An array as JSON for litecow_calls.py (floats survive JSON exactly)."""
    return {"dtype": str(array.dtype), "shape": list(array.shape), "values": array.ravel().tolist()}


def decode(data: dict) -> np.ndarray:
    return np.array(data["values"], dtype=data["dtype"]).reshape(data["shape"])


def call(model_key: str, inputs, *, outputs: list[str] | None = None, model_version: str | None = None) -> dict:
    """One ``ICOWClient.get_inference`` call; ``inputs`` a dict, a list or one array,
    as the client takes them."""
    if isinstance(inputs, dict):
        sent = {"dict": {name: encode(a) for name, a in inputs.items()}}
    elif isinstance(inputs, list):
        sent = {"list": [encode(a) for a in inputs]}
    else:
        sent = {"array": encode(inputs)}
    return {"model_key": model_key, "inputs": sent, "outputs": outputs, "model_version": model_version}


class Result:
    """What one call gave: ``outputs`` (arrays by name), or the gRPC ``code`` and
    ``details`` of its error, or a client-side ``exception``."""

    def __init__(self, data: dict) -> None:
        self.outputs = {n: decode(a) for n, a in data["outputs"].items()} if "outputs" in data else None
        self.code = data.get("code")
        self.details = data.get("details", "")
        self.exception = data.get("exception")

    def __repr__(self) -> str:
        return f"Result(outputs={self.outputs}, code={self.code}, details={self.details!r}, " \
               f"exception={self.exception!r})"


@pytest.fixture(scope="session")
def litecow_python() -> Path:
    return litecow_env()


@pytest.fixture(scope="session")
def litecow(litecow_python: Path) -> Callable[[str, list[dict]], list[Result]]:
    """Run calls (made with ``call``) with the litecow 0.1.0 client against a server."""

    def run(url: str, calls: list[dict]) -> list[Result]:
        done = subprocess.run([str(litecow_python), str(RUNNER)], input=json.dumps({"url": url, "calls": calls}),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"litecow_calls.py failed:\n{done.stderr}"
        return [Result(r) for r in json.loads(done.stdout)]

    return run
