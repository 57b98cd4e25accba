"""The Prometheus endpoint: Triton's metric names, values that follow the requests."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from helpers import infer_input
from ops_helpers import sample, scale_input, scrape, slow_inputs

TRITON_COUNTERS = ["nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                   "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                   "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                   "nv_inference_compute_output_duration_us"]


def test_counts_follow_requests_per_model_and_version(make_server, ops_repo):
    srv = make_server(ops_repo)
    client = tc.InferenceServerClient(srv.url)
    before = scrape(srv.metrics_port)
    for name in TRITON_COUNTERS + ["nv_inference_pending_request_count"]:
        assert sample(before, name, model="scale", version="2") == 0, name
    for _ in range(3):
        client.infer("scale", scale_input(), model_version="1")
    client.infer("scale", scale_input())  # version 2, the latest
    x = np.random.rand(5, 16).astype(np.float32)
    client.infer("mlp", [infer_input("input", x, "FP32")])  # one execution, a batch of 5
    with pytest.raises(InferenceServerException):
        client.infer("scale", [infer_input("x", np.zeros(3, np.float32), "FP32")])  # wrong shape
    text = scrape(srv.metrics_port)
    for name in TRITON_COUNTERS:  # as Triton writes them: counters without a "_total" suffix
        assert f"# TYPE {name} counter" in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    assert sample(text, "nv_inference_request_success", model="scale", version="1") == 3
    assert sample(text, "nv_inference_request_success", model="scale", version="2") == 1
    assert sample(text, "nv_inference_request_failure", model="scale", version="2", reason="OTHER") == 1
    assert sample(text, "nv_inference_request_failure", model="scale", version="2", reason="REJECTED") == 0
    assert sample(text, "nv_inference_exec_count", model="mlp", version="1") == 1
    assert sample(text, "nv_inference_count", model="mlp", version="1") == 5
    assert sample(text, "nv_inference_pending_request_count", model="scale", version="1") == 0
    for name in ("nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us"):
        assert sample(text, name, model="scale", version="1") > 0, name
    # the histogram: every successful request in the +Inf bucket and in the count
    assert sample(text, "icow_inference_request_duration_seconds_bucket", model="scale", version="1", le="+Inf") == 3
    assert sample(text, "icow_inference_request_duration_seconds_count", model="mlp", version="1") == 1
    # process CPU and memory
    assert sample(text, "process_resident_memory_bytes") > 10 << 20
    assert sample(text, "process_cpu_seconds_total") > 0
    assert sample(text, "process_open_fds") > 0


def test_pending_counts_running_requests(make_server, ops_repo):
    srv = make_server(ops_repo)
    client = tc.InferenceServerClient(srv.url)
    done = []
    client.async_infer("slow", slow_inputs(2000), callback=lambda result, error: done.append(error))
    pending = []
    while not done:
        pending.append(sample(scrape(srv.metrics_port), "nv_inference_pending_request_count",
                              model="slow", version="1"))
    assert done == [None]
    assert 1 in pending  # seen while it ran (a run of this size takes far longer than a scrape)
    assert sample(scrape(srv.metrics_port), "nv_inference_pending_request_count", model="slow", version="1") == 0


def test_unloaded_model_leaves_the_metrics(make_server, ops_repo):
    srv = make_server(ops_repo, "--model-control-mode", "explicit", "--load-model", "*")
    client = tc.InferenceServerClient(srv.url)
    client.infer("scale", scale_input())
    assert sample(scrape(srv.metrics_port), "nv_inference_request_success", model="scale", version="2") == 1
    client.unload_model("scale")
    assert sample(scrape(srv.metrics_port), "nv_inference_request_success", model="scale", version="2") is None


def test_no_metrics_serves_none(make_server, ops_repo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = make_server(ops_repo, "--no-metrics", "--metrics-port", str(port))
    tc.InferenceServerClient(srv.url).infer("scale", scale_input())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert "metrics on" not in srv.log()


def test_metrics_port_taken_is_an_error(ops_repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "icow", "serve", "--model-repository", str(ops_repo),
                                 "--port", "0", "--http-port", "0", "--metrics-port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in result.stderr and "--no-metrics" in result.stderr
