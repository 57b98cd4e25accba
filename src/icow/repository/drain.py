"""Unloading without failing requests: a version out of the repository takes no new
requests, finishes the ones it has, and only then is closed — off the request path."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtime.model import Model

log = logging.getLogger(__name__)


class Drainer:
    """Closes retired model versions once no request runs on them.

    A request resolves its Model before ``stats.pending`` counts it, so a version
    counts as drained only after ``settle`` seconds with nothing pending: that covers
    a request that resolved the version just before it was retired."""

    def __init__(self, settle: float = 0.25, warn_after: float = 30.0, poll: float = 0.01) -> None:
        self.settle = settle
        self.warn_after = warn_after
        self.poll = poll
        self._draining: list[tuple[Model, float]] = []  # (model, when retired)
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def retire(self, models: Iterable[Model]) -> None:
        """Close ``models`` once drained; they must already be out of every published entry."""
        now = time.monotonic()
        with self._lock:
            self._draining += [(m, now) for m in models]
            if self._draining and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="icow-drain", daemon=True)
                self._thread.start()

    def draining(self) -> list[Model]:
        with self._lock:
            return [m for m, _ in self._draining]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every retired version is closed; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._draining, timeout)

    def _run(self) -> None:
        idle_since: dict[int, float] = {}  # id(model) -> since when nothing is pending
        warned: set[int] = set()
        while True:
            with self._lock:
                if not self._draining:
                    return
                entries = list(self._draining)
            closed = self._step(entries, idle_since, warned)
            del entries  # the last reference to a closed version: its session is freed here
            if closed:
                release_free_memory()
            time.sleep(self.poll)

    def _step(self, entries: list[tuple[Model, float]], idle_since: dict[int, float], warned: set[int]) -> int:
        """Close what has drained; how many were closed."""
        now = time.monotonic()
        closed = 0
        for model, retired in entries:
            key = id(model)
            if model.stats.pending > 0:
                idle_since.pop(key, None)
                if now - retired > self.warn_after and key not in warned:
                    warned.add(key)
                    log.warning("model '%s' version %d: still %d request(s) in flight %.0f s after its "
                                "unload; it closes when they finish", model.name, model.version,
                                model.stats.pending, now - retired)
                continue
            if now - idle_since.setdefault(key, now) < self.settle:
                continue
            self._close(model, now - retired)
            closed += 1
            idle_since.pop(key, None)
            with self._lock:
                self._draining = [e for e in self._draining if e[0] is not model]
                self._lock.notify_all()
        return closed

    @staticmethod
    def _close(model: Model, waited: float) -> None:
        try:
            model.close()
        except Exception:  # one version's fault must not stop the others' unload
            log.exception("model '%s' version %d: close failed", model.name, model.version)
        log.info("model '%s' version %d unloaded: its in-flight requests finished (%.2f s)",
                 model.name, model.version, waited)


def _malloc_trim() -> ctypes._CFuncPtr | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the heap that an unloaded session freed back to the system. glibc keeps
    freed memory for reuse: without this, the resident size after an unload stays
    where it was (measured: +85 MiB after reloads of a 16 MiB model, back to the
    baseline with it). Elsewhere (musl, macOS) it does nothing."""
    if _TRIM is not None:
        _TRIM(0)
