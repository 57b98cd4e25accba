"""Per-version inference statistics, in the shape of the ModelStatistics RPC."""

from __future__ import annotations

import bisect
import copy
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

# Upper bounds, in microseconds, of the request latency histogram that
# services/metrics.py exports: 100 µs to 10 s, roughly 2.5x apart.
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
                      250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000)


# Why a request failed, as Triton's nv_inference_request_failure labels it (``reason``).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_REASON_OF_CODE = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "REJECTED",  # the queue was full
    grpc.StatusCode.UNAVAILABLE: "REJECTED",  # a queue timeout, or the version unloading
    grpc.StatusCode.CANCELLED: "CANCELED",
    grpc.StatusCode.DEADLINE_EXCEEDED: "CANCELED",  # the caller's deadline: gRPC cancels the call
    grpc.StatusCode.INTERNAL: "BACKEND",  # the run failed
}
_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def failure_reason(error: BaseException | grpc.StatusCode | int) -> str:
    """The ``reason`` of a failed request: from its error, or its status code (a number
    from the native plane). An error without a code is a failed run: BACKEND."""
    code = error if isinstance(error, grpc.StatusCode) else _CODE_OF_NUMBER.get(error) \
        if isinstance(error, int) else getattr(error, "code", None)
    if isinstance(error, BaseException) and not isinstance(code, grpc.StatusCode):
        return "BACKEND"
    return _REASON_OF_CODE.get(code, "OTHER")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class Tally(Protocol):
    """Counts kept outside Python (icow._plane.Tally: the fast path's requests)."""

    def take(self) -> tuple: ...


class VersionStats:
    """Counters of one model version; every update takes one short lock. Read them
    through snapshot(): it takes in what a tally counted meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inference_count = 0  # inferences, counting each batch row
        self.execution_count = 0  # runs of the model
        self.last_inference_ms = 0
        self.success = Duration()
        self.fail = Duration()
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)  # fail.count by reason
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.cache_hit = Duration()  # requests answered from the response cache: lookup and copy-out time
        self.cache_miss = Duration()  # requests the cache did not have: lookup and insertion time
        self.batches: dict[int, BatchStats] = {}
        self._pending = 0  # requests between begin() and their record_request/record_failure
        # weak references to objects with a ``pending`` count of their own (the native plane's entries)
        self.pending_sources: list[weakref.ref] = []
        # successful requests per LATENCY_BUCKETS_US bucket (not cumulative); the last is +Inf
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self._tally: Tally | None = None

    @property
    def pending(self) -> int:
        """Requests queued or running: this object's, and its sources'."""
        return self._pending + sum(source.pending for ref in self.pending_sources if (source := ref()) is not None)

    def begin(self) -> None:
        """A request starts; record_request or record_failure ends it."""
        with self._lock:
            self._pending += 1

    def record_request(self, rows: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int,
                       output_ns: int, ran_alone: bool = False, begun: bool = True) -> None:
        """A request succeeded: its own times, which for a batched request include
        the whole batch's input, infer and output time, as Triton reports them.
        ``ran_alone``: it was a run of its own, counted here rather than by record_execution
        (one lock instead of two on the common path). ``begun``: it was counted
        by begin() (the native plane's requests are not: they hold their session themselves)."""
        with self._lock:
            if ran_alone:
                self._execution(rows, input_ns, infer_ns, output_ns)
            self._pending -= begun
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_US, total_ns // 1000)] += 1
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.success.add(total_ns)
            self.queue.add(queue_ns)
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)

    def record_cache_hit(self, total_ns: int, hit_ns: int) -> None:
        """A request answered from the response cache: a success (as Triton counts it, with no
        inference, execution or compute time), and a cache hit."""
        with self._lock:
            self._pending -= 1
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_US, total_ns // 1000)] += 1
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.success.add(total_ns)
            self.queue.add(0)
            self.cache_hit.add(hit_ns)

    def record_cache_miss(self, miss_ns: int) -> None:
        """A request the response cache did not have (it ran, and its answer was kept)."""
        with self._lock:
            self.cache_miss.add(miss_ns)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One run of the model for a batch of requests (``batch_size`` rows in all)."""
        with self._lock:
            self._execution(batch_size, input_ns, infer_ns, output_ns)

    def _execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int, count: int = 1) -> None:
        self.execution_count += count
        totals = self.batches.get(batch_size) or self.batches.setdefault(batch_size, BatchStats())
        totals.compute_input.add(input_ns, count)
        totals.compute_infer.add(infer_ns, count)
        totals.compute_output.add(output_ns, count)

    def tally(self, make: Callable[[], Tally]) -> Tally:
        """The version's tally, made on first use: one for every fast-path entry of this version."""
        with self._lock:
            if self._tally is None:
                self._tally = make()
            return self._tally

    def _take_tally(self) -> None:
        """Add what the tally counted since the last take (its fields: ext/plane/tally.hpp)."""
        if self._tally is None:
            return
        requests, rows, last_ms, success_ns, queue_ns, input_ns, infer_ns, output_ns, latency, runs = \
            self._tally.take()
        for batch_size, count, *run_ns in runs:
            self._execution(batch_size, *run_ns, count=count)
        if not requests:
            return
        self.inference_count += rows
        self.last_inference_ms = max(self.last_inference_ms, last_ms)
        for duration, ns in ((self.success, success_ns), (self.queue, queue_ns), (self.compute_input, input_ns),
                             (self.compute_infer, infer_ns), (self.compute_output, output_ns)):
            duration.add(ns, requests)
        self.latency_buckets = [a + b for a, b in zip(self.latency_buckets, latency)]

    def snapshot(self) -> VersionStats:
        """A consistent copy to read while requests keep updating this one."""
        with self._lock:
            self._take_tally()
            clone = copy.copy(self)
            clone.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items()
                                                 if k not in ("_lock", "pending_sources", "_tally")}))
        return clone

    def record_failure(self, total_ns: int, begun: bool = True, reason: str | int = "OTHER") -> None:
        """A request failed; ``reason``: one of FAILURE_REASONS, or the gRPC status code's
        number it failed with (the native plane's refusals)."""
        if isinstance(reason, int):
            reason = failure_reason(reason)
        with self._lock:
            self._pending -= begun
            self.last_inference_ms = time.time_ns() // 1_000_000
            self.fail.add(total_ns)
            self.failures[reason] += 1
