"""Build steps that pyproject.toml cannot declare: the compiled extension
``icow._wire``, the extension ``icow._plane`` (the native gRPC data plane,
which ``icow serve`` runs on by default; built only where ``pkg-config grpc++``
finds the gRPC C++ libraries, else serve falls back to grpcio), and the gRPC
stubs generated from proto/ at build time (so that they can never drift from
the .proto files)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
STUB_DIR = ROOT / "src" / "icow" / "_proto"
PROTOS = ["model_config.proto", "inference.proto", "litecow.proto", "rollout.proto"]


def generate_stubs() -> None:
    """Run protoc over proto/ into icow/_proto and make the modules package-local.

    Two rewrites: imports become relative (protoc writes top-level imports), and
    descriptors go into icow's own pool instead of protobuf's default pool, where
    tritonclient registers the same 'inference.*' names: both can be imported in
    one process.
    """
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={STUB_DIR}", f"--pyi_out={STUB_DIR}",
            f"--grpc_python_out={STUB_DIR}", *PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(PROTOS))
    for path in STUB_DIR.glob("*_pb2*.py*"):
        text = path.read_text()
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
        text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool",
                            "from . import _pool")
        path.write_text(text)
    (STUB_DIR / "model_config_pb2_grpc.py").unlink(missing_ok=True)  # no service in it


def sources(*folders: str) -> list[str]:
    """The .cpp files of these ext/ folders, as paths relative to the checkout.

    ext/core (the parser, the response layout, no Python) is compiled into both
    extensions; each includes across folders as "core/...", from include dir ext/."""
    return sorted(str(p.relative_to(ROOT)) for f in folders for p in (ROOT / "ext" / f).glob("*.cpp"))


def plane_extension() -> list[Pybind11Extension]:
    """icow._plane, or nothing (with the reason on stderr) where it cannot be built.

    It links the system's gRPC C++ libraries (Debian: libgrpc++-dev), found with
    pkg-config. ICOW_PLANE=0 skips it on purpose (a build without the libraries).
    ``optional=True``: a failed compile is a warning, never a failed install."""
    def skip(why: str) -> list[Pybind11Extension]:
        print(f"icow: not building icow._plane (the native gRPC data plane): {why}; "
              "icow serve will run on the grpcio data plane. For the native plane, run "
              "`bash scripts/install.sh` (Debian/Ubuntu: installs libgrpc++-dev and pkg-config, "
              "then icow) or install the gRPC C++ libraries so that `pkg-config grpc++` finds "
              "them, and reinstall", file=sys.stderr)
        return []

    if os.environ.get("ICOW_PLANE", "1") == "0":
        return skip("ICOW_PLANE=0")
    if shutil.which("pkg-config") is None:
        return skip("pkg-config not found")

    def pkg(*args: str) -> list[str]:
        return shlex.split(subprocess.run(["pkg-config", *args, "grpc++"], check=True, capture_output=True,
                                          text=True).stdout)

    try:
        cflags, libs = pkg("--cflags"), pkg("--libs")
    except subprocess.CalledProcessError:
        return skip("pkg-config finds no grpc++ (install libgrpc++-dev)")
    return [Pybind11Extension(
        "icow._plane",
        sources("plane", "core"),
        include_dirs=["ext"],
        cxx_std=17,
        extra_compile_args=["-O2", *cflags],
        # pkg-config lists every abseil piece; keep only the libraries really used.
        extra_link_args=["-Wl,--as-needed", *libs],
        optional=True,
    )]


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(
    ext_modules=[
        Pybind11Extension(
            "icow._wire",
            sources("wire", "core"),
            include_dirs=["ext"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        ),
        *plane_extension(),
    ],
    cmdclass={"build_py": BuildPyWithStubs},
)
