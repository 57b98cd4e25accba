"""Dynamic batching, instances, the bounded queue and deadlines: through the real
server with tritonclient, and the scheduler in process where timing must be exact."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import make_models
from batching_helpers import TABLE, build_batching_repository, lookup_model
from helpers import expect_error, infer_input, reference, wait_for
from icow.protocol.errors import InferenceServerError
from icow.repository.repository import Repository
from ops_helpers import pending, slow_inputs

CLIENTS = 16


@pytest.fixture(scope="module")
def batching_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_batching_repository(tmp_path_factory.mktemp("batching") / "models")


@pytest.fixture(scope="module")
def batching_server(batching_repo, codec, plane, tmp_path_factory):
    from conftest import start_server

    srv = start_server(batching_repo, "--no-metrics", "--workers", "32", "--codec", codec, "--data-plane", plane,
                       "--allow-client-shm",
                       log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


def _concurrently(work, count: int = CLIENTS) -> list:
    """``work(i)`` for i in range(count), all started together; their results."""
    start = threading.Barrier(count)

    def run(i):
        start.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(batching_server, batching_repo):
    url = batching_server.url
    before = tc.InferenceServerClient(url).get_inference_statistics("mlp").model_stats[0]
    per_client = 6

    def client_work(i):
        client = tc.InferenceServerClient(url)
        rng = np.random.default_rng(i)
        checked = 0
        for _ in range(per_client):
            x = rng.standard_normal((int(rng.integers(1, 5)), 16), dtype=np.float32)
            y = client.infer("mlp", [infer_input("input", x, "FP32")]).as_numpy("output")
            expected = reference(batching_repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
            checked += len(x)
        return checked

    rows = sum(_concurrently(client_work))
    after = tc.InferenceServerClient(url).get_inference_statistics("mlp").model_stats[0]
    requests = CLIENTS * per_client
    executions = after.execution_count - before.execution_count
    assert after.inference_count - before.inference_count == rows
    assert after.inference_stats.success.count - before.inference_stats.success.count == requests
    assert executions < requests, "no two requests shared a run"
    batch_sizes = {b.batch_size for b in after.batch_stats}
    assert max(batch_sizes) > 4  # larger than any one request: rows of several requests
    assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count
    assert after.inference_stats.queue.count == after.inference_stats.success.count


def test_bf16_requests_batched_bit_for_bit(batching_server):
    """BF16 rows of several requests share a run (stacked as bits: numpy has no bfloat16)
    and each request gets its own bits back."""
    url = batching_server.url
    before = tc.InferenceServerClient(url).get_inference_statistics("identity_BF16").model_stats[0]
    per_client = 4

    def client_work(i):
        client = tc.InferenceServerClient(url)
        rng = np.random.default_rng(i)
        for _ in range(per_client):
            bits = rng.integers(0, 2**16, (int(rng.integers(1, 4)), 3), dtype=np.uint16)
            tensor = tc.InferInput("x", list(bits.shape), "BF16")
            tensor.set_data_from_numpy(bits.view(ml_dtypes.bfloat16))
            got = client.infer("identity_BF16", [tensor]).as_numpy("y")
            np.testing.assert_array_equal(got.view(np.uint16), bits)

    _concurrently(client_work)
    after = tc.InferenceServerClient(url).get_inference_statistics("identity_BF16").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == CLIENTS * per_client
    assert after.execution_count - before.execution_count < CLIENTS * per_client, "no two requests shared a run"


def test_batched_requests_with_inputs_and_outputs_in_shared_memory(batching_server, batching_repo):
    """Each caller's rows go into its own region: batching's scatter writes there."""
    import secrets

    import tritonclient.utils.shared_memory as shm

    url = batching_server.url

    def client_work(i):
        client = tc.InferenceServerClient(url)
        x = np.random.default_rng(i).standard_normal((1 + i % 3, 16), dtype=np.float32)
        y_bytes = x.shape[0] * 4 * 4
        key = f"/icow-batch-{secrets.token_hex(4)}"
        handle = shm.create_shared_memory_region(f"r{i}", key, x.nbytes + y_bytes)
        try:
            shm.set_shared_memory_region(handle, [x])
            client.register_system_shared_memory(f"r{i}", key, x.nbytes + y_bytes)
            tensor = tc.InferInput("input", list(x.shape), "FP32")
            tensor.set_shared_memory(f"r{i}", x.nbytes)
            output = tc.InferRequestedOutput("output")
            output.set_shared_memory(f"r{i}", y_bytes, offset=x.nbytes)
            for _ in range(4):
                client.infer("mlp", [tensor], outputs=[output])
                y = shm.get_contents_as_numpy(handle, np.float32, [x.shape[0], 4], offset=x.nbytes)
                expected = reference(batching_repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]
                np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
            client.unregister_system_shared_memory(f"r{i}")
        finally:
            shm.destroy_shared_memory_region(handle)

    before = tc.InferenceServerClient(url).get_inference_statistics("mlp").model_stats[0]
    _concurrently(client_work, 8)
    after = tc.InferenceServerClient(url).get_inference_statistics("mlp").model_stats[0]
    assert after.execution_count - before.execution_count < 32  # some of the 32 requests shared a run


def test_requests_that_differ_beyond_the_batch_dimension_are_never_mixed(batching_server):
    url = batching_server.url

    def client_work(i):
        client = tc.InferenceServerClient(url)
        width = 2 + i % 3
        for n in range(4):
            x = np.full((1 + n % 2, width), i * 100 + n, dtype=np.float32)
            y = client.infer("wide", [infer_input("x", x, "FP32")]).as_numpy("y")
            assert np.array_equal(y, x)

    _concurrently(client_work)
    stats = tc.InferenceServerClient(url).get_inference_statistics("wide").model_stats[0]
    assert stats.execution_count < stats.inference_stats.success.count


def test_a_failing_request_fails_alone_inside_a_batch(batching_server):
    url = batching_server.url

    def client_work(i):
        client = tc.InferenceServerClient(url)
        index = 99 if i % 4 == 0 else i % 10  # one client in four asks for a row the table lacks
        x = np.array([[index]], dtype=np.int64)
        try:
            return client.infer("lookup", [infer_input("i", x, "INT64")]).as_numpy("y")[0, 0]
        except tc.InferenceServerException as e:
            return e

    results = _concurrently(client_work)
    for i, result in enumerate(results):
        if i % 4 == 0:
            assert isinstance(result, tc.InferenceServerException), result
            assert result.status() == "StatusCode.INVALID_ARGUMENT" and "out of" in result.message()
        else:
            assert result == TABLE[i % 10]
    y = tc.InferenceServerClient(url).infer("lookup", [infer_input("i", np.array([[3]], np.int64), "INT64")])
    assert y.as_numpy("y")[0, 0] == TABLE[3]  # still serving


def test_a_request_over_max_batch_size_is_invalid(batching_server):
    client = tc.InferenceServerClient(batching_server.url)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "batch size 9 is outside 1..8"):
        client.infer("mlp", [infer_input("input", np.zeros((9, 16), np.float32), "FP32")])


# -- the queue: limit, deadlines, cancellation ----------------------------------
# Calls made one after another may reach the server in another order, so each step
# waits until the server shows the last one: in its pending count (Triton's gauge,
# queued or running) or its statistics.

SLOW = 2500  # the ``slow`` model's size: about half a second of matrix product here
LONG = 4000  # about 2 s: a run that outlasts a deadline of LATE with room to spare
LATE = 0.5  # seconds: the deadline of a call that waits behind a LONG run


def _slow_request(x: float = 1.0, size: int = SLOW) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow")
    for tensor in slow_inputs(size, x):
        request.inputs.append(tensor._get_tensor())
        request.raw_input_contents.append(tensor._get_content())
    return request


def _stats(url: str):
    return tc.InferenceServerClient(url).get_inference_statistics("slow").model_stats[0]


def _running_alone(srv, stub, request: pb.ModelInferRequest) -> grpc.Future:
    """``request`` started, and in the server before anything else is sent."""
    running = stub.ModelInfer.future(request)
    wait_for("the first call to reach the server", lambda: pending(srv, "slow") == 1)
    return running


def _queued_behind(srv, stub) -> grpc.Future:
    """A second call, in the server behind the first (which still runs)."""
    queued = stub.ModelInfer.future(_slow_request())
    wait_for("the second call to reach the server", lambda: pending(srv, "slow") == 2)
    assert _stats(srv.url).execution_count == 0, "the first run ended before the second call came: SLOW is too small"
    return queued


def test_a_full_queue_answers_resource_exhausted_at_once(make_server, ops_repo):
    srv = make_server(ops_repo, "--max-queue-size", "1")
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url))
    running = _running_alone(srv, stub, _slow_request())
    queued = _queued_behind(srv, stub)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(_slow_request())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue_size" in refused.value.details()
    assert not running.done()  # refused at once, not after waiting its turn
    assert running.result().model_name == queued.result().model_name == "slow"
    assert _stats(srv.url).execution_count == 2


def test_a_request_whose_deadline_passes_in_the_queue_never_runs(make_server, ops_repo):
    srv = make_server(ops_repo)
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url))
    running = _running_alone(srv, stub, _slow_request(size=LONG))
    with pytest.raises(grpc.RpcError) as late:
        stub.ModelInfer(_slow_request(), timeout=LATE)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for("the late call to fail in the server", lambda: _stats(srv.url).inference_stats.fail.count == 1)
    assert not running.done(), "the long run ended before the late call's deadline: the test proves nothing"
    running.result()
    wait_for("nothing left to run", lambda: pending(srv, "slow") == 0)
    assert _stats(srv.url).execution_count == 1


def test_a_cancelled_call_frees_its_place_in_the_queue(make_server, ops_repo):
    srv = make_server(ops_repo, "--max-queue-size", "1")
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url))
    running = _running_alone(srv, stub, _slow_request())
    cancelled = _queued_behind(srv, stub)
    cancelled.cancel()
    wait_for("the cancelled call to leave the queue",
             lambda: _stats(srv.url).inference_stats.fail.count == 1 and pending(srv, "slow") == 1)
    after = stub.ModelInfer.future(_slow_request(2.0))  # takes the freed place
    assert running.result() and after.result()
    assert _stats(srv.url).execution_count == 2


# -- in process: instances and queue policy from config.pbtxt -------------------

def _repository(tmp_path: Path, config: str, model=None) -> Repository:
    make_models.write(model or lookup_model(), tmp_path, "m")
    (tmp_path / "m" / "config.pbtxt").write_text(config)
    repository = Repository(tmp_path)
    repository.load("m")
    return repository


class _Held:
    """Holds every run of ``model`` until ``release`` is set, counting the runs under
    way: the scheduler's decisions can then be seen while they stand."""

    def __init__(self, model) -> None:
        self.now = self.max = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._run = model._session_run
        model._session_run = self._held_run

    def _held_run(self, instance, names, feeds):
        with self._lock:
            self.now += 1
            self.max = max(self.max, self.now)
        try:
            assert self.release.wait(60), "the test never released the run"
        finally:
            with self._lock:
                self.now -= 1
        return self._run(instance, names, feeds)


@pytest.mark.parametrize("count", [1, 3])
def test_instances_run_in_parallel_up_to_their_count(tmp_path, count):
    config = f"max_batch_size: 8\ninstance_group {{ count: {count} kind: KIND_CPU }}\n"
    model = _repository(tmp_path, config).get("m")
    assert len(model.instances) == count
    held = _Held(model)
    with ThreadPoolExecutor(6) as pool:
        calls = [pool.submit(model.run, {"i": np.array([[i % 10]], np.int64)}) for i in range(6)]
        wait_for(f"{count} runs under way, the other calls queued",
                 lambda: held.now == count and model.scheduler.queued == 6 - count)
        held.release.set()
        results = [call.result()["y"][0, 0] for call in calls]
    assert results == [TABLE[i % 10] for i in range(6)]
    assert held.max == count


def test_thread_counts_come_from_parameters_or_a_share_of_the_cpus(tmp_path):
    from icow.runtime import execution as scheduling

    config = ('instance_group { count: 2 }\n'
              'parameters { key: "intra_op_thread_count" value: { string_value: "3" } }\n')
    model = _repository(tmp_path, config).get("m")
    options = model.instances[0].session.get_session_options()
    assert options.intra_op_num_threads == 3
    parsed = scheduling.instances(model.config, cpus=8)
    assert (parsed.count, parsed.intra_op_threads) == (2, 3)
    model.config.parameters.clear()
    assert scheduling.instances(model.config, cpus=8).intra_op_threads == 4  # 8 CPUs, 2 instances


def test_config_queue_policy_bounds_the_queue(tmp_path):
    config = ("max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 0 "
              "default_queue_policy { max_queue_size: 2 } }\n")
    model = _repository(tmp_path, config).get("m")
    held = _Held(model)

    def call(i):
        try:
            return model.run({"i": np.array([[i]], np.int64)})["y"][0, 0]
        except InferenceServerError as e:
            return e.code

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(call, 1)
        wait_for("the first call to run (out of the queue)", lambda: held.now == 1)
        rest = [pool.submit(call, i) for i in range(5)]
        wait_for("two calls queued, three answered",
                 lambda: model.scheduler.queued == 2 and sum(f.done() for f in rest) == 3)
        held.release.set()
        results = [f.result() for f in rest]
        assert first.result() == TABLE[1]
    answered = [(i, r) for i, r in enumerate(results) if not isinstance(r, grpc.StatusCode)]
    assert len(answered) == 2  # two waited in the queue, three were refused
    assert all(r == TABLE[i] for i, r in answered)
    assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 3


@pytest.mark.parametrize("config, reason", [
    ("max_batch_size: 0\ndynamic_batching { }\n", "dynamic_batching needs max_batch_size >= 1"),
    ("instance_group { kind: KIND_MODEL }\n", "KIND_MODEL is not supported"),
    ("max_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 8 ] }\n", "preferred_batch_size 8"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }\n', "intra_op_thread_count"),
])
def test_a_bad_scheduling_config_makes_the_model_unavailable_with_its_reason(tmp_path, config, reason):
    make_models.write(lookup_model(), tmp_path, "m")
    (tmp_path / "m" / "config.pbtxt").write_text(config)
    repository = Repository(tmp_path)
    loaded = repository.load("m")
    assert reason in loaded.versions[1].reason


def _batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("icow-batch-m-")]


def test_closing_a_batching_model_stops_its_threads(tmp_path):
    before = _batch_threads()  # other tests' models may not be collected yet
    model = _repository(tmp_path, "max_batch_size: 8\ndynamic_batching { }\n").get("m")
    threads = [t for t in _batch_threads() if t not in before]
    assert threads
    model.close()
    for thread in threads:
        thread.join(timeout=60)  # a limit for a hang, not a measure of speed
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(InferenceServerError, match="being unloaded"):
        model.run({"i": np.array([[1]], np.int64)})


def test_a_dropped_batching_model_stops_its_threads(tmp_path):
    import gc

    before = _batch_threads()
    model = _repository(tmp_path, "max_batch_size: 8\ninstance_group { count: 2 }\ndynamic_batching { }\n").get("m")
    assert model.run({"i": np.array([[1]], np.int64)})["y"][0, 0] == TABLE[1]
    threads = [t for t in _batch_threads() if t not in before]
    assert len(threads) == 2
    del model  # its repository went with the expression that made it
    gc.collect()
    for thread in threads:
        thread.join(timeout=60)  # a limit for a hang, not a measure of speed
    assert not any(t.is_alive() for t in threads)
