"""Another language needs nothing but the proto: a C++ client generated from proto/.

The stubs are generated here by protoc and grpc_cpp_plugin into a temporary build
folder (never committed), tests/cpp/client.cc is compiled against them with g++ and
``pkg-config grpc++ protobuf``, and its ModelInfer result on the real server is compared
with ONNX Runtime run in process. Needs Debian's protobuf-compiler-grpc and
libgrpc++-dev (scripts/install-system-deps.sh); without them the test is skipped,
unless ICOW_REQUIRE_CPP=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOS = ("inference.proto", "model_config.proto")
CLIENT_SOURCE = ROOT / "tests" / "cpp" / "client.cc"


def _missing(reason: str) -> None:
    if os.environ.get("ICOW_REQUIRE_CPP") == "1":
        pytest.fail(f"ICOW_REQUIRE_CPP=1 but {reason} (run scripts/install-system-deps.sh)")
    pytest.skip(f"{reason} (run scripts/install-system-deps.sh)")


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}): {' '.join(cmd)}\n"
                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def cpp_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled client, built once per test session."""
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_cpp_plugin")
    pkg_config = shutil.which("pkg-config")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    for tool, name in ((protoc, "protoc"), (plugin, "grpc_cpp_plugin"),
                       (pkg_config, "pkg-config"), (compiler, os.environ.get("CXX", "g++"))):
        if tool is None:
            _missing(f"{name} is not installed")
    assert protoc and plugin and pkg_config and compiler
    flags = subprocess.run([pkg_config, "--cflags", "--libs", "grpc++", "protobuf"],
                           capture_output=True, text=True)
    if flags.returncode != 0:
        _missing(f"pkg-config finds no grpc++/protobuf: {flags.stderr.strip()}")

    build = tmp_path_factory.mktemp("cpp-client")
    _run([protoc, f"-I{PROTO_DIR}", f"--cpp_out={build}", f"--grpc_out={build}",
          f"--plugin=protoc-gen-grpc={plugin}", *(str(PROTO_DIR / p) for p in PROTOS)],
         "protoc")
    sources = [str(CLIENT_SOURCE)] + [
        str(build / f"{Path(p).stem}{suffix}")
        for p in PROTOS for suffix in (".pb.cc", ".grpc.pb.cc")
    ]
    binary = build / "client"
    start = time.monotonic()
    _run([compiler, "-std=c++17", "-O0", f"-I{build}", *sources, "-o", str(binary),
          *flags.stdout.split()], "compiling tests/cpp/client.cc")
    print(f"\ncompiled the C++ client in {time.monotonic() - start:.1f}s")
    return binary


def test_cpp_client_infers_like_onnxruntime(cpp_client: Path, server, test_repo: Path,
                                            tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    input_file = tmp_path / "input.txt"
    # %.9g round-trips every float32 exactly.
    input_file.write_text(" ".join(f"{v:.9g}" for v in x.ravel()) + "\n")

    result = subprocess.run([str(cpp_client), server.url, str(input_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        f"C++ client exited {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\nserver log:\n{server.log()}")
    got = np.array(result.stdout.split(), dtype=np.float32).reshape(2, 4)

    session = ort.InferenceSession(str(test_repo / "mlp" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (expected,) = session.run(["output"], {"input": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
