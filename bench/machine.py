"""Where and with what a run happened: CPU, load, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .models import ROOT

LOAD_LIMIT = 0.5  # above this 1-minute load average, another program shares the CPUs
PACKAGES = ("icow", "onnxruntime", "grpcio", "protobuf", "numpy", "tritonclient")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def commit() -> str:
    """HEAD of the checkout, with '+dirty' when the tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "allowed_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions(),
        "commit": commit(),
        "loadavg_start": load(),
    }


def load_warning(loadavg: list[float]) -> str | None:
    """A loud line when the machine is busy, None when it is quiet."""
    if loadavg and loadavg[0] > LOAD_LIMIT:
        return (f"!!! LOAD AVERAGE {loadavg[0]:.2f} > {LOAD_LIMIT}: the machine is busy; these figures are "
                "NOT measurements. Wait for a quiet machine (see bench/README.md). !!!")
    return None
