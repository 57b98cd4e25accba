"""ModelStreamInfer on both data planes: many requests in flight on one stream, answers
matched by id, errors answered in the stream, tokens, cancellation; tritonclient's
streaming calls and icow's own."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tc_aio

from helpers import infer_input, reference, wait_for
from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc as pb_grpc
from icow.client import AsyncClient, Client, StreamRequest
from ops_helpers import pending

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
COUNT = 100
ADMIN = "admin-0123456789abcdef"
TEAM = "team-mlp-0123456789ab"


@pytest.fixture(scope="module", params=["native", "grpcio"], ids=["native-plane", "grpcio-plane"])
def stream_server(request, test_repo: Path, tmp_path_factory):
    from conftest import start_server

    srv = start_server(test_repo, "--data-plane", request.param, log_dir=tmp_path_factory.mktemp("logs"))
    if request.param == "native":
        assert "data plane: native" in srv.log(), srv.log()
    yield srv
    srv.stop()


def mlp_batches(count: int = COUNT) -> list[np.ndarray]:
    """Varied inputs: 1 to 4 rows of different random numbers each."""
    rng = np.random.default_rng(7)
    return [rng.standard_normal((1 + i % 4, 16)).astype(np.float32) for i in range(count)]


def expected(test_repo: Path, x: np.ndarray) -> np.ndarray:
    return reference(test_repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]


def mlp_request(x: np.ndarray, request_id: str, model: str = "mlp") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def successes(url: str, model: str) -> int:
    with grpc.insecure_channel(url) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return sum(s.inference_stats.success.count for s in stats.model_stats)


# -- tritonclient, unchanged -------------------------------------------------------------

def test_hundred_requests_in_flight_tritonclient(stream_server, test_repo: Path) -> None:
    """start_stream / async_stream_infer x100 without waiting / stop_stream: every answer
    comes, matched by its id, and is right; each counts in ModelStatistics as a ModelInfer."""
    batches = mlp_batches()
    before = successes(stream_server.url, "mlp")
    answers: queue.Queue = queue.Queue()
    client = tc.InferenceServerClient(stream_server.url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, x in enumerate(batches):
        client.async_stream_infer("mlp", [infer_input("input", x, "FP32")], request_id=f"r{i}")
    got = [answers.get(timeout=60) for _ in batches]
    client.stop_stream()
    assert [e for _, e in got if e is not None] == []
    by_id = {r.get_response().id: r.as_numpy("output") for r, _ in got}
    assert sorted(by_id) == sorted(f"r{i}" for i in range(COUNT))
    for i, x in enumerate(batches):
        np.testing.assert_allclose(by_id[f"r{i}"], expected(test_repo, x), rtol=1e-5, atol=1e-5)
    wait_for("the statistics to count the streamed requests",
             lambda: successes(stream_server.url, "mlp") - before == COUNT)


def test_tritonclient_aio_stream_infer(stream_server, test_repo: Path) -> None:
    batches = mlp_batches(20)

    async def main() -> dict[str, np.ndarray]:
        async def requests():
            for i, x in enumerate(batches):
                yield {"model_name": "mlp", "inputs": [infer_input("input", x, "FP32")], "request_id": str(i)}

        client = tc_aio.InferenceServerClient(stream_server.url)
        try:
            out = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                out[result.get_response().id] = result.as_numpy("output")
            return out
        finally:
            await client.close()

    out = asyncio.run(main())
    assert len(out) == len(batches)
    for i, x in enumerate(batches):
        np.testing.assert_allclose(out[str(i)], expected(test_repo, x), rtol=1e-5, atol=1e-5)


# -- errors in the stream ----------------------------------------------------------------

def test_errors_answered_in_the_stream_which_goes_on(stream_server, test_repo: Path) -> None:
    """An unknown model, a wrong shape and bytes that are no ModelInferRequest, mid-stream:
    each is answered with error_message (and its id where it has one); the requests after
    them are answered as usual."""
    x = mlp_batches(1)[0]
    good = mlp_request(x, "good").SerializeToString()
    wrong_shape = mlp_request(np.zeros((1, 5), np.float32), "wrong-shape").SerializeToString()
    messages = [good, mlp_request(x, "unknown", model="no_such_model").SerializeToString(), good,
                wrong_shape, b"\x0a\xff garbage", good, good]
    with grpc.insecure_channel(stream_server.url) as channel:
        call = channel.stream_stream(STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString)
        answers = list(call(iter(messages), timeout=60))
    assert len(answers) == len(messages)
    errors = {a.infer_response.id: a.error_message for a in answers if a.error_message}
    assert set(errors) == {"unknown", "wrong-shape", ""}, errors
    assert "no_such_model" in errors["unknown"]
    assert "input" in errors["wrong-shape"] and "[1,5]" in errors["wrong-shape"].replace(" ", "")
    assert "malformed ModelInferRequest" in errors[""]
    oks = [a.infer_response for a in answers if not a.error_message]
    assert len(oks) == 4 and {r.id for r in oks} == {"good"}
    for r in oks:
        out = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(r.outputs[0].shape)
        np.testing.assert_allclose(out, expected(test_repo, x), rtol=1e-5, atol=1e-5)
    assert "Traceback" not in stream_server.log()


def test_access_log_has_a_line_per_streamed_request(stream_server) -> None:
    with Client(stream_server.url, timeout=60) as client:
        results = list(client.stream_infer([StreamRequest("no_such_model", {"input": np.zeros((1, 16), np.float32)},
                                                          id="logged-miss")]))
    assert results[0].error is not None
    wait_for("the access-log line", lambda: "ModelStreamInfer no_such_model - NOT_FOUND" in stream_server.log())


# -- icow's clients ----------------------------------------------------------------------

def test_icow_client_stream_infer(stream_server, test_repo: Path) -> None:
    """Requests from a generator; answers matched by id (given, or numbered by the client);
    an error is a StreamResult with its error, and the stream goes on."""
    batches = mlp_batches(30)

    def requests() -> Iterator[StreamRequest]:
        for x in batches:
            yield StreamRequest("mlp", {"input": x})  # ids "0", "1", ...
        yield StreamRequest("scale", {"x": np.zeros(3, np.float32)}, id="bad-shape")
        yield StreamRequest("mlp", [batches[0]], id="positional")

    with Client(stream_server.url, timeout=60) as client:
        answers = {a.id: a for a in client.stream_infer(requests())}
    assert len(answers) == len(batches) + 2
    for i, x in enumerate(batches):
        np.testing.assert_allclose(answers[str(i)].value().outputs["output"], expected(test_repo, x),
                                   rtol=1e-5, atol=1e-5)
    assert answers["bad-shape"].result is None and "shape" in answers["bad-shape"].error.message
    np.testing.assert_allclose(answers["positional"].value().outputs["output"], expected(test_repo, batches[0]),
                               rtol=1e-5, atol=1e-5)


def test_icow_async_client_stream_infer(stream_server, test_repo: Path) -> None:
    batches = mlp_batches(30)

    async def main() -> dict:
        async def requests():
            for i, x in enumerate(batches):
                yield StreamRequest("mlp", {"input": x}, id=f"a{i}")

        async with AsyncClient(stream_server.url, timeout=60) as client:
            return {a.id: a async for a in client.stream_infer(requests())}

    answers = asyncio.run(main())
    assert sorted(answers) == sorted(f"a{i}" for i in range(len(batches)))
    for i, x in enumerate(batches):
        np.testing.assert_allclose(answers[f"a{i}"].value().outputs["output"], expected(test_repo, x),
                                   rtol=1e-5, atol=1e-5)


def test_icow_client_raises_a_request_it_cannot_send_after_the_answers(stream_server) -> None:
    requests = [StreamRequest("mlp", {"input": np.zeros((1, 16), np.float32)}, id="sent"),
                StreamRequest("mlp", {"input": np.zeros((1, 16), np.complex64)}, id="unsendable")]
    answers = []
    with Client(stream_server.url, timeout=60) as client, pytest.raises(Exception, match="complex64|input 'input'"):
        for answer in client.stream_infer(requests):
            answers.append(answer)
    assert [a.id for a in answers] == ["sent"] and answers[0].error is None


# -- cancellation ------------------------------------------------------------------------

def test_client_cancel_mid_stream_leaves_the_server_serving(stream_server) -> None:
    """A client sending without end cancels after a few answers: the server stops reading
    that stream, and serves ModelInfer and new streams as before."""
    x = np.zeros((1, 16), np.float32)
    endless = (mlp_request(x, str(i)) for i in itertools.count())
    with grpc.insecure_channel(stream_server.url) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(endless, timeout=60)
        for _ in zip(range(10), call):
            pass
        call.cancel()
        with pytest.raises(grpc.RpcError) as cancelled:
            for _ in call:
                pass
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED
    with Client(stream_server.url, timeout=60) as client:
        assert client.infer("mlp", {"input": x})["output"].shape[0] == 1
        answers = list(client.stream_infer(StreamRequest("mlp", {"input": x}, id=str(i)) for i in range(5)))
    assert sorted(a.id for a in answers) == [str(i) for i in range(5)]
    assert all(a.error is None for a in answers)
    assert "Traceback" not in stream_server.log()


def test_stream_deadline_ends_the_stream(stream_server) -> None:
    """The stream's timeout is its requests' deadline too; past it the call ends
    DEADLINE_EXCEEDED and the server goes on serving."""
    feed: queue.Queue = queue.Queue()
    x = np.zeros((1, 16), np.float32)

    def requests():
        yield mlp_request(x, "first")
        feed.get()  # then nothing more, until the test ends: the stream stays open past its deadline

    with grpc.insecure_channel(stream_server.url) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=2)
        first = next(call)
        assert first.infer_response.id == "first" and not first.error_message
        with pytest.raises(grpc.RpcError) as ended:
            next(call)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    feed.put(None)
    with Client(stream_server.url, timeout=60) as client:
        assert client.infer("mlp", {"input": x})["output"].shape[0] == 1


# -- answers in the order they finish ----------------------------------------------------

@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_answers_come_as_they_finish(make_server, ops_repo, plane) -> None:
    """A request that runs for seconds does not hold the stream up: one sent after it, while
    it runs, is answered first; then the slow one (x² N³ for x broadcast to N × N)."""
    srv = make_server(ops_repo, "--data-plane", plane)
    size = 2500
    slow = pb.ModelInferRequest(model_name="slow", id="slow")
    slow.inputs.add(name="x", datatype="FP32", shape=[1])
    slow.inputs.add(name="n", datatype="INT64", shape=[2])
    slow.raw_input_contents.extend([np.array([1.0], np.float32).tobytes(), np.array([size, size]).tobytes()])
    fast = pb.ModelInferRequest(model_name="scale", id="fast")
    fast.inputs.add(name="x", datatype="FP32", shape=[4])
    fast.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    feed: queue.Queue = queue.Queue()

    def requests():
        yield slow
        feed.get()  # the second once the first runs
        yield fast

    with grpc.insecure_channel(srv.url) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=300)
        wait_for("the slow request to run", lambda: pending(srv, "slow") == 1)
        feed.put(None)
        first, second = next(call), next(call)
    assert (first.infer_response.id, second.infer_response.id) == ("fast", "slow")
    assert np.frombuffer(first.infer_response.raw_output_contents[0], np.float32).tolist() == [0, 3, 6, 9]
    y = np.frombuffer(second.infer_response.raw_output_contents[0], np.float32)[0]
    assert y == pytest.approx(float(size) ** 3, rel=0.05)  # float32 sums of 6.25 million products


@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_cancel_drops_the_streams_queued_requests(make_server, ops_repo, plane) -> None:
    """Three runs of seconds on a model of one instance: one runs, two wait in its queue. The
    client cancels: the two leave the queue unrun; only the running one completes."""
    srv = make_server(ops_repo, "--data-plane", plane)

    def slow(i: int) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="slow", id=str(i))
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        request.inputs.add(name="n", datatype="INT64", shape=[2])
        request.raw_input_contents.extend([np.array([1.0], np.float32).tobytes(), np.array([3000, 3000]).tobytes()])
        return request

    hold = threading.Event()

    def requests():
        yield from (slow(i) for i in range(3))
        hold.wait(120)  # the stream stays open until the test ends

    before = successes(srv.url, "slow")
    with grpc.insecure_channel(srv.url) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=300)
        wait_for("one request running and two waiting", lambda: pending(srv, "slow") == 3)
        call.cancel()
        wait_for("the queue to empty", lambda: pending(srv, "slow") == 0)
    hold.set()
    assert successes(srv.url, "slow") - before == 1
    with Client(srv.url, timeout=60) as client:
        assert client.infer("scale", {"x": np.arange(4, dtype=np.float32)})["y"].tolist() == [0, 3, 6, 9]


# -- tokens ------------------------------------------------------------------------------

@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_stream_token_checked_per_stream_and_model_per_request(make_server, ops_repo, tmp_path, plane) -> None:
    """No token: the stream is UNAUTHENTICATED. A token limited to mlp: mlp's requests are
    answered, another model's get PERMISSION_DENIED's message in the stream, which goes on."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN}\n{TEAM}  mlp\n")
    srv = make_server(ops_repo, "--auth-tokens-file", str(tokens), "--data-plane", plane,
                      metadata=(("authorization", f"Bearer {ADMIN}"),))
    x = np.ones((1, 16), np.float32)
    scale = pb.ModelInferRequest(model_name="scale", id="scale")
    scale.inputs.add(name="x", datatype="FP32", shape=[4])
    scale.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    messages = [mlp_request(x, "m1"), scale, mlp_request(x, "m2")]
    with grpc.insecure_channel(srv.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.ModelStreamInfer(iter(messages), timeout=60))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        team = list(stub.ModelStreamInfer(iter(messages), timeout=60, metadata=(("authorization", f"Bearer {TEAM}"),)))
        admin = list(stub.ModelStreamInfer(iter(messages), timeout=60,
                                           metadata=(("authorization", f"Bearer {ADMIN}"),)))
    team_errors = {a.infer_response.id: a.error_message for a in team if a.error_message}
    assert set(team_errors) == {"scale"} and "may use only the models mlp" in team_errors["scale"]
    assert sorted(a.infer_response.id for a in team if not a.error_message) == ["m1", "m2"]
    assert [a.error_message for a in admin] == ["", "", ""]

    answers: queue.Queue = queue.Queue()
    client = tc.InferenceServerClient(srv.url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)),
                        headers={"authorization": f"Bearer {TEAM}"})
    client.async_stream_infer("mlp", [infer_input("input", x, "FP32")], request_id="t1")
    result, error = answers.get(timeout=60)
    client.stop_stream()
    assert error is None and result.get_response().id == "t1"


# -- the bound on a stream's requests (in process: what the server reads ahead is not visible outside) --

class _Context:
    """What the stream handler asks of grpcio's context."""

    def add_callback(self, callback) -> bool:
        return True

    def time_remaining(self) -> None:
        return None

    def peer(self) -> str:
        return "test"


def test_a_stream_takes_at_most_its_bound_of_requests() -> None:
    """max_in_flight 3 on a pool of 8: while the first three requests run, the reader has
    taken one more at most, and no fourth runs; once they finish, all ten are answered."""
    from icow.services.stream import StreamInfer

    lock, release = threading.Lock(), threading.Event()
    running, peak, read = 0, 0, []

    class Service:
        def infer_bytes(self, data: bytes, deadline, alive, fast=None) -> bytes:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            release.wait(60)
            with lock:
                running -= 1
            return data

    def requests():
        for i in range(10):
            read.append(i)
            yield mlp_request(np.zeros((1, 16), np.float32), str(i)).SerializeToString()

    stream = StreamInfer(Service(), None, workers=8, max_in_flight=3)
    answers: list[bytes] = []
    sender = threading.Thread(target=lambda: answers.extend(stream(requests(), _Context())))
    sender.start()
    wait_for("three requests running and a fourth read", lambda: running == 3 and len(read) == 4)
    assert peak == 3 and len(read) == 4
    release.set()
    sender.join(60)
    stream.close()
    assert peak == 3
    ids = sorted(pb.ModelStreamInferResponse.FromString(a).infer_response.id for a in answers)
    assert ids == sorted(str(i) for i in range(10))
