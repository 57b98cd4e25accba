"""The queue in front of a model version's instances: who runs a request, when.

``DirectScheduler`` runs each request on its caller's thread as soon as an
instance is free. ``BatchScheduler`` (dynamic batching) has one thread per
instance that takes compatible requests from the queue and runs them as one
batch. Both bound the queue, drop a request whose deadline passes or whose call
is cancelled while it waits, and answer requests in the order they came, a higher
priority level first (``priority_levels``: 1 before 2, each level in order). A request
in a batch being formed still waits: it counts against max_queue_size, and its
queue timeout, deadline or cancel takes it out of the batch then, not when the
batch's delay ends.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

import grpc

from ..protocol.errors import InferenceServerError, unavailable
from .execution import Batching, QueuePolicy
from .request_policy import DEFAULT, Scheduling, queue_timeout_ns

QUEUED, FORMING, RUNNING, DONE = "queued", "forming", "running", "done"  # FORMING: in a batch not yet run
POLL_SECONDS = 0.05  # how soon a cancelled call that waits in the queue is noticed


class Job:
    """One request on its way through a scheduler. ``payload`` is the model's business."""

    __slots__ = ("payload", "rows", "key", "deadline_ns", "alive", "state", "event", "instance",
                 "result", "error", "queued_ns", "started_ns", "timings", "ran_alone", "expired_by_queue",
                 "scheduling")

    def __init__(self, payload: Any, rows: int, key: Hashable, deadline_ns: int | None,
                 alive: Callable[[], bool] | None, scheduling: Scheduling = DEFAULT) -> None:
        self.payload = payload
        self.rows = rows  # its share of a batch
        self.key = key  # jobs with equal keys can share a batch; None: never batched
        self.deadline_ns = deadline_ns  # time.monotonic_ns() after which nobody waits for it
        self.alive = alive  # False once the caller has gone (a cancelled call)
        self.state = QUEUED
        # Set when the job leaves the queue (batched: when it is done). Made only for a
        # job that queues: one that finds a free instance at once never needs it.
        self.event: threading.Event | None = None
        self.instance: Any = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.queued_ns = self.started_ns = time.monotonic_ns()
        self.timings = (0, 0, 0)  # input, infer, output ns, set by whoever runs it
        self.ran_alone = False  # a run of its own (not part of a batch): its request records the execution
        self.expired_by_queue = ""  # what set the deadline if not the caller: the config, or the request
        self.scheduling = scheduling  # its priority level and its own queue timeout


Execute = Callable[[Any, list[Job]], None]  # runs jobs on an instance; sets each job's result or error


class Scheduler:
    """The queue both schedulers share; subclasses decide who takes jobs from it."""

    def __init__(self, model: str, instances: list[Any], policy: QueuePolicy, execute: Execute) -> None:
        self.model = model
        self.policy = policy
        # Weak, so that a scheduler's threads do not keep a model that nobody else has alive.
        self._execute = weakref.WeakMethod(execute) if hasattr(execute, "__self__") else lambda: execute
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        # Jobs still wanted that have not started: queued (cancelled ones leave the deque
        # lazily) or in a batch being formed. max_queue_size bounds them all (with priority
        # levels: those of each level).
        self._waiting = 0
        self._by_level: dict[int, int] = {}  # of _waiting, per priority level (each level's max_queue_size)
        self._free = list(instances)
        self._instances = len(instances)
        self.closed = False

    @property
    def queued(self) -> int:
        """Requests waiting now: for an instance, or in a batch being formed (not those running)."""
        return self._waiting

    @property
    def busy(self) -> int:
        """Instances running a request or a batch now."""
        return self._instances - len(self._free)

    def run(self, job: Job) -> Any:
        """Run ``job``, blocking the caller until it is done; its result, or its error raised."""
        raise NotImplementedError

    def close(self) -> None:
        """Fail every queued job and stop taking new ones."""
        with self._cond:
            self.closed = True
            while self._queue:
                self._finish(self._queue.popleft(), unavailable(f"model '{self.model}' is being unloaded"))
            self._cond.notify_all()

    # -- the queue, always under self._cond ---------------------------------
    def _push(self, job: Job) -> None:
        if self.closed:
            raise unavailable(f"model '{self.model}' is being unloaded")
        level = job.scheduling.level
        policy = self.policy.at(level)
        waiting = self._by_level.get(level, 0)
        if policy.max_size and waiting >= policy.max_size:
            where = f" at priority level {level}" if self.policy.levels else ""
            raise InferenceServerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model '{self.model}' has {waiting} requests queued{where}, its limit (max_queue_size); "
                "retry later")
        timeout_ns, by_request = queue_timeout_ns(job.scheduling, policy)
        if timeout_ns:
            limit = job.queued_ns + timeout_ns
            if job.deadline_ns is None or limit < job.deadline_ns:
                job.deadline_ns = limit
                job.expired_by_queue = "its timeout parameter" if by_request else "default_timeout_microseconds"
        job.event = threading.Event()
        self._enqueue(job)
        self._waiting += 1
        self._by_level[level] = waiting + 1
        self._cond.notify_all()

    def _enqueue(self, job: Job) -> None:
        """Behind every job of its level or a higher one (a lower number), ahead of the
        rest: the deque stays ordered by level, then by arrival."""
        level = job.scheduling.level
        at = len(self._queue)
        while at and self._queue[at - 1].scheduling.level > level:
            at -= 1
        self._queue.insert(at, job)

    def _left(self, job: Job) -> None:
        """``job`` waits no more (taken, or gone)."""
        self._waiting -= 1
        self._by_level[job.scheduling.level] -= 1

    def _take(self, job: Job) -> None:
        if job.state == QUEUED:  # a job of a batch being formed has left the deque already
            self._queue.remove(job)
        self._left(job)
        job.state = RUNNING
        job.started_ns = time.monotonic_ns()

    def _next_live(self, key: Hashable = None, max_rows: int = 0) -> Job | None:
        """The oldest job still wanted (with ``key``/``max_rows``: one that fits the batch)."""
        now = time.monotonic_ns()
        for job in list(self._queue):
            if job.state != QUEUED:
                self._queue.remove(job)
            elif _expired(job, now):
                self._queue.remove(job)
                self._left(job)
                self._finish(job, _deadline_error(self.model, job))
            elif job.alive is not None and not job.alive():
                self._queue.remove(job)
                self._left(job)
                self._finish(job, _cancelled())
            elif key is None or (job.key == key and job.rows <= max_rows):
                return job
        return None

    @staticmethod
    def _finish(job: Job, error: BaseException) -> None:
        job.error, job.state = error, DONE
        job.event.set()

    # -- the caller's side -------------------------------------------------
    def _wait(self, job: Job) -> None:
        """Block until ``job`` leaves the queue; leave it early (the queue, or a batch
        being formed) when its deadline passes or its call is cancelled."""
        while job.state in (QUEUED, FORMING):
            timeout = POLL_SECONDS
            if job.deadline_ns is not None:
                timeout = min(timeout, max(0.0, (job.deadline_ns - time.monotonic_ns()) / 1e9))
            if job.event.wait(timeout):
                return
            gone = job.alive is not None and not job.alive()
            if gone or _expired(job, time.monotonic_ns()):
                with self._cond:
                    if job.state in (QUEUED, FORMING):
                        if job.state == QUEUED:
                            self._queue.remove(job)
                        self._left(job)  # a forming batch drops it when it looks again (below)
                        self._finish(job, _cancelled() if gone else _deadline_error(self.model, job))
                        self._cond.notify_all()
                        return
        job.event.wait()  # taken: wait for the instance (direct) or the batch's end


class DirectScheduler(Scheduler):
    """Each request runs alone, on its caller's thread, on the first free instance."""

    def run(self, job: Job) -> Any:
        with self._cond:
            if self._free and not self._waiting:
                job.instance = self._free.pop()
                job.state = RUNNING
            else:
                self._push(job)
        if job.state != RUNNING:
            self._wait(job)
        if job.error is None:
            try:
                self._execute()(job.instance, [job])
            finally:
                self._release(job.instance)
        if job.error is not None:
            raise job.error
        return job.result

    def _release(self, instance: Any) -> None:
        """Hand the instance to the oldest waiting job, or put it back."""
        with self._cond:
            job = self._next_live() if self._waiting else None
            if job is None:
                self._free.append(instance)
                return
            self._take(job)
            job.instance = instance
            job.event.set()


class BatchScheduler(Scheduler):
    """One thread per instance forms batches of compatible queued jobs and runs them."""

    def __init__(self, model: str, instances: list[Any], policy: QueuePolicy, execute: Execute,
                 batching: Batching) -> None:
        super().__init__(model, instances, policy, execute)
        self.batching = batching
        self._running = 0  # batches running (an instance's thread owns its instance: _free is unused)
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True,
                                          name=f"icow-batch-{model}-{n}") for n, i in enumerate(instances)]
        for thread in self._threads:
            thread.start()

    def run(self, job: Job) -> Any:
        with self._cond:
            self._push(job)
        self._wait(job)
        if job.error is not None:
            raise job.error
        return job.result

    def _serve(self, instance: Any) -> None:
        while True:
            jobs = self._form_batch()
            if jobs is None:
                return
            execute = self._execute()
            if execute is None:  # the model is gone
                return
            try:
                execute(instance, jobs)
            except BaseException as e:  # execute sets errors itself; this is a bug, but callers must hear
                for job in jobs:
                    job.error = job.error or e
            finally:
                del execute
                with self._cond:
                    self._running -= 1
                for job in jobs:
                    job.state = DONE
                    job.event.set()

    @property
    def busy(self) -> int:
        return self._running

    def _form_batch(self) -> list[Job] | None:
        """Wait for a job, then add compatible ones until the batch is full, has a
        preferred size with nothing more queued, or its oldest job's delay is up.
        Jobs that leave meanwhile (deadline, queue timeout, cancel: ``_wait``) are
        dropped; a batch they all left is formed anew."""
        with self._cond:
            jobs: list[Job] = []
            while not jobs:
                first = self._next_live()
                while first is None:
                    if self.closed:
                        return None
                    self._cond.wait()
                    first = self._next_live()
                jobs = self._fill(first)
            for job in jobs:
                self._take(job)
            self._running += 1
            return jobs

    def _fill(self, first: Job) -> list[Job]:
        """``first`` and the jobs that join it; empty if every one of them left."""
        max_rows = self.batching.max_batch_size
        jobs = [first]
        first.state = FORMING
        self._queue.remove(first)
        while jobs:
            rows = sum(job.rows for job in jobs)
            job = self._next_live(first.key, max_rows - rows) if rows < max_rows else None
            if job is not None:
                job.state = FORMING
                self._queue.remove(job)
                jobs.append(job)
                continue
            wait_ns = jobs[0].queued_ns + self.batching.max_delay_ns - time.monotonic_ns()
            if rows >= max_rows or rows in self.batching.preferred or wait_ns <= 0 or self.closed:
                break
            self._cond.wait(wait_ns / 1e9)
            jobs = [job for job in jobs if job.state == FORMING]
        return self._still_wanted(jobs)

    def _still_wanted(self, jobs: list[Job]) -> list[Job]:
        """``jobs`` less those whose deadline has passed or whose call has gone, which
        fail here (their callers may not have looked yet)."""
        now = time.monotonic_ns()
        wanted = []
        for job in jobs:
            if job.state != FORMING:
                continue
            gone = job.alive is not None and not job.alive()
            if gone or _expired(job, now):
                self._left(job)
                self._finish(job, _cancelled() if gone else _deadline_error(self.model, job))
            else:
                wanted.append(job)
        return wanted


def _expired(job: Job, now_ns: int) -> bool:
    return job.deadline_ns is not None and now_ns >= job.deadline_ns


def _deadline_error(model: str, job: Job) -> InferenceServerError:
    if job.expired_by_queue:  # a queue timeout (the config's or the request's), not the caller's deadline
        return unavailable(f"request timed out in the queue of model '{model}' ({job.expired_by_queue})")
    return InferenceServerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"deadline passed while the request waited in the queue of model '{model}'")


def _cancelled() -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.CANCELLED, "the call was cancelled while it waited in the queue")
