"""Graceful shutdown under load, and the logs."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from ops_helpers import json_lines, sample, scale_input, scrape, slow_inputs

SIZE = 1000  # a slow call that runs long enough for calls to be in flight at any moment


def test_sigterm_under_load_lets_every_accepted_call_finish(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--shutdown-grace-secs", "60", "--log-format", "json",
                      "--log-level", "debug")
    sigterm_at: list[float] = []
    ok_after_sigterm = []
    outcomes: list[tuple[str, object]] = []
    lock = threading.Lock()
    started = threading.Barrier(5)

    def load(slow: bool) -> None:
        client = tc.InferenceServerClient(srv.url)
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
                    outcomes.append((e.status(), e.message()))
                return
            with lock:
                outcomes.append(("OK" if ok else "WRONG ANSWER", None))
                if sigterm_at:
                    ok_after_sigterm.append(True)

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait()
    while True:  # until the load is well under way
        with lock:
            if sum(1 for o in outcomes if o[0] == "OK") >= 20:
                break
        time.sleep(0.05)
    with lock:
        sigterm_at.append(time.monotonic())
    srv.proc.terminate()
    for t in threads:
        t.join(timeout=120)
    assert srv.proc.wait(timeout=120) == 0

    failures = [o for o in outcomes if o[0] != "OK"]
    # every call either was answered correctly or was refused as the server was going: grpc
    # answers UNAVAILABLE, or CANCELLED for a call that reached the transport during the stop
    refused = {str(grpc.StatusCode.UNAVAILABLE), str(grpc.StatusCode.CANCELLED)}
    assert all(status in refused for status, _ in failures), failures
    assert ok_after_sigterm, "no call in flight at SIGTERM finished after it"
    records = json_lines(srv.log())  # every line is JSON
    infers = [r for r in records if r.get("method") == "ModelInfer"]
    assert [r for r in infers if r["status"] != "OK"] == []  # no accepted call failed on the server
    assert len(infers) == sum(1 for o in outcomes if o[0] == "OK")  # and each reached its client
    messages = [r["message"] for r in records]
    assert "received SIGTERM, stopping (grace 60s)" in messages
    assert messages[-1] == "stopped: every accepted call finished"


def test_grace_period_cuts_calls_that_run_too_long(make_server, ops_repo):
    srv = make_server(ops_repo, "--shutdown-grace-secs", "0")
    client = tc.InferenceServerClient(srv.url)
    errors: list = []
    client.async_infer("slow", slow_inputs(3000), callback=lambda result, error: errors.append(error))
    for _ in range(100_000):  # until the call runs in the server
        if sample(scrape(srv.metrics_port), "nv_inference_pending_request_count", model="slow", version="1"):
            break
    srv.proc.terminate()
    assert srv.proc.wait(timeout=120) == 0
    assert "1 call(s) were still running when the 0s grace period ended" in srv.log()


def test_json_log_records_each_request(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics", "--log-format", "json", "--log-level", "debug")
    client = tc.InferenceServerClient(srv.url)
    client.infer("scale", scale_input(), model_version="1", request_id="req-42")
    try:
        client.infer("no-such-model", scale_input(), request_id="req-43")
    except InferenceServerException:
        pass
    srv.stop()
    records = json_lines(srv.log())
    ok = next(r for r in records if r.get("request_id") == "req-42")
    assert (ok["method"], ok["model"], ok["version"], ok["status"], ok["level"]) == \
        ("ModelInfer", "scale", "1", "OK", "DEBUG")
    assert ok["duration_ms"] > 0 and ok["time"].endswith("Z") and ok["logger"] == "icow.access"
    failed = next(r for r in records if r.get("request_id") == "req-43")
    assert (failed["status"], failed["model"], failed["level"]) == ("NOT_FOUND", "no-such-model", "INFO")
    assert "no model 'no-such-model'" in failed["message"]
    assert any(r["message"].startswith("icow listening on") for r in records)


def test_the_access_log_names_the_client_and_cannot_be_told_another(make_server, ops_repo):
    """With the access log at debug, the native plane passes every call to grpcio over its
    Unix socket; the log still names the client's TCP address, not that socket, and not
    the one a client claims in the plane's own header."""
    srv = make_server(ops_repo, "--no-metrics", "--log-format", "json", "--log-level", "debug")
    client = tc.InferenceServerClient(srv.url)
    client.infer("scale", scale_input(), request_id="req-44", headers={"x-icow-peer": "ipv4:6.6.6.6:66"})
    srv.stop()
    record = next(r for r in json_lines(srv.log()) if r.get("request_id") == "req-44")
    assert record["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:")), record["peer"]


def test_failed_requests_are_logged_at_the_default_level(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics")
    client = tc.InferenceServerClient(srv.url)
    client.infer("scale", scale_input(), request_id="fine")
    try:
        client.infer("scale", [], request_id="bad")
    except InferenceServerException:
        pass
    srv.stop()
    log = srv.log()
    assert "ModelInfer scale 2 INVALID_ARGUMENT" in log and "needs input(s) x" in log
    assert "ModelInfer scale 2 OK" not in log  # successes only at debug
