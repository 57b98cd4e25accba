"""Graceful shutdown under load, and the logs."""

from __future__ import annotations

import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from ops_helpers import json_lines, sample, scale_input, scrape, slow_inputs
from sigterm_load import MODES, SERVER_ARGS, sigterm_under_load


def test_sigterm_under_load_lets_every_accepted_call_finish(make_server, ops_repo):
    # at debug, the access log records each call, and the native plane passes every call to grpcio
    srv = make_server(ops_repo, *SERVER_ARGS, "--log-level", "debug")
    outcome = sigterm_under_load(srv.proc, srv.url)
    assert outcome.problems(srv.log()) == []
    assert outcome.answered_after_sigterm, "no call in flight at SIGTERM finished after it"
    assert "received SIGTERM, stopping (grace 60s)" in [r["message"] for r in json_lines(srv.log())]


def test_thirty_sigterms_under_load_end_cleanly(make_server, ops_repo):
    """Across both planes and the native plane's way through to grpcio, the path that once
    aborted 3 times in 56 (docs/native-plane.md, "Shutdown"); scripts/sigterm-stress.py runs more."""
    bad = []
    rounds = list(MODES.items())
    for i in range(30):
        mode, args = rounds[i % len(rounds)]
        srv = make_server(ops_repo, *SERVER_ARGS, *args)
        problems = sigterm_under_load(srv.proc, srv.url).problems(srv.log())
        if problems:
            bad.append((i, mode, problems[:3]))
    assert bad == []


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
