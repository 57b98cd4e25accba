"""Memory that comes back after a burst (``icow serve --memory-trim-secs``).

Large calls leave memory the process no longer uses but still holds: the native
plane's pooled request/response blocks (``--buffer-pool-mb`` caps them), and heap
that glibc keeps in the arenas of gRPC's threads once a freed chunk was large
(its mmap threshold rises to the largest chunk freed, so 12 MiB messages end up
in arenas, not in mappings of their own). Measured: eight 12 MiB calls at once,
then 50 clients killed mid-upload, left the server 285 MiB above its level on the
native plane and 350 MiB on grpcio, for good.

A thread gives it back every period: pooled blocks idle for a whole period are
unmapped, then ``malloc_trim`` returns the free pages of every arena. With nothing
to give back a trim takes well under a millisecond; after a burst, the time to
unmap what it gives back (measured on a busy 2-core VM: 3-65 ms for 50-150 MiB,
up to 285 ms on grpcio), during which threads that allocate in the arena being
trimmed wait. Under steady large traffic a trim costs the pages the next calls
fault in again: one period's worth, not one call's.

Not taken: glibc's mmap threshold fixed at 1 MiB (mallopt M_MMAP_THRESHOLD), so that
every large message is a mapping of its own. It brought the grpcio plane back within
2 % after the faults (16 % without), but made its 12 MiB calls cost 2.3x the server
CPU (33 ms against 11 ms per call, python -m bench --scenarios icow_native --workloads
identity-12MiB-c1, with and without, in turns): each call faulted in fresh pages.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

from ..repository.drain import release_free_memory

log = logging.getLogger(__name__)


class Pool(Protocol):
    """The native plane's buffer pool, as icow._plane exposes it."""

    def trim_buffer_pool(self, idle_seconds: float) -> int: ...


def resident_bytes() -> int:
    """This process's resident size (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class MemoryKeeper:
    """Every ``period`` seconds: the pool's idle blocks unmapped, free heap given back."""

    def __init__(self, period: float, pool: Pool | None = None) -> None:
        self.period = period
        self.pool = pool
        self.trims = 0  # periods of upkeep done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="icow-memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.tick()
            except Exception:  # never let upkeep end the server; say why, try again next period
                log.exception("memory upkeep failed")

    def tick(self) -> None:
        """One period's upkeep."""
        unmapped = self.pool.trim_buffer_pool(self.period) if self.pool is not None else 0
        before, start = resident_bytes(), time.perf_counter()
        release_free_memory()
        self.trims += 1
        log.debug("memory: %d MiB of pooled blocks unmapped, heap trimmed from %d to %d MiB in %.1f ms",
                  unmapped >> 20, before >> 20, resident_bytes() >> 20, 1e3 * (time.perf_counter() - start))
