"""What /proc says about a process: CPU time, resident memory and its peak.

Linux only; elsewhere every reader returns None and the table shows '-'.
"""

from __future__ import annotations

import os
from pathlib import Path

# USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on Linux: 10 ms).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of the whole process so far.

    /proc/<pid>/stat of the thread-group leader sums every thread of the process,
    those that have ended included, so gRPC pollers, executor workers and ONNX
    Runtime's pool all count. Resolution: one clock tick (10 ms)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """The process's children, their children and so on (Linux ≥ 3.5's
    /proc/<pid>/task/<tid>/children; [] where it is missing). A server that runs
    its models in worker processes (MLServer's parallel_workers) spends its CPU
    and memory there as well."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(c) for c in task.read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    except OSError:
        pass
    return None


def rss_bytes(pid: int) -> int | None:
    """Resident set size now (VmRSS)."""
    kib = _status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM): since the process started, or since the
    last ``reset_peak_rss``."""
    kib = _status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss(pid: int) -> bool:
    """Set VmHWM back to the current RSS (writing 5 to clear_refs, Linux ≥ 4.0),
    so that the next reading is the peak of what follows. False when not allowed:
    the peak is then the process's lifetime peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False
