"""Limits: message size, calls at once, models loaded."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import tritonclient.grpc as tc

from helpers import expect_error, infer_input
from ops_helpers import scale_input, slow_inputs


def test_tensors_of_hundreds_of_mib_work_by_default(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics")
    client = tc.InferenceServerClient(srv.url)
    x = np.random.default_rng(0).random(50 << 20, dtype=np.float32)  # 200 MiB
    y = client.infer("big", [infer_input("x", x, "FP32")]).as_numpy("y")
    assert y.shape == x.shape and np.array_equal(y, x)


def test_request_over_the_limit_is_resource_exhausted(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--max-message-mb", "1")
    client = tc.InferenceServerClient(srv.url)
    x = np.zeros(1 << 19, dtype=np.float32)  # 2 MiB
    # grpcio refuses it before icow sees it; its message names the sizes (README: Limits)
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", "vs. 1048576"):
        client.infer("big", [infer_input("x", x, "FP32")])
    small = np.ones(1000, dtype=np.float32)
    assert np.array_equal(client.infer("big", [infer_input("x", small, "FP32")]).as_numpy("y"), small)


def test_response_over_the_limit_says_how_to_raise_it(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--max-message-mb", "1")
    client = tc.InferenceServerClient(srv.url)
    inputs = [infer_input("x", np.ones(1, np.float32), "FP32"),
              infer_input("n", np.array([1 << 19], np.int64), "INT64")]  # 2 MiB out
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "response of model 'expand'", "--max-message-mb"):
        client.infer("expand", inputs)
    inputs[1].set_data_from_numpy(np.array([1000], np.int64))
    assert client.infer("expand", inputs).as_numpy("y").shape == (1000,)


def test_calls_beyond_the_concurrency_limit_are_refused(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--max-concurrent-requests", "2")
    client = tc.InferenceServerClient(srv.url)
    outcomes: list = []
    done = threading.Semaphore(0)

    def callback(result, error):
        outcomes.append(error if error else result.as_numpy("y").item())
        done.release()

    for _ in range(6):  # far more at once than the limit; each runs for a while
        client.async_infer("slow", slow_inputs(1500), callback=callback)
    for _ in range(6):
        done.acquire()
    answers = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(answers) >= 2 and all(np.isclose(a, 1500.0 ** 3, rtol=1e-2) for a in answers)
    assert refused, "no call was refused"
    for error in refused:
        assert error.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED), error
        assert "Concurrent RPC limit exceeded" in error.message()
    assert client.infer("scale", scale_input()).as_numpy("y").tolist() == [0, 3, 6, 9]  # serves again


def test_models_beyond_the_limit_are_not_loaded(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--model-control-mode", "explicit", "--load-model", "mlp",
                      "--max-loaded-models", "2")
    client = tc.InferenceServerClient(srv.url)
    client.load_model("scale")
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "cannot load model 'strings'", "--max-loaded-models"):
        client.load_model("strings")
    client.load_model("scale")  # reloading a loaded model is not one more
    client.unload_model("mlp")
    client.load_model("strings")
    assert client.is_model_ready("strings") and not client.is_model_ready("mlp")


def test_startup_loading_stops_at_the_limit(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--max-loaded-models", "2")
    client = tc.InferenceServerClient(srv.url)
    ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert ready == {"big", "expand"}  # the first two by name; the others are logged
    assert "model 'mixed' is not loaded: cannot load model 'mixed'" in srv.log()
