"""The native data plane (docs/native-plane.md): icow._plane, a grpc++ server in
one process with grpcio's server and clients; its fast path answers exactly as the
full path does, for valid and for hostile requests.

The protocol tests run on both planes through conftest's ``server`` fixture; these
are the plane's own. Skipped where icow._plane was not built (no gRPC C++
libraries at build time), except the test of the fallback there."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tc

import make_models
from helpers import wait_for
from icow._proto import inference_pb2 as pb
from icow.server import InferenceServer, ServerOptions
from icow.services import plane as native_plane

needs_plane = pytest.mark.skipif(not native_plane.available() and not os.environ.get("ICOW_REQUIRE_CPP"),
                                 reason=native_plane.UNAVAILABLE_REASON or "")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MiB = 1 << 20
OPTIONS = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]


def request(rows: int, seed: int, model: str = "identity_FP32") -> tuple[bytes, np.ndarray]:
    """A ModelInfer request for an identity model ([batch, 3] FP32) and its input."""
    x = np.random.default_rng(seed).random((rows, 3), dtype=np.float32)
    message = pb.ModelInferRequest(model_name=model, id=str(seed), inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 3])],
        raw_input_contents=[x.tobytes()])
    return message.SerializeToString(), x


def output(data: bytes) -> np.ndarray:
    response = pb.ModelInferResponse.FromString(data)
    assert [o.name for o in response.outputs] == ["y"]
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(response.outputs[0].shape))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """identity_FP32 ([batch, 3]) with no batch limit, so that 4 MiB fit in one request;
    the batched twin; the examples (scale's versions, strings, mixed)."""
    from conftest import ROOT

    repo = tmp_path_factory.mktemp("plane") / "models"
    import shutil

    shutil.copytree(ROOT / "examples" / "models", repo)
    make_models.write(make_models.identity("FP32"), repo, "identity_FP32")
    (repo / "identity_FP32" / "config.pbtxt").write_text("max_batch_size: 0\n")
    make_models.write(make_models.identity("BF16"), repo, "identity_BF16")
    (repo / "identity_BF16" / "config.pbtxt").write_text("max_batch_size: 0\n")
    make_models.write(make_models.identity("FP32"), repo, "batched")
    (repo / "batched" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n")
    return repo


def start(repo: Path, plane: str, **options) -> InferenceServer:
    server = InferenceServer(ServerOptions(repository=repo, port=0, metrics_port=None, data_plane=plane,
                                           max_message_bytes=64 * MiB, **options))
    server.start()
    return server


@pytest.fixture(scope="module")
def servers(repo: Path) -> Iterator[dict[str, InferenceServer]]:
    """In this process: icow on the native plane, on grpcio (the fast path in its
    handler), on grpcio with the Python path only, and the plane's C++ echo."""
    native, grpcio = start(repo, "native"), start(repo, "grpcio")
    full = start(repo, "grpcio", fast_path=False)
    echo = native_plane._plane.Server("127.0.0.1:0", echo=True, max_message_bytes=64 * MiB)
    assert native.data_plane == "native" and native.plane is not None
    assert grpcio.service.fast is not None and full.service.fast is None
    yield {"native": native, "grpcio": grpcio, "full": full, "echo": echo}
    echo.stop()
    for server in (native, grpcio, full):
        server.stop(1.0).wait(10)


def fast_counts(server: InferenceServer) -> dict[str, int]:
    """Calls the fast path answered and handed on, on either plane."""
    return (server.plane or server.service.fast).counts


def raw_call(port: int) -> Callable[..., bytes]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    return channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)


def hammer(calls: dict[str, Callable[[int], None]], threads: int, count: int) -> None:
    """``threads`` threads per target, all at once, each making ``count`` calls."""
    errors: list[BaseException] = []

    def run(call: Callable[[int], None], thread: int) -> None:
        try:
            for i in range(count):
                call(thread * count + i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=run, args=(call, t)) for call in calls.values() for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:3]


@needs_plane
@pytest.mark.parametrize("rows, count", [(4, 300), (4 * MiB // 12, 12)], ids=["small", "4MiB"])
def test_grpcio_and_grpcpp_in_one_process_under_load(servers, rows, count):
    """Both gRPC stacks serve at once from one process (no symbol clash), 8 threads each;
    every answer is checked; the native plane's ModelInfer calls take the fast path."""
    before = {name: fast_counts(servers[name])["served_fast"] for name in ("native", "grpcio")}

    def infer(name: str) -> Callable[[int], None]:
        call = raw_call(servers[name].port)

        def one(i: int) -> None:
            data, x = request(rows, i)
            np.testing.assert_array_equal(output(call(data, timeout=60)), x)

        return one

    echo_call = raw_call(servers["echo"].port)

    def echo(i: int) -> None:
        data, _ = request(rows, i)
        assert echo_call(data, timeout=60) == data

    hammer({"native": infer("native"), "grpcio": infer("grpcio"), "echo": echo}, threads=8, count=count)
    for name in ("native", "grpcio"):
        assert fast_counts(servers[name])["served_fast"] - before[name] == 8 * count


def mutations(seeds: list[bytes], count: int, rng: random.Random) -> Iterator[bytes]:
    """Valid requests, then each changed a little: bytes flipped (often in the tensor data
    at the end, which keeps the request valid), cut, inserted, dropped."""
    yield from seeds
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(data) + 1)
            kind = rng.randrange(6)
            if kind >= 4 and data:
                kind, where = 0, len(data) - 1 - rng.randrange(min(len(data), 12))
            if kind == 0 and where < len(data):
                data[where] ^= 1 << rng.randrange(8)
            elif kind == 1:
                del data[where:]
            elif kind == 2:
                data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            elif where < len(data):
                del data[where:where + rng.randint(1, 8)]
        yield bytes(data)


def seed_requests() -> list[bytes]:
    """Requests the fast path serves, and ones it hands on (strings, batching, errors)."""
    scale = pb.ModelInferRequest(model_name="scale", model_version="1", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[4])],
        raw_input_contents=[np.arange(4, dtype="<f4").tobytes()])
    typed = pb.ModelInferRequest(model_name="scale", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[4],
                                              contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")])
    strings = pb.ModelInferRequest(model_name="strings", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[2],
                                              contents=pb.InferTensorContents(bytes_contents=[b"A b", b"c"]))])
    return [request(2, 1)[0], request(1, 2, "batched")[0], scale.SerializeToString(), typed.SerializeToString(),
            strings.SerializeToString()]


def answer(call: Callable[..., bytes], data: bytes) -> tuple:
    try:
        return ("OK", call(data, timeout=30))
    except grpc.RpcError as e:
        return (e.code().name, e.details())


@needs_plane
@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_the_fast_path_answers_exactly_as_the_full_path(servers, plane):
    """Differential fuzz: the same valid and mangled ModelInfer bytes to the fast path
    (on the native plane, or in grpcio's handler) and to the Python path get the same
    status and message, or byte-identical responses; the server lives."""
    fast, full = raw_call(servers[plane].port), raw_call(servers["full"].port)
    counts = fast_counts(servers[plane])
    outcomes: dict[str, int] = {}
    for data in mutations(seed_requests(), 1500, random.Random(8)):
        got, expected = answer(fast, data), answer(full, data)
        assert got == expected, data
        outcomes[got[0]] = outcomes.get(got[0], 0) + 1
    after = fast_counts(servers[plane])
    assert outcomes.get("OK", 0) > 100 and outcomes.get("INVALID_ARGUMENT", 0) > 100, outcomes
    assert after["served_fast"] - counts["served_fast"] > 100  # the mutations reached the fast path
    assert after["handed_on"] - counts["handed_on"] > 100  # and the full path
    assert output(fast(request(1, 3)[0])).shape == (1, 3)


@needs_plane
@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_requests_for_other_outputs_get_only_those(servers, plane):
    """An instance keeps its ONNX Runtime binding from run to run: requests that ask for
    different outputs of one model, one after another, each get exactly the full path's
    answer, on the fast path."""
    fast, full = raw_call(servers[plane].port), raw_call(servers["full"].port)
    served = fast_counts(servers[plane])["served_fast"]
    tensor = pb.ModelInferRequest.InferInputTensor
    asks = [["sum"], ["b_next", "c_not"], [], ["a_half"], ["c_not", "sum"], ["sum"]]
    for i, outputs in enumerate(asks * 2):
        rows = 1 + i % 3
        data = pb.ModelInferRequest(
            model_name="mixed", id=f"ask-{i}",
            inputs=[tensor(name="a", datatype="FP32", shape=[rows, 4]),
                    tensor(name="b", datatype="INT64", shape=[rows, 4]),
                    tensor(name="c", datatype="BOOL", shape=[rows, 4])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
            raw_input_contents=[np.full(rows * 4, i, np.float32).tobytes(), np.full(rows * 4, i, np.int64).tobytes(),
                                np.arange(rows * 4, dtype=np.uint8).__mod__(2).astype(bool).tobytes()],
        ).SerializeToString()
        got = fast(data, timeout=10)
        assert got == full(data, timeout=10)
        assert [o.name for o in pb.ModelInferResponse.FromString(got).outputs] == (
            outputs or ["sum", "b_next", "c_not", "a_half"])
    assert fast_counts(servers[plane])["served_fast"] - served == 2 * len(asks)


@needs_plane
@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_requests_staged_and_bound_in_place_one_after_another(servers, plane):
    """Small requests run through staging buffers bound once, large ones bound where
    they lie (binding.hpp's STAGE_LIMIT, 16 KiB of inputs and outputs): requests of
    sizes on both sides of it, and of one shape repeated, each get their own answer."""
    call = raw_call(servers[plane].port)
    served = fast_counts(servers[plane])["served_fast"]
    # [rows, 3] FP32 in and out: 24 bytes a row, so 682 rows stage and 683 do not
    sizes = [1, 1, 2000, 2000, 1, 682, 683, 682, 3, 0, 5000, 1]
    for i, rows in enumerate(sizes):
        data, x = request(rows, 100 + i)
        np.testing.assert_array_equal(output(call(data, timeout=30)), x)
    assert fast_counts(servers[plane])["served_fast"] - served == len(sizes) - 1  # 0 rows: the full path's


@needs_plane
@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_bf16_served_fast_bit_for_bit(servers, plane):
    """BF16 is bound as ONNX's bfloat16 (numpy has none), staged and in place: every
    bit pattern comes back as sent, NaN payloads and subnormals included."""
    client = tc.InferenceServerClient(f"127.0.0.1:{servers[plane].port}")
    served = fast_counts(servers[plane])["served_fast"]
    every = np.arange(2**16, dtype=np.uint16)
    for sent in (every[:3000], every):  # 6 KB in, 6 KB out: staged; 128 KiB each way: bound in place
        x = np.resize(sent, (len(sent) // 3 + 1, 3))  # every pattern of ``sent``, as [rows, 3]
        tensor = tc.InferInput("x", list(x.shape), "BF16")
        tensor.set_data_from_numpy(x.view(ml_dtypes.bfloat16))
        got = client.infer("identity_BF16", [tensor]).as_numpy("y")
        np.testing.assert_array_equal(got.view(np.uint16), x)
    assert fast_counts(servers[plane])["served_fast"] - served == 2


@needs_plane
@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_the_fast_paths_statistics_reach_model_statistics(servers, plane):
    """The fast path counts in C++ (tally.hpp); ModelStatistics, the latency histogram
    and the batch stats show every request, as the Python path would count it."""
    server = servers[plane]
    model = server.repository.get("identity_FP32", "")
    client = tc.InferenceServerClient(server.address)

    def read() -> tuple:
        s = client.get_inference_statistics("identity_FP32", as_json=True)["model_stats"][0]
        batches = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
        return (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)),
                int(s["inference_stats"]["success"].get("count", 0)), batches,
                sum(model.stats.snapshot().latency_buckets), int(s.get("last_inference", 0)))

    before, served = read(), fast_counts(server)["served_fast"]
    call, started_ms = raw_call(server.port), time.time() * 1000 - 1
    for rows in (1, 2, 2, 5):
        call(request(rows, rows)[0], timeout=30)
    after = read()
    assert fast_counts(server)["served_fast"] - served == 4
    # no max_batch_size: a request is one inference, its run one of batch size 1, whatever its rows
    assert after[0] - before[0] == 4 and after[1] - before[1] == 4 and after[2] - before[2] == 4
    assert after[3].get(1, 0) - before[3].get(1, 0) == 4 and set(after[3]) <= {1}
    assert after[4] - before[4] == 4 and after[5] >= started_ms


@needs_plane
def test_the_table_follows_the_repository(servers):
    """Versions, labels and the default are published; a split leaves the default to the full path."""
    table = servers["native"].plane.table
    keys = set(table.entries())
    assert {"scale\n1", "scale\n2", "scale\n", "identity_FP32\n1", "identity_FP32\n"} <= keys
    assert "batched\n1" in keys and not any(k.startswith("strings\n") for k in keys)  # BYTES: the full path
    repository = servers["native"].repository
    repository.set_routing("scale", labels={"stable": 1, "canary": 2}, split=[("stable", 50), ("canary", 50)])
    try:
        keys = set(table.entries())
        assert {"scale\nstable", "scale\ncanary"} <= keys and "scale\n" not in keys
        versions = {pb.ModelInferResponse.FromString(raw_call(servers["native"].port)(
            pb.ModelInferRequest(model_name="scale", id=f"r{i}", inputs=[
                pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[4])],
                raw_input_contents=[bytes(16)]).SerializeToString())).model_version for i in range(40)}
        assert versions == {"1", "2"}  # the split, by the full path
    finally:
        repository.set_routing("scale", removed=["stable", "canary"], split=[])
    assert "scale\n" in set(table.entries())


@pytest.fixture(scope="module", params=["native", "grpcio"])
def slow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceServer]:
    """The ops models (``slow``: one instance, a run as long as its input), at most two
    requests waiting per model, on either plane."""
    from ops_helpers import build_ops_repository

    server = start(build_ops_repository(tmp_path_factory.mktemp("ops") / "models"), request.param,
                   max_queue_size=2)
    yield server
    server.stop(1.0).wait(10)


def in_background(server: InferenceServer, model: str, inputs: list[tc.InferInput]) -> tuple[threading.Thread, dict]:
    """A call in the background, in the server (counted as pending) when this returns:
    what is sent next comes after it. The thread, and the call's result once it ends."""
    stats = server.repository.get(model).stats
    wait_for("the calls before to end", lambda: stats.pending == 0)
    client = tc.InferenceServerClient(server.address)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("y", client.infer(model, inputs)))
    thread.start()
    wait_for("the call in the background to reach the server", lambda: stats.pending == 1)
    return thread, result


def busy(server: InferenceServer, size: int = 5000) -> tuple[threading.Thread, dict]:
    """A slow run in the background (seconds), under way when this returns."""
    from ops_helpers import slow_inputs

    return in_background(server, "slow", slow_inputs(size))


def failures_reach(stats, count: int) -> None:
    wait_for(f"{count} failures", lambda: stats.fail.count >= count)
    assert stats.fail.count == count


@needs_plane
def test_a_deadline_that_passes_in_the_queue_drops_the_request(slow_server):
    """One instance, busy with a slow run: a request queued behind it whose deadline passes
    is dropped without running (counted as a failure); the slow one completes."""
    from ops_helpers import slow_inputs

    client = tc.InferenceServerClient(slow_server.address)
    stats = slow_server.repository.get("slow").stats
    before = (stats.snapshot().inference_count, stats.fail.count)
    served = fast_counts(slow_server)["served_fast"]
    thread, result = busy(slow_server)
    with pytest.raises(tc.InferenceServerException) as error:
        client.infer("slow", slow_inputs(2), client_timeout=1.0)  # well within the busy run
    assert "Deadline" in str(error.value) or "DEADLINE" in str(error.value)
    thread.join(60)
    assert float(result["y"].as_numpy("y")) == pytest.approx(5000.0**3, rel=5e-2)  # FP32 sums: 2 % off
    failures_reach(stats, before[1] + 1)
    assert stats.snapshot().inference_count == before[0] + 1
    assert fast_counts(slow_server)["served_fast"] - served >= 1


@needs_plane
def test_a_full_queue_refuses_and_a_cancelled_call_leaves_it(slow_server):
    """Behind a slow run, two requests wait (max_queue_size 2) and a third is refused
    with the full path's words; a waiting call that is cancelled leaves the line, and
    the other one runs when the instance frees up."""
    from ops_helpers import slow_inputs

    client = tc.InferenceServerClient(slow_server.address)
    raw = raw_call(slow_server.port)
    stats = slow_server.repository.get("slow").stats
    before = (stats.snapshot().inference_count, stats.fail.count)
    thread, _ = busy(slow_server)
    outcome: dict = {}
    client.async_infer("slow", slow_inputs(5), lambda **kw: outcome.update(kw))
    tensor = pb.ModelInferRequest.InferInputTensor
    cancelled = raw.future(pb.ModelInferRequest(
        model_name="slow", inputs=[tensor(name="x", datatype="FP32", shape=[1]),
                                   tensor(name="n", datatype="INT64", shape=[2])],
        raw_input_contents=[np.ones(1, np.float32).tobytes(), np.array([4, 4], np.int64).tobytes()],
    ).SerializeToString(), timeout=60)
    wait_for("two calls queued behind the slow run", lambda: stats.pending == 3)
    with pytest.raises(tc.InferenceServerException) as error:
        client.infer("slow", slow_inputs(2))
    assert "max_queue_size" in str(error.value) and "has 2 requests queued" in str(error.value)
    cancelled.cancel()
    failures_reach(stats, before[1] + 2)  # the refused and the cancelled one
    assert stats.snapshot().inference_count == before[0], "the slow run ended before the cancel: too fast a run"
    thread.join(60)
    wait_for("the queued call's answer", lambda: bool(outcome))
    assert outcome["error"] is None and float(outcome["result"].as_numpy("y")) == pytest.approx(5.0**3)
    assert stats.snapshot().inference_count == before[0] + 2


def slow_batched_model():
    """``slow`` with a batch dimension (batches of one): y = [sum(E @ E)] where E is x
    broadcast to shape n, so a request sets its own run time."""
    from onnx import TensorProto, helper

    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    one_by_one = helper.make_tensor("one_by_one", TensorProto.INT64, [2], [1, 1])
    return make_models._model(
        [helper.make_node("Constant", [], ["flat"], value=flat),
         helper.make_node("Constant", [], ["one_by_one"], value=one_by_one),
         helper.make_node("Reshape", ["n", "flat"], ["dims"]),
         helper.make_node("Expand", ["x", "dims"], ["e"]),
         helper.make_node("MatMul", ["e", "e"], ["p"]),
         helper.make_node("ReduceSum", ["p"], ["s"], keepdims=0),
         helper.make_node("Reshape", ["s", "one_by_one"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["b", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])],
    )


@pytest.fixture(scope="module", params=["native", "grpcio"])
def timeout_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[InferenceServer]:
    """``slow_batched`` with a queue timeout of 200 ms (default_timeout_microseconds)."""
    repo = tmp_path_factory.mktemp("timeout") / "models"
    make_models.write(slow_batched_model(), repo, "slow_batched")
    (repo / "slow_batched" / "config.pbtxt").write_text(
        "max_batch_size: 1\ndynamic_batching { max_queue_delay_microseconds: 0\n"
        "  default_queue_policy { default_timeout_microseconds: 200000 } }\n")
    server = start(repo, request.param)
    yield server
    server.stop(1.0).wait(10)


@needs_plane
def test_a_queue_timeout_fails_the_request_when_it_passes(timeout_server):
    """Behind a run of seconds, a request whose queue timeout (200 ms) passes is answered
    UNAVAILABLE then, not when the instance frees up; the long run still completes."""
    def inputs(size: int) -> list[tc.InferInput]:
        from helpers import infer_input

        return [infer_input("x", np.ones((1, 1), np.float32), "FP32"),
                infer_input("n", np.array([[size, size]], np.int64), "INT64")]

    client = tc.InferenceServerClient(timeout_server.address)
    thread, result = in_background(timeout_server, "slow_batched", inputs(5000))
    with pytest.raises(tc.InferenceServerException) as error:
        client.infer("slow_batched", inputs(2))
    assert "timed out in the queue" in str(error.value) and "UNAVAILABLE" in str(error.value)
    assert thread.is_alive(), "answered when the instance freed up, not when the queue timeout passed"
    thread.join(60)
    assert float(result["y"].as_numpy("y")[0, 0]) == pytest.approx(5000.0**3, rel=5e-2)


@needs_plane
def test_tokens_are_checked_on_the_fast_path(repo):
    """A token that may use the model is served in C++; a missing, wrong or limited one is
    handed on, and the full path refuses it as it always has."""
    from icow.services.auth import parse_tokens

    tokens = parse_tokens("every-model-token-of-24-chars\nonly-scale-token-of-24-chars scale\n", "test")
    server = start(repo, "native", auth_tokens=tokens)
    try:
        call = raw_call(server.port)
        data, x = request(1, 1)
        refused = [((), grpc.StatusCode.UNAUTHENTICATED),
                   ([("authorization", "Bearer not-a-token-at-all-really")], grpc.StatusCode.UNAUTHENTICATED),
                   ([("authorization", "Bearer only-scale-token-of-24-chars")], grpc.StatusCode.PERMISSION_DENIED)]
        for metadata, code in refused:
            with pytest.raises(grpc.RpcError) as error:
                call(data, metadata=metadata, timeout=10)
            assert error.value.code() == code
        assert server.plane.counts["served_fast"] == 0
        for value in ("Bearer every-model-token-of-24-chars", "bearer  every-model-token-of-24-chars"):
            np.testing.assert_array_equal(output(call(data, metadata=[("authorization", value)], timeout=10)), x)
        assert server.plane.counts["served_fast"] == 2
    finally:
        server.stop(1.0).wait(10)


def test_without_the_plane_the_server_falls_back_to_grpcio_and_says_so(repo):
    """A build without the gRPC C++ libraries has no icow._plane: `--data-plane native`
    (the default) serves on grpcio and logs why."""
    code = ("import sys, logging; sys.modules['icow._plane'] = None\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from pathlib import Path\n"
            "from icow.services import plane as native_plane\n"
            "from icow.server import InferenceServer, ServerOptions\n"
            "assert not native_plane.available()\n"
            f"s = InferenceServer(ServerOptions(repository=Path({str(repo)!r}), port=0, metrics_port=None))\n"
            "print(s.data_plane)\n"
            "s.start()\n"
            "s.stop(0).wait(5)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "grpcio"
    assert "native data plane is not available" in done.stderr and "icow._plane cannot be imported" in done.stderr
    assert "serving on the grpcio data plane (icow._plane is not built: bash scripts/install.sh" in done.stderr
