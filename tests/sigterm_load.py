"""SIGTERM under load, once: what tests/test_shutdown.py runs once and 30 times, and
scripts/sigterm-stress.py as long as it is told. Four clients (two slow calls, two
fast ones) call until the load is under way; then the server gets SIGTERM. Every
call must be answered correctly or refused as the server goes, and the server must
exit 0, not abort."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from ops_helpers import json_lines, scale_input, slow_inputs

SIZE = 1000  # a slow call that runs long enough for calls to be in flight at any moment
CLIENTS = 4
UNDER_WAY = 20  # answered calls before SIGTERM
# grpc answers UNAVAILABLE, or CANCELLED for a call that reached the transport during the stop
REFUSED = {str(grpc.StatusCode.UNAVAILABLE), str(grpc.StatusCode.CANCELLED)}
SERVER_ARGS = ("--no-metrics", "--shutdown-grace-secs", "60", "--log-format", "json")
# The ways a call can take: the native plane passing every call to grpcio (the access log at
# debug needs it), the native plane's fast path, the grpcio plane.
MODES = {
    "passthrough": ("--log-level", "debug"),
    "fast": (),
    "grpcio": ("--data-plane", "grpcio"),
}


@dataclass
class Outcome:
    exit_code: int
    answered: int = 0  # calls answered correctly
    answered_after_sigterm: int = 0
    failures: list[tuple[str, object]] = field(default_factory=list)  # (status, message) of the others

    @property
    def aborted(self) -> bool:
        return self.exit_code < 0 and -self.exit_code in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS)

    def problems(self, log: str) -> list[str]:
        """What went wrong (nothing: an empty list): the exit, the clients' view, the log's."""
        found = []
        if self.exit_code != 0:
            found.append(f"the server exited with {self.exit_code}")
        found += [f"a client got {s}: {m}" for s, m in self.failures if s not in REFUSED]
        records = []
        for line in filter(str.strip, log.splitlines()):
            try:
                records += json_lines(line)
            except ValueError:  # gRPC's or the C++ runtime's last words, before an abort
                found.append(f"the server wrote: {line}")
        infers = [r for r in records if r.get("method") == "ModelInfer"]
        found += [f"the server logged {r['status']} for {r}" for r in infers if r["status"] != "OK"]
        if infers and len(infers) != self.answered:  # with the access log on: each logged call reached its client
            found.append(f"{len(infers)} calls logged OK, {self.answered} answered")
        messages = [r.get("message") for r in records]
        if not messages or messages[-1] != "stopped: every accepted call finished":
            found.append(f"the log does not end with the stop: {messages[-3:]}")
        return found


def sigterm_under_load(proc, url: str) -> Outcome:
    """Load the server at ``url`` (the process ``proc``) until UNDER_WAY calls are answered,
    SIGTERM it, let every client run until its first refusal, and wait for the exit."""
    lock = threading.Lock()
    under_way = threading.Event()
    sigterm_sent = threading.Event()
    started = threading.Barrier(CLIENTS + 1)
    outcome = Outcome(exit_code=0)

    def load(slow: bool) -> None:
        client = tc.InferenceServerClient(url)
        started.wait()
        for _ in range(100_000):  # bounded; ends at the first refusal
            try:
                if slow:
                    value = client.infer("slow", slow_inputs(SIZE)).as_numpy("y").item()
                    ok = np.isclose(value, SIZE ** 3, rtol=1e-2)
                else:
                    ok = client.infer("scale", scale_input()).as_numpy("y").tolist() == [0, 3, 6, 9]
            except InferenceServerException as e:
                with lock:
                    outcome.failures.append((e.status(), e.message()))
                return
            with lock:
                if not ok:
                    outcome.failures.append(("WRONG ANSWER", None))
                    return
                outcome.answered += 1
                outcome.answered_after_sigterm += sigterm_sent.is_set()
                if outcome.answered >= UNDER_WAY:
                    under_way.set()

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    started.wait()
    while not under_way.wait(1.0):  # a client that failed before: no load to wait for
        if not any(t.is_alive() for t in threads):
            break
    sigterm_sent.set()
    proc.terminate()
    for t in threads:
        t.join(timeout=120)
    outcome.exit_code = proc.wait(timeout=120)
    return outcome
