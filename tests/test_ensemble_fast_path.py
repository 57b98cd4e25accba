"""Ensembles on the C++ fast path (ext/plane/ensemble.hpp), in this process on the
native plane, on grpcio (the fast path in its handler) and on grpcio with the Python
path only: the same answers, statistics and refusals; intermediate tensors handed
from run to run with no copy; a step of a batching model batched with that model's
calls (in C++ on the native plane); what the fast path cannot serve (a nested
ensemble, a step that fails, an unloaded step) left to the Python path.

``_plane.staged_bytes()`` counts the only tensor copies a bound run makes (small
tensors staged): it moves on the fast path only, so it also shows which path ran."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from onnx import TensorProto, helper

import make_models
from helpers import expect_error, wait_for
from icow.server import InferenceServer, ServerOptions
from ops_helpers import slow_inputs
from test_ensemble import build_repository, check_diamond, ensemble_config, grpc_input, http_input, write_ensemble
from test_native_plane import fast_counts, needs_plane

pytestmark = needs_plane
WIDE = 1 << 16  # FP32 values per row: 256 KiB, far over the staging limit (binding.hpp)
X = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
PLANES = ["native", "grpcio", "full"]
# slow's run for n: 2 n³ FLOP. At 6000, 432 GFLOP: seconds on two cores even at their peak
# (4000 ran within CI's 1 s deadline), so a 1 s deadline passes while a request waits behind it.
LONG = 6000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_ensemble's models (``paired`` with room for 4 in its queue); ``wide``, a chain of
    three steps on 256 KiB rows; ``gated``, an ensemble of one step on ``slow`` (one
    instance, a run as long as its input)."""
    repo = build_repository(tmp_path_factory.mktemp("fast") / "models")
    (repo / "paired" / "config.pbtxt").write_text(  # room for a forming batch and a call beyond the server's 1
        "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 60000000\n"
        "  default_queue_policy { max_queue_size: 4 } }\n")
    make_models.write(make_models.elementwise("Mul", 2.0, width=WIDE), repo, "wdouble")
    make_models.write(make_models.elementwise("Add", 1.0, width=WIDE), repo, "winc")
    wide = [("wdouble", -1, {"x": "IN"}, {"y": "D"}), ("winc", -1, {"x": "D"}, {"y": "I"}),
            ("wdouble", -1, {"x": "I"}, {"y": "OUT"})]
    write_ensemble(repo, "wide", ensemble_config(wide, [("IN", "TYPE_FP32", [WIDE])], [("OUT", "TYPE_FP32", [WIDE])],
                                                 max_batch_size=2))
    make_models.write(make_models._model(  # ops_helpers' slow model, its sum kept as [1, 1]
        [helper.make_node("Expand", ["x", "n"], ["e"]), helper.make_node("MatMul", ["e", "e"], ["p"]),
         helper.make_node("ReduceSum", ["p"], ["y"], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])]), repo, "slow")
    (repo / "slow" / "config.pbtxt").write_text("max_batch_size: 0\ninstance_group { count: 1 kind: KIND_CPU }\n")
    write_ensemble(repo, "gated", ensemble_config(
        [("slow", -1, {"x": "X", "n": "N"}, {"y": "S"})], [("X", "TYPE_FP32", [1]), ("N", "TYPE_INT64", [2])],
        [("S", "TYPE_FP32", [1, 1])], max_batch_size=0))
    return repo


@pytest.fixture(scope="module")
def servers(repo: Path) -> Iterator[dict[str, InferenceServer]]:
    """One request may wait per model (max_queue_size 1); explicit mode, for the unload test."""
    def start(plane: str, **options) -> InferenceServer:
        server = InferenceServer(ServerOptions(repository=repo, port=0, metrics_port=None, http_port=0,
                                               data_plane=plane, max_queue_size=1, model_control_mode="explicit",
                                               load_models=["*"], **options))
        server.start()
        return server

    started = {"native": start("native"), "grpcio": start("grpcio"), "full": start("grpcio", fast_path=False)}
    yield started
    for server in started.values():
        server.stop(1.0).wait(10)


def staged() -> int:
    from icow.services.plane import _plane

    return _plane.staged_bytes()


def served_fast(server: InferenceServer) -> int:
    return fast_counts(server)["served_fast"] if server.options.fast_path else 0


def stats(client: tc.InferenceServerClient, name: str) -> tuple[int, int]:
    """(successes, failures) of the model's versions."""
    entry = client.get_inference_statistics(name, as_json=True)["model_stats"][0]["inference_stats"]
    return int(entry.get("success", {}).get("count", 0)), int(entry.get("fail", {}).get("count", 0))


# -- answers and statistics ----------------------------------------------------------

@pytest.mark.parametrize("plane", PLANES)
def test_chains_and_diamonds_answer_as_numpy_on_the_fast_path(servers, plane):
    server = servers[plane]
    client = tc.InferenceServerClient(server.address)
    before = served_fast(server)
    np.testing.assert_allclose(client.infer("chain", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2)
    check_diamond(client, X)
    labelled = client.infer("labelled", [grpc_input(X)])  # its step runs 'scaled' version 'stable' (1)
    np.testing.assert_allclose(labelled.as_numpy("OUT"), 2 * X)
    np.testing.assert_allclose(client.infer("latest", [grpc_input(X)]).as_numpy("OUT"), 3 * X)
    assert served_fast(server) - before == (5 if plane != "full" else 0)


@pytest.mark.parametrize("plane", PLANES)
def test_what_the_fast_path_cannot_run_goes_to_the_python_path(servers, plane):
    """A nested ensemble (a step that is an ensemble) and a failing step: answered by the
    Python path, as on a server without the fast path."""
    server = servers[plane]
    client = tc.InferenceServerClient(server.address)
    counts = fast_counts(server) if server.options.fast_path else None
    np.testing.assert_allclose(client.infer("nested", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2 + 1)
    with expect_error(grpc.StatusCode.INTERNAL, "ensemble 'failing' step 1 (model 'regroup') version 1 failed"):
        client.infer("failing", [grpc_input(X[:1])])
    if counts is not None:
        after = fast_counts(server)
        assert after["served_fast"] == counts["served_fast"] and after["handed_on"] - counts["handed_on"] == 2


@pytest.mark.parametrize("plane", PLANES)
def test_statistics_count_the_ensemble_and_each_step(servers, plane):
    client = tc.InferenceServerClient(servers[plane].address)
    names = ("chain", "double", "inc")
    before = {n: stats(client, n) for n in names}
    for _ in range(3):
        client.infer("chain", [grpc_input(X)])
    grown = {n: stats(client, n)[0] - before[n][0] for n in names}
    assert grown == {"chain": 3, "double": 6, "inc": 3}  # 'double' is two of the three steps


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_requests_take_the_same_path(servers, plane, binary):
    server = servers[plane]
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    before = staged()
    result = client.infer("chain", [http_input(X, binary)],
                          outputs=[th.InferRequestedOutput("OUT", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("OUT"), (2 * X + 1) * 2)
    # Binary tensors reach the fast path (each step stages 32 bytes in, 32 out); JSON ones do not.
    assert staged() - before == (3 * 64 if binary and plane != "full" else 0)


# -- copies ------------------------------------------------------------------------

@pytest.mark.parametrize("plane", PLANES)
def test_intermediate_tensors_are_handed_on_with_no_copy(servers, plane):
    """256 KiB rows: each step's run reads its input where the last run wrote it and the
    last step writes into the response: no tensor byte is copied. Small rows are staged
    (cheaper than binding anew): 64 bytes per step, counted."""
    client = tc.InferenceServerClient(servers[plane].address)
    x = np.random.default_rng(1).random((2, WIDE), dtype=np.float32)
    before = staged()
    for _ in range(3):
        np.testing.assert_allclose(client.infer("wide", [grpc_input(x)]).as_numpy("OUT"), (2 * x + 1) * 2)
    assert staged() == before
    client.infer("chain", [grpc_input(X)])
    assert staged() - before == (3 * 64 if plane != "full" else 0)


# -- queues, deadlines, unloading ----------------------------------------------------

def in_background(server: InferenceServer, call) -> tuple[threading.Thread, dict]:
    """``call`` on a thread; its result or error in the dict once it ends."""
    result: dict = {}

    def run() -> None:
        try:
            result["answer"] = call()
        except Exception as e:  # noqa: BLE001 - the test reads it
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("plane", PLANES)
def test_a_step_waits_in_its_models_queue_which_bounds_and_times_it(servers, plane):
    """``slow`` busy with a long run: an ensemble request waits in its queue (seen as
    pending), the next is refused as the queue is full, one with a deadline expires;
    all in the Python path's words, naming the step."""
    server = servers[plane]
    client = tc.InferenceServerClient(server.address)
    slow = server.repository.get("slow").stats
    wait_for("slow to be idle", lambda: slow.pending == 0)
    long_run, long_result = in_background(server, lambda: client.infer("slow", slow_inputs(LONG)))
    wait_for("the long run", lambda: slow.pending == 1)
    gated = [grpc_input(np.array([1.0], np.float32), "X"), tc.InferInput("N", [2], "INT64")]
    gated[1].set_data_from_numpy(np.array([2, 2], np.int64))
    waiting, waited = in_background(server, lambda: client.infer("gated", gated))
    wait_for("the ensemble's step in slow's queue", lambda: slow.pending == 2)
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "ensemble 'gated' step 0 (model 'slow') version 1 failed: "
                      "model 'slow' has 1 requests queued, its limit (max_queue_size); retry later"):
        client.infer("gated", gated)
    long_run.join(120)
    waiting.join(120)
    assert waited["answer"].as_numpy("S").item() == pytest.approx(8.0)  # x² n³
    assert long_result["answer"].as_numpy("y").item() == pytest.approx(float(LONG) ** 3, rel=5e-2)

    long_run, long_result = in_background(server, lambda: client.infer("slow", slow_inputs(LONG)))
    wait_for("the long run", lambda: slow.pending == 1)
    with expect_error(grpc.StatusCode.DEADLINE_EXCEEDED):
        client.infer("gated", gated, client_timeout=1.0)
    long_run.join(120)
    assert "answer" in long_result


@pytest.mark.parametrize("plane", PLANES)
def test_an_unloaded_step_leaves_the_ensemble_unready_and_a_reload_restores_the_fast_path(servers, plane):
    server = servers[plane]
    client = tc.InferenceServerClient(server.address)
    client.unload_model("inc")
    try:
        with expect_error(grpc.StatusCode.UNAVAILABLE, "ensemble 'chain' is not ready: step 1 (model 'inc')"):
            client.infer("chain", [grpc_input(X)])
    finally:
        client.load_model("inc")
    before = (served_fast(server), staged())
    np.testing.assert_allclose(client.infer("chain", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2)
    fast = plane != "full"
    assert (served_fast(server) - before[0], staged() - before[1]) == ((1, 3 * 64) if fast else (0, 0))


# -- a step of a batching model --------------------------------------------------------

@pytest.mark.parametrize("plane", PLANES)
def test_a_batching_step_joins_its_models_queue_and_batches_with_a_direct_call(servers, plane):
    """``paired`` runs a batch once it holds two rows: the ensemble's step and a direct
    call answer together, as one batch of two; on the native plane both in C++ (its
    queues batch there), elsewhere in Python's scheduler."""
    server = servers[plane]
    client = tc.InferenceServerClient(server.address)
    paired = server.repository.get("paired").stats
    before = (served_fast(server), paired.snapshot().execution_count, stats(client, "paired")[0])
    one = X[:1]
    waiting, piped = in_background(server, lambda: client.infer("waiting", [grpc_input(one)]))
    wait_for("the step in paired's queue", lambda: paired.pending == 1)
    np.testing.assert_allclose(client.infer("paired", [grpc_input(one, "x")]).as_numpy("y"), 2 * one)
    waiting.join(60)
    np.testing.assert_allclose(piped["answer"].as_numpy("OUT"), 2 * one + 1)
    assert paired.snapshot().execution_count - before[1] == 1  # one run for both
    assert stats(client, "paired")[0] - before[2] == 2
    assert served_fast(server) - before[0] == (2 if plane == "native" else 0)


@pytest.mark.parametrize("plane", PLANES)
def test_a_cancelled_call_takes_its_step_out_of_a_forming_batch(servers, plane):
    """The step waits for a second row that never comes; the client cancels: the step
    leaves the batch (a failure of 'paired' and of the ensemble), and nothing runs."""
    server = servers[plane]
    client = tc.InferenceServerClient(server.address)
    paired = server.repository.get("paired").stats
    before = {n: stats(client, n) for n in ("waiting", "paired", "after")}
    cancelled = threading.Event()
    client.async_infer("waiting", [grpc_input(X[:1])], callback=lambda result, error: cancelled.set())
    wait_for("the step in paired's queue", lambda: paired.pending == 1)
    client.close()  # the channel goes: the call is cancelled
    wait_for("the step to leave the queue", lambda: paired.pending == 0)
    fresh = tc.InferenceServerClient(server.address)
    wait_for("the failures to be counted",
             lambda: (stats(fresh, "waiting")[1], stats(fresh, "paired")[1]) ==
             (before["waiting"][1] + 1, before["paired"][1] + 1))
    assert stats(fresh, "after")[0] == before["after"][0] and stats(fresh, "paired")[0] == before["paired"][0]
