"""Triton's schedule-policy parameters on the real server, on both gRPC planes and
over HTTP: ``priority`` orders a model's queue (``priority_levels``), ``timeout``
bounds a request's wait where the model allows it (``allow_timeout_override``), and a
request that leaves the queue unrun (cancelled, timed out) counts as a failure, by
reason in ``nv_inference_request_failure``.

Each model runs one request at a time (one instance, batches of one): a long request
holds the instance while others queue behind it, each seen in the server (the pending
gauge) before the next is sent, and the order in which the queued ones are answered
is the order in which they ran."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import make_models
from conftest import ServerProcess, start_server
from helpers import expect_error, infer_input, wait_for
from ops_helpers import pending, sample, scrape, slow_model
from test_native_plane import slow_batched_model

LONG = 4000  # a run of seconds (3.6 s on 2 cores): the instance stays busy while the test queues behind it
SHORT = 800  # a run of tens of ms: queued requests are answered far enough apart to arrive in order

ONE_AT_A_TIME = "max_batch_size: 1\ninstance_group { count: 1 kind: KIND_CPU }\n"
MODELS = {
    # three levels, 2 the default; a request's timeout shortens no default (there is none)
    "ranked": ONE_AT_A_TIME + "dynamic_batching { priority_levels: 3 default_priority_level: 2\n"
                              "  default_queue_policy { allow_timeout_override: true } }\n",
    # a default queue timeout of 60 s that a request may shorten, never lengthen
    "capped": ONE_AT_A_TIME + "dynamic_batching { default_queue_policy { allow_timeout_override: true\n"
                              "  default_timeout_microseconds: 60000000 } }\n",
    # level 1 has a policy of its own: room for two, and a request's timeout; level 2 room for one
    "levelled": ONE_AT_A_TIME + "dynamic_batching { priority_levels: 2 default_priority_level: 2\n"
                                "  default_queue_policy { max_queue_size: 1 }\n"
                                "  priority_queue_policy { key: 1 value { max_queue_size: 2\n"
                                "    allow_timeout_override: true } } }\n",
    # no override: a request's timeout is not read (and the native planes serve it)
    "plain": ONE_AT_A_TIME + "dynamic_batching { }\n",
}


@pytest.fixture(scope="module")
def priority_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("priority") / "models"
    for name, config in MODELS.items():
        make_models.write(slow_batched_model(), repo, name)
        (repo / name / "config.pbtxt").write_text(config)
    make_models.write(slow_model(), repo, "direct")  # no batching: the direct queue
    (repo / "direct" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return repo


@pytest.fixture(scope="module", params=["native", "grpcio"])
def srv(request: pytest.FixtureRequest, priority_repo: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(priority_repo, "--data-plane", request.param, log_dir=tmp_path_factory.mktemp("logs"))
    server.data_plane = request.param
    yield server
    server.stop()


def inputs(size: int, x: float = 1.0, lib=tc) -> list:
    return [infer_input("x", np.full((1, 1), x, np.float32), "FP32"),
            infer_input("n", np.array([[size, size]], np.int64), "INT64")] if lib is tc else \
        [_http_input("x", np.full((1, 1), x, np.float32), "FP32"),
         _http_input("n", np.array([[size, size]], np.int64), "INT64")]


def _http_input(name: str, array: np.ndarray, datatype: str) -> th.InferInput:
    tensor = th.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


class Answers:
    """The labels of answered calls, in the order the answers came; errors by label."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.errors: dict[str, Exception] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def send(self, label: str, call: Callable[[], object]) -> None:
        def run() -> None:
            try:
                call()
            except Exception as e:  # noqa: BLE001 - kept for the test to look at
                with self._lock:
                    self.errors[label] = e
            with self._lock:
                self.order.append(label)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def done(self, label: str) -> bool:
        with self._lock:
            return label in self.order

    def join(self) -> None:
        for thread in self._threads:
            thread.join(120)


def queued(srv: ServerProcess, model: str) -> int:
    """Requests in the model's queue (the full path's), not running."""
    return int(sample(scrape(srv.metrics_port), "icow_inference_queued_request_count", model=model, version="1"))


def queue(srv: ServerProcess, answers: Answers, model: str, label: str, call: Callable[[], object]) -> None:
    """Send ``call`` and wait until it is in the model's queue."""
    before = queued(srv, model)
    answers.send(label, call)
    wait_for(f"{label} in the queue", lambda: queued(srv, model) == before + 1)


def served_fast(srv: ServerProcess, model: str) -> bool:
    """Whether the model's ModelInfer calls wait and run in C++ (the native plane's queues,
    or the grpcio plane's DirectPath for a model without batching)."""
    return model == "direct" or (model == "plain" and srv.data_plane == "native")


def busy(srv: ServerProcess, answers: Answers, model: str, tensors: list | None = None) -> None:
    """The model's one instance taken by a long run. In C++, pending counts a call from just
    before it takes an idle instance; the full path's gauge says when its instance is busy."""
    client = tc.InferenceServerClient(srv.url)
    before = pending(srv, model)
    answers.send("long", lambda: client.infer(model, tensors or inputs(LONG), client_timeout=120))
    if served_fast(srv, model):
        wait_for("the long run on the instance", lambda: pending(srv, model) == before + 1)
    else:
        wait_for("the long run on the instance", lambda: sample(
            scrape(srv.metrics_port), "icow_inference_busy_instance_count", model=model, version="1") == 1)


def queued_order(answers: Answers) -> list[str]:
    """The order the queued requests were answered in. The long run is left out: it ended
    before they ran (it was running while they queued), but its answer may reach its client
    thread after the first of theirs reaches another on a busy machine (seen in CI-like runs)."""
    return [label for label in answers.order if label != "long"]


def failures(srv: ServerProcess, model: str, reason: str) -> float:
    return sample(scrape(srv.metrics_port), "nv_inference_request_failure", model=model, version="1", reason=reason)


def fail_count(srv: ServerProcess, model: str) -> int:
    stats = tc.InferenceServerClient(srv.url).get_inference_statistics(model, "1").model_stats[0]
    return stats.inference_stats.fail.count


# -- priority -------------------------------------------------------------------

def test_a_higher_priority_request_runs_before_those_queued_earlier(srv):
    """Behind a long run: two requests of the lowest level (3), one of the default (2,
    priority 0), then one of the highest (1), over gRPC and HTTP: they run highest level
    first, each level in the order it came."""
    client, http = tc.InferenceServerClient(srv.url), th.InferenceServerClient(srv.http_url)
    answers = Answers()
    busy(srv, answers, "ranked")
    for label, priority in (("low-1", 3), ("low-2", 3), ("default", 0)):
        queue(srv, answers, "ranked", label,
              lambda p=priority: client.infer("ranked", inputs(SHORT), priority=p, client_timeout=120))
    queue(srv, answers, "ranked", "high-http", lambda: http.infer("ranked", inputs(SHORT, lib=th), priority=1))
    assert not answers.done("long"), "the long run ended while requests were queued: the test proves nothing"
    answers.join()
    assert not answers.errors, answers.errors
    assert queued_order(answers) == ["high-http", "default", "low-1", "low-2"]


def test_priority_orders_the_requests_of_a_stream(srv):
    """ModelStreamInfer's requests share the model's queue: behind a long run, a stream's
    two low requests and then its high one are answered high first (the stream writes its
    answers as they come)."""
    client = tc.InferenceServerClient(srv.url)
    answers, order, lock = Answers(), [], threading.Lock()

    def answered(result, error) -> None:
        with lock:
            order.append(error if error is not None else result.get_response().id)

    busy(srv, answers, "ranked")
    client.start_stream(callback=answered, stream_timeout=120)
    try:
        for request_id, priority in (("low-1", 3), ("low-2", 3), ("high", 1)):
            before = queued(srv, "ranked")
            client.async_stream_infer("ranked", inputs(SHORT), request_id=request_id, priority=priority)
            wait_for(f"{request_id} in the queue", lambda b=before: queued(srv, "ranked") == b + 1)
        assert not answers.done("long"), "the long run ended while requests were queued: the test proves nothing"
        wait_for("the stream's answers", lambda: len(order) == 3)
    finally:
        client.stop_stream()
    answers.join()
    assert order == ["high", "low-1", "low-2"]


def test_each_level_has_its_own_queue_policy(srv):
    """priority_queue_policy: level 1 holds two requests and honours a request's timeout;
    level 2 (the default_queue_policy) holds one and does not. A full level refuses at once
    (REJECTED), while the other still takes requests; level 1 runs first."""
    client = tc.InferenceServerClient(srv.url)
    answers = Answers()
    busy(srv, answers, "levelled")
    rejected = failures(srv, "levelled", "REJECTED")
    with expect_error(grpc.StatusCode.UNAVAILABLE, "timed out in the queue", "its timeout parameter"):
        client.infer("levelled", inputs(2), priority=1, timeout=200_000, client_timeout=120)
    queue(srv, answers, "levelled", "default", lambda: client.infer("levelled", inputs(SHORT), client_timeout=120))
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "has 1 requests queued at priority level 2"):
        client.infer("levelled", inputs(2), priority=2, timeout=1)
    for label in ("high-1", "high-2"):
        queue(srv, answers, "levelled", label,
              lambda: client.infer("levelled", inputs(SHORT), priority=1, client_timeout=120))
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "has 2 requests queued at priority level 1"):
        client.infer("levelled", inputs(2), priority=1)
    assert not answers.done("long"), "the long run ended while requests were queued: the test proves nothing"
    answers.join()
    assert not answers.errors, answers.errors
    assert queued_order(answers) == ["high-1", "high-2", "default"]
    assert failures(srv, "levelled", "REJECTED") == rejected + 3


def test_a_priority_over_the_models_levels_is_invalid(srv):
    client, http = tc.InferenceServerClient(srv.url), th.InferenceServerClient(srv.http_url)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "priority", "priority_levels (3)"):
        client.infer("ranked", inputs(2), priority=4)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "priority", "priority_levels (3)"):
        http.infer("ranked", inputs(2, lib=th), priority=4)
    for priority in (1, 3):  # the levels there are
        assert client.infer("ranked", inputs(2), priority=priority).as_numpy("y")[0, 0] == 8.0


def test_priority_is_not_read_without_priority_levels(srv):
    """As in Triton: a model of one level runs any priority in arrival order."""
    assert tc.InferenceServerClient(srv.url).infer("plain", inputs(2), priority=7).as_numpy("y")[0, 0] == 8.0


# -- the timeout parameter ---------------------------------------------------------

@pytest.mark.parametrize("model", ["ranked", "capped"])
def test_a_request_timeout_rejects_a_request_that_waits_longer(srv, model):
    """With allow_timeout_override, a request's timeout (µs) shorter than the default (none,
    or 60 s) bounds its wait: UNAVAILABLE when it passes, over gRPC and HTTP, never run,
    counted as a failure (REJECTED); the long run goes on."""
    client, http = tc.InferenceServerClient(srv.url), th.InferenceServerClient(srv.http_url)
    answers = Answers()
    busy(srv, answers, model)
    before = fail_count(srv, model), failures(srv, model, "REJECTED")
    with expect_error(grpc.StatusCode.UNAVAILABLE, "timed out in the queue", "its timeout parameter"):
        client.infer(model, inputs(2), timeout=200_000, client_timeout=120)
    with expect_error(grpc.StatusCode.UNAVAILABLE, "timed out in the queue", "its timeout parameter"):
        http.infer(model, inputs(2, lib=th), timeout=200_000)
    assert not answers.done("long"), "answered when the instance freed up, not when the timeout passed"
    assert fail_count(srv, model) == before[0] + 2
    assert failures(srv, model, "REJECTED") == before[1] + 2
    answers.join()
    assert not answers.errors, answers.errors


def test_a_request_timeout_is_not_read_without_the_override(srv):
    """As in Triton: a model that does not allow the override ignores a request's timeout;
    the request waits its turn and runs."""
    client = tc.InferenceServerClient(srv.url)
    answers = Answers()
    busy(srv, answers, "plain")
    waiting = pending(srv, "plain")
    answers.send("timed", lambda: client.infer("plain", inputs(SHORT), timeout=1, client_timeout=120))
    wait_for("the timed call in the server", lambda: pending(srv, "plain") == waiting + 1)
    assert not answers.done("long")
    answers.join()
    assert not answers.errors, answers.errors
    assert queued_order(answers) == ["timed"]


def test_a_malformed_timeout_or_priority_is_invalid(srv):
    client = tc.InferenceServerClient(srv.url)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "parameter 'timeout' must be a non-negative integer"):
        client.infer("capped", inputs(2), timeout=-5)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "parameter 'priority' must be a non-negative integer"):
        _raw_infer(srv, "ranked", {"priority": "high"})


def _raw_infer(srv: ServerProcess, model: str, parameters: dict[str, object]) -> None:
    """A ModelInfer whose request parameters tritonclient would not send (a string priority)."""
    request = pb.ModelInferRequest(model_name=model)
    for tensor in inputs(2):
        request.inputs.append(tensor._get_tensor())
        request.raw_input_contents.append(tensor._get_content())
    for key, value in parameters.items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        else:
            request.parameters[key].int64_param = value
    pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url)).ModelInfer(request, timeout=60)


# -- cancellation, counted ----------------------------------------------------------

@pytest.mark.parametrize("model", ["ranked", "plain", "direct"])
def test_a_cancelled_queued_request_counts_as_a_failure_canceled(srv, model):
    """A queued call cancelled by its client leaves the queue unrun: one more failure in
    ModelStatistics and in nv_inference_request_failure{reason="CANCELED"}, on every
    queue (the full path's, the native plane's batching and direct lines)."""
    answers = Answers()
    client = tc.InferenceServerClient(srv.url)
    if model == "direct":
        from ops_helpers import slow_inputs

        busy(srv, answers, model, slow_inputs(LONG))
        tensors = slow_inputs(2)
    else:
        busy(srv, answers, model)
        tensors = inputs(2)
    before = fail_count(srv, model), failures(srv, model, "CANCELED")
    request = pb.ModelInferRequest(model_name=model)
    for tensor in tensors:
        request.inputs.append(tensor._get_tensor())
        request.raw_input_contents.append(tensor._get_content())
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url))
    waiting = pending(srv, model)
    call = stub.ModelInfer.future(request)
    wait_for("the call in the queue", lambda: pending(srv, model) == waiting + 1)
    call.cancel()
    wait_for("the cancelled call counted", lambda: failures(srv, model, "CANCELED") == before[1] + 1)
    assert fail_count(srv, model) == before[0] + 1
    assert not answers.done("long"), "the long run ended first: the call may have run, the test proves nothing"
    answers.join()
    assert not answers.errors, answers.errors
    stats = client.get_inference_statistics(model, "1").model_stats[0]
    assert stats.inference_stats.fail.count == before[0] + 1  # the cancelled call never ran, nor failed again


@pytest.mark.parametrize("model", ["ranked", "plain"])
def test_a_deadline_that_passes_in_the_queue_counts_as_canceled(srv, model):
    """A gRPC deadline is the client giving up (gRPC cancels the call): REJECTED is for the
    server's own refusals. On the full path's queue and the native plane's alike."""
    client = tc.InferenceServerClient(srv.url)
    answers = Answers()
    busy(srv, answers, model)
    before = failures(srv, model, "CANCELED"), failures(srv, model, "REJECTED")
    with expect_error(grpc.StatusCode.DEADLINE_EXCEEDED):
        client.infer(model, inputs(2), client_timeout=0.3)
    wait_for("the late call counted", lambda: failures(srv, model, "CANCELED") == before[0] + 1)
    assert not answers.done("long"), "the long run ended first: the call may have run, the test proves nothing"
    assert failures(srv, model, "REJECTED") == before[1]
    answers.join()
    assert not answers.errors, answers.errors


def test_failures_carry_a_reason_label(srv):
    """Every version has a sample per reason, as recent Triton writes them."""
    text = scrape(srv.metrics_port)
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert sample(text, "nv_inference_request_failure", model="ranked", version="1", reason=reason) is not None


# -- in process: the order the scheduler forms batches in ---------------------------

def test_a_batch_starts_with_the_highest_level_and_fills_in_level_order():
    """One instance held by a first batch; then levels 3, 3, 2, 1 queue (batches of two):
    the next batches are [1, 2] and [3, 3], each level's requests in arrival order."""
    from icow.runtime.execution import Batching, QueuePolicy
    from icow.runtime.request_policy import Scheduling
    from icow.runtime.scheduler import BatchScheduler, Job

    running, release, batches = threading.Event(), threading.Event(), []

    def execute(instance: object, jobs: list[Job]) -> None:
        if jobs[0].payload == "first":
            running.set()
            release.wait(60)
        batches.append([job.payload for job in jobs])
        for job in jobs:
            job.result = job.payload

    scheduler = BatchScheduler("m", [object()], QueuePolicy(0, 0, False, 3, 2), execute, Batching(2, frozenset(), 0))
    threads = []

    def submit(payload: str, level: int, rows: int = 1) -> None:
        job = Job(payload, rows, "same", None, None, Scheduling(level))
        threads.append(threading.Thread(target=scheduler.run, args=(job,), daemon=True))
        threads[-1].start()

    submit("first", 2, rows=2)  # a full batch: it leaves at once and holds the instance
    assert running.wait(60), "the first batch never ran"
    for n, (payload, level) in enumerate((("low-1", 3), ("low-2", 3), ("default", 2), ("high", 1))):
        submit(payload, level)
        wait_for(f"{payload} queued", lambda n=n: scheduler.queued == n + 1)
    release.set()
    for thread in threads:
        thread.join(60)
    scheduler.close()
    assert batches == [["first"], ["high", "default"], ["low-1", "low-2"]]
    assert scheduler.queued == 0


def test_the_server_lists_the_schedule_policy_extension(srv):
    assert "schedule_policy" in tc.InferenceServerClient(srv.url).get_server_metadata().extensions
    assert "schedule_policy" in th.InferenceServerClient(srv.http_url).get_server_metadata()["extensions"]
