"""One queue per model across transports: a batching model's requests over HTTP
(binary) and over a ModelStreamInfer stream wait in the same queue as its gRPC calls,
and batch with them. On the native plane that queue is the plane's C++ one (the HTTP
and stream lanes' Directs share it, ``Direct.share_queues``); on the grpcio plane it
is Python's scheduler. A client that goes while its request waits takes it out.

``paired`` runs a batch once it holds two rows (its delay is a minute, which no test
waits out): two requests answered together ran as one batch."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th

import make_models
from helpers import wait_for
from icow.server import InferenceServer, ServerOptions
from test_native_plane import needs_plane

pytestmark = needs_plane
X = np.arange(4, dtype=np.float32).reshape(1, 4)
PAIRED = ("max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 2 ] "
          "max_queue_delay_microseconds: 60000000 }\n")


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceServer]:
    repo = tmp_path_factory.mktemp("queues") / "models"
    make_models.write(make_models.elementwise("Mul", 2.0), repo, "paired")
    (repo / "paired" / "config.pbtxt").write_text(PAIRED)
    srv = InferenceServer(ServerOptions(repository=Path(repo), port=0, metrics_port=None, http_port=0,
                                        data_plane=request.param))
    srv.start()
    yield srv
    srv.stop(1.0).wait(10)


def staged() -> int:
    from icow.services.plane import _plane

    return _plane.staged_bytes()


def executions(server: InferenceServer) -> int:
    return server.repository.get("paired").stats.snapshot().execution_count


def in_background(call) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("answer", call()), daemon=True)
    thread.start()
    return thread, result


def grpc_call(server: InferenceServer) -> np.ndarray:
    tensor = tc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    return tc.InferenceServerClient(server.address).infer("paired", [tensor]).as_numpy("y")


def http_call(server: InferenceServer) -> np.ndarray:
    tensor = th.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    return client.infer("paired", [tensor], outputs=[th.InferRequestedOutput("y", binary_data=True)]).as_numpy("y")


def fast_path(server: InferenceServer) -> bool:
    return server.options.data_plane == "native"


def http_then_grpc(server: InferenceServer) -> None:
    """An HTTP request waits in paired's queue, a gRPC call joins it: both answered, one run."""
    paired = server.repository.get("paired").stats
    before = executions(server)
    waiting, answered = in_background(lambda: http_call(server))
    wait_for("the HTTP request in paired's queue", lambda: paired.pending == 1)
    np.testing.assert_array_equal(grpc_call(server), 2 * X)
    waiting.join(60)
    np.testing.assert_array_equal(answered["answer"], 2 * X)
    assert executions(server) - before == 1


def test_an_http_request_batches_with_a_grpc_call(server):
    before = staged()
    http_then_grpc(server)
    # One bound run of both rows (32 bytes in, 32 out, staged) where the C++ queue batched them.
    assert staged() - before == (64 if fast_path(server) else 0)


def test_a_streamed_request_batches_with_a_grpc_call(server):
    paired = server.repository.get("paired").stats
    before = executions(server)
    answers: queue.Queue = queue.Queue()
    client = tc.InferenceServerClient(server.address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        tensor = tc.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(X)
        client.async_stream_infer("paired", [tensor])
        wait_for("the streamed request in paired's queue", lambda: paired.pending == 1)
        np.testing.assert_array_equal(grpc_call(server), 2 * X)
        result, error = answers.get(timeout=60)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * X)
    finally:
        client.stop_stream()
    assert executions(server) - before == 1


def test_an_http_client_that_goes_takes_its_request_out_of_the_queue(server):
    """Its request waits for a second row; the client closes the connection: the request
    leaves the queue unrun (a failure), and the next two requests batch on their own."""
    paired = server.repository.get("paired").stats
    before = (executions(server), paired.fail.count)
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    body = head + X.tobytes()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
        raw.sendall(b"POST /v2/models/paired/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: "
                    + str(len(head)).encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for("the HTTP request in paired's queue", lambda: paired.pending == 1)
    wait_for("the request to leave the queue", lambda: paired.pending == 0)
    wait_for("its failure to be counted", lambda: paired.fail.count == before[1] + 1)
    assert executions(server) == before[0]
    http_then_grpc(server)
