"""The HTTP/REST binding (KServe v2, Triton's binary tensor extension) against the
real server on a loopback port: every endpoint, JSON and binary tensors, and the
server's features on HTTP as on gRPC (tokens, TLS, limits, deadlines, the access
log, metrics, statistics, shared memory, shutdown). Triton's clients
(tritonclient.http and its asyncio twin) where they reach; raw HTTP (http.client,
sockets) where they do not. What the protocol defines on both transports runs on
both in test_v2.py."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import secrets
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

import make_models
from conftest import ServerProcess, start_server
from helpers import NUMERIC, dtype_feeds, expect_error, reference, wait_for
from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc as pb_grpc
from ops_helpers import json_lines, make_pki, pending, sample, scrape
from transports import Transport, as_dict

HTTP, GRPC = Transport("http"), Transport("grpc")
X = np.arange(4, dtype=np.float32)


@pytest.fixture(scope="module")
def srv(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default server kind (native codec and plane) with client shared memory allowed."""
    server = start_server(test_repo, "--allow-client-shm", log_dir=tmp_path_factory.mktemp("http-logs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv) -> Iterator[httpclient.InferenceServerClient]:
    c = HTTP.client(srv)
    yield c
    c.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def call(srv: ServerProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def call_json(srv: ServerProcess, method: str, path: str, body: dict | None = None, **kwargs) -> tuple[int, dict]:
    status, _, data = call(srv, method, path, None if body is None else json.dumps(body).encode(), **kwargs)
    return status, json.loads(data) if data else {}


def binary_body(header: dict, *arrays: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A request with binary tensors: the JSON header, then the arrays' bytes."""
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for a in arrays), {"Inference-Header-Content-Length": str(len(head)),
                                                          "Content-Type": "application/octet-stream"}


def split_answer(headers: dict[str, str], body: bytes) -> tuple[dict, bytes]:
    """An answer's JSON header and the binary outputs after it."""
    size = int(headers.get("inference-header-content-length", len(body)))
    return json.loads(body[:size]), body[size:]


def mixed_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"a": rng.standard_normal((2, 4)).astype(np.float32),
            "b": rng.integers(-100, 100, (2, 4)).astype(np.int64),
            "c": rng.integers(0, 2, (2, 4)).astype(bool)}


# -- server and model endpoints ----------------------------------------------------

def test_server_endpoints(srv):
    status, headers, body = call(srv, "GET", "/v2")
    meta = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert meta["name"] == "icow" and meta["version"] and "system_shared_memory" in meta["extensions"]
    assert call_json(srv, "GET", "/v2/health/live") == (200, {"live": True})
    assert call_json(srv, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, error = call_json(srv, "GET", "/v2/no/such/endpoint")
    assert status == 404 and "no endpoint at /v2/no/such/endpoint" in error["error"]
    status, headers, body = call(srv, "POST", "/v2/health/live", b"{}")
    assert (status, headers["allow"]) == (405, "GET") and "use GET" in json.loads(body)["error"]
    status, headers, _ = call(srv, "GET", "/v2/models/scale/infer")
    assert (status, headers["allow"]) == (405, "POST")


@pytest.mark.parametrize("version", ["", "/versions/1"])
def test_model_endpoints_with_and_without_a_version(srv, version):
    base = f"/v2/models/scale{version}"
    status, meta = call_json(srv, "GET", base)
    assert status == 200 and meta["name"] == "scale" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [4]}]
    assert call_json(srv, "GET", f"{base}/ready") == (200, {"name": "scale", "ready": True})
    status, config = call_json(srv, "GET", f"{base}/config")
    assert status == 200 and config["name"] == "scale" and config["input"][0]["dims"] == [4]
    status, stats = call_json(srv, "GET", f"{base}/stats")
    assert status == 200 and [s["name"] for s in stats["model_stats"]] == ["scale"] * len(stats["model_stats"])
    assert {s["version"] for s in stats["model_stats"]} == ({"1"} if version else {"1", "2"})


def test_model_endpoints_refuse_what_is_not_there(srv):
    for path in ("/v2/models/scale/versions/3/ready",  # not loaded (its version policy)
                 "/v2/models/broken/ready", "/v2/models/no-such-model/ready"):  # failed to load; none
        status, error = call_json(srv, "GET", path)
        assert status == 503 and "is not ready" in error["error"], (path, status, error)
    for path in ("/v2/models/no-such-model", "/v2/models/no-such-model/config",
                 "/v2/models/no-such-model/stats", "/v2/models/scale/versions/3/config"):
        status, error = call_json(srv, "GET", path)
        assert status == 404, (path, error)
        assert "error" in error
    assert call_json(srv, "GET", "/v2/models/scale/versions")[0] == 404


def test_version_labels_on_every_endpoint(make_server, tmp_path):
    repo = tmp_path / "models"
    for version in (1, 2, 3):
        make_models.write(make_models.scale(float(version)), repo, "m", version)
    (repo / "m" / "config.pbtxt").write_text('version_policy: { all {} }\n'
                                             'parameters { key: "version_labels" value { string_value: '
                                             '"stable=1, canary=2" } }\n')
    server = make_server(repo, "--no-metrics")
    assert call_json(server, "GET", "/v2/models/m/versions/stable/ready") == (200, {"name": "m", "ready": True})
    assert call_json(server, "GET", "/v2/models/m/versions/nope/ready")[0] != 200
    status, meta = call_json(server, "GET", "/v2/models/m/versions/canary")
    assert status == 200 and meta["versions"] == ["1", "2", "3"]
    status, config = call_json(server, "GET", "/v2/models/m/versions/stable/config")
    assert status == 200 and config["parameters"]["version_labels"]["string_value"] == "canary=2, stable=1"
    status, stats = call_json(server, "GET", "/v2/models/m/versions/canary/stats")
    assert status == 200 and [s["version"] for s in stats["model_stats"]] == ["2"]
    c = HTTP.client(server)
    result = c.infer("m", [HTTP.input("x", np.ones(4, np.float32), "FP32")], model_version="canary")
    assert result.get_response()["model_version"] == "2" and result.as_numpy("y").tolist() == [2] * 4
    with expect_error(grpc.StatusCode.NOT_FOUND, "no version or label 'nope'"):
        c.infer("m", [HTTP.input("x", np.ones(4, np.float32), "FP32")], model_version="nope")


# -- inference: JSON -----------------------------------------------------------------

def test_json_tensors_of_every_datatype(client, test_repo):
    """Inputs and outputs as JSON ``data`` (no binary part at all), BYTES, FP16 and BOOL included."""
    feeds = dtype_feeds()
    inputs = [HTTP.input(name, value, name[3:], binary_data=False) for name, value in feeds.items()]
    outputs = [HTTP.output(f"out_{t}", binary_data=False) for t in [*NUMERIC, "BYTES"]]
    result = client.infer("dtypes", inputs, outputs=outputs)
    ort_feeds = {**feeds, "in_BYTES": np.vectorize(bytes.decode, otypes=[object])(feeds["in_BYTES"])}
    expected = reference(test_repo / "dtypes" / "1" / "model.onnx", ort_feeds)
    for entry in result.get_response()["outputs"]:
        assert "data" in entry and "parameters" not in entry, entry  # JSON, not binary
    for datatype in NUMERIC:
        got = result.as_numpy(f"out_{datatype}")
        assert got.dtype == expected[f"out_{datatype}"].dtype, datatype
        np.testing.assert_array_equal(got, expected[f"out_{datatype}"], err_msg=datatype)
    assert result.as_numpy("out_BYTES").tolist() == expected["out_BYTES"].tolist()


def test_json_data_flat_or_nested(srv, test_repo):
    feeds = mixed_feeds()
    expected = reference(test_repo / "mixed" / "1" / "model.onnx", feeds)
    for nested in (False, True):
        inputs = [{"name": n, "datatype": t, "shape": [2, 4], "data": v.tolist() if nested else v.ravel().tolist()}
                  for (n, v), t in zip(feeds.items(), ["FP32", "INT64", "BOOL"])]
        status, answer = call_json(srv, "POST", "/v2/models/mixed/infer", {"id": "json-1", "inputs": inputs})
        assert status == 200, answer
        assert (answer["id"], answer["model_name"], answer["model_version"]) == ("json-1", "mixed", "1")
        got = {o["name"]: o for o in answer["outputs"]}
        assert list(got) == list(expected)
        for name, value in expected.items():
            assert got[name]["shape"] == [2, 4] and got[name]["datatype"] != ""
            np.testing.assert_array_equal(np.array(got[name]["data"], dtype=value.dtype).reshape(2, 4), value)


def test_json_uint64_beyond_int64_is_exact(srv):
    """numpy reads 2**64 - 1 beside small integers as float64: every bit must still arrive."""
    values = [2**64 - 1, 1, 2**63 + 1]
    request = {"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1, 3], "data": values}]}
    status, answer = call_json(srv, "POST", "/v2/models/identity_UINT64/infer", request)
    assert status == 200 and answer["outputs"][0]["data"] == values, answer
    for data, fragment in (([-1, 2**64 - 1, 0], "does not fit UINT64"), ([0.5, 2**64 - 1, 0], "must be integers")):
        request["inputs"][0]["data"] = data
        status, error = call_json(srv, "POST", "/v2/models/identity_UINT64/infer", request)
        assert status == 400 and fragment in error["error"], (data, error)


def test_requested_outputs_are_filtered_and_ordered(srv, test_repo):
    feeds = mixed_feeds()
    expected = reference(test_repo / "mixed" / "1" / "model.onnx", feeds)
    inputs = [{"name": n, "datatype": t, "shape": [2, 4], "data": v.ravel().tolist()}
              for (n, v), t in zip(feeds.items(), ["FP32", "INT64", "BOOL"])]
    request = {"inputs": inputs, "outputs": [{"name": "c_not"}, {"name": "sum"}]}
    status, answer = call_json(srv, "POST", "/v2/models/mixed/infer", request)
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["c_not", "sum"]
    assert "id" not in answer  # none asked, none echoed
    assert answer["outputs"][0]["data"] == expected["c_not"].ravel().tolist()
    request["outputs"] = [{"name": "nope"}]
    status, error = call_json(srv, "POST", "/v2/models/mixed/infer", request)
    assert status == 400 and "nope" in error["error"]


def test_bad_json_requests_are_400(srv):
    cases = [(b"{not json", "not valid JSON"), (b"[]", "must be a JSON object"), (b"{}", "no inputs"),
             (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2]}]}).encode(),
              "input 'x'"),
             (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": ["a"] * 4}]}).encode(),
              "FP32 data must be numbers")]
    for body, fragment in cases:
        status, _, data = call(srv, "POST", "/v2/models/scale/infer", body)
        assert status == 400 and fragment in json.loads(data)["error"], (body, data)


# -- inference: binary -------------------------------------------------------------

def test_binary_request_and_answer(srv, test_repo):
    feeds = mixed_feeds()
    expected = reference(test_repo / "mixed" / "1" / "model.onnx", feeds)
    tensors = [{"name": n, "datatype": t, "shape": [2, 4], "parameters": {"binary_data_size": v.nbytes}}
               for (n, v), t in zip(feeds.items(), ["FP32", "INT64", "BOOL"])]
    body, headers = binary_body({"id": "bin-1", "inputs": tensors, "parameters": {"binary_data_output": True}},
                                *feeds.values())
    status, answer_headers, data = call(srv, "POST", "/v2/models/mixed/infer", body, headers)
    assert status == 200 and answer_headers["content-type"] == "application/octet-stream"
    head, rest = split_answer(answer_headers, data)
    assert head["id"] == "bin-1"
    at = 0
    for entry in head["outputs"]:
        value = expected[entry["name"]]
        size = entry["parameters"]["binary_data_size"]
        assert "data" not in entry and size == value.nbytes
        np.testing.assert_array_equal(np.frombuffer(rest[at:at + size], value.dtype).reshape(value.shape), value)
        at += size
    assert at == len(rest) and [e["name"] for e in head["outputs"]] == list(expected)


def test_binary_and_json_outputs_in_one_answer(srv, client, test_repo):
    """Per-output binary_data beside the top-level binary_data_output, raw and with tritonclient."""
    feeds = mixed_feeds()
    expected = reference(test_repo / "mixed" / "1" / "model.onnx", feeds)
    tensors = [{"name": n, "datatype": t, "shape": [2, 4], "parameters": {"binary_data_size": v.nbytes}}
               for (n, v), t in zip(feeds.items(), ["FP32", "INT64", "BOOL"])]
    outputs = [{"name": "sum", "parameters": {"binary_data": True}}, {"name": "c_not"},
               {"name": "a_half", "parameters": {"binary_data": False}}]
    for top in (False, True):  # a_half stays JSON either way; c_not follows the top level
        body, headers = binary_body({"inputs": tensors, "outputs": outputs,
                                     "parameters": {"binary_data_output": top}}, *feeds.values())
        status, answer_headers, data = call(srv, "POST", "/v2/models/mixed/infer", body, headers)
        assert status == 200, data
        head, rest = split_answer(answer_headers, data)
        entries = {e["name"]: e for e in head["outputs"]}
        assert "data" in entries["a_half"] and ("data" in entries["c_not"]) != top
        np.testing.assert_array_equal(np.array(entries["a_half"]["data"], np.float16).reshape(2, 4),
                                      expected["a_half"])
        binary = ["sum", "c_not"] if top else ["sum"]
        assert len(rest) == sum(expected[n].nbytes for n in binary)
        np.testing.assert_array_equal(np.frombuffer(rest[:32], np.float32).reshape(2, 4), expected["sum"])
    inputs = [HTTP.input(n, v, t) for (n, v), t in zip(feeds.items(), ["FP32", "INT64", "BOOL"])]
    result = client.infer("mixed", inputs, outputs=[HTTP.output("sum", binary_data=True),
                                                    HTTP.output("c_not", binary_data=False)], request_id="r7")
    assert result.get_response()["id"] == "r7"
    np.testing.assert_array_equal(result.as_numpy("sum"), expected["sum"])
    np.testing.assert_array_equal(result.as_numpy("c_not"), expected["c_not"])


def test_bytes_binary_and_json(client):
    text = np.array([[b"hello", "\u00fcber \x00 nul".encode(), b""]], dtype=object)
    for binary in (True, False):
        result = client.infer("identity_BYTES", [HTTP.input("x", text, "BYTES", binary_data=binary)],
                              outputs=[HTTP.output("y", binary_data=binary)])
        got = result.as_numpy("y")
        assert ("data" in result.get_output("y")) != binary
        assert (got.tolist() if binary else [[v.encode() for v in row] for row in got.tolist()]) == text.tolist()
    # ONNX Runtime's strings are text: bytes that are not UTF-8 are refused, as on gRPC
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'x'", "not UTF-8"):
        client.infer("identity_BYTES", [HTTP.input("x", np.array([[b"\xff", b"", b""]], dtype=object), "BYTES")])


def test_binary_sizes_that_do_not_add_up_are_400(srv):
    x = np.arange(4, dtype=np.float32)
    for size, extra, fragment in ((16, b"xx", "add up to 16 bytes"), (32, b"", "binary_data_size is 32")):
        body, headers = binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                                 "parameters": {"binary_data_size": size}}]}, x)
        status, _, data = call(srv, "POST", "/v2/models/scale/infer", body + extra, headers)
        assert status == 400 and fragment in json.loads(data)["error"], data


def test_compressed_request_bodies(client, srv):
    for algorithm in ("gzip", "deflate"):
        result = client.infer("scale", [HTTP.input("x", X, "FP32")], model_version="1",
                              request_compression_algorithm=algorithm)
        assert result.as_numpy("y").tolist() == (2 * X).tolist(), algorithm
    body, headers = binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                             "parameters": {"binary_data_size": 16}}]}, X)
    status, _, data = call(srv, "POST", "/v2/models/scale/infer", gzip.compress(body)[:-8],
                           {**headers, "Content-Encoding": "gzip"})
    assert status == 400 and "ends early" in json.loads(data)["error"]
    status, _, data = call(srv, "POST", "/v2/models/scale/infer", body, {**headers, "Content-Encoding": "br"})
    assert status == 415 and "'br' is not supported" in json.loads(data)["error"]


def test_asyncio_client(srv):
    async def main() -> None:
        async with aioclient.InferenceServerClient(srv.http_url) as c:
            assert await c.is_server_live() and await c.is_server_ready() and await c.is_model_ready("scale")
            assert (await c.get_model_metadata("scale", "1"))["versions"] == ["1", "2"]
            assert (await c.get_model_config("mlp"))["max_batch_size"] == 32
            calls = [c.infer("scale", [_aio_input(X * k)], model_version="2", request_id=str(k)) for k in range(8)]
            for k, result in enumerate(await asyncio.gather(*calls)):
                assert result.get_response()["id"] == str(k) and result.as_numpy("y").tolist() == (3 * k * X).tolist()
            with expect_error(grpc.StatusCode.NOT_FOUND, "no-such-model"):
                await c.infer("no-such-model", [_aio_input(X)])

    asyncio.run(main())


def _aio_input(x: np.ndarray) -> aioclient.InferInput:
    tensor = aioclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


# -- connections -------------------------------------------------------------------

def test_many_calls_on_one_kept_alive_connection(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    body, headers = binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                             "parameters": {"binary_data_size": 16}}],
                                 "parameters": {"binary_data_output": True}}, X)
    try:
        conn.connect()
        first = conn.sock
        for i in range(50):
            if i % 2:
                conn.request("GET", "/v2/health/ready")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b'{"ready":true}')
            else:
                conn.request("POST", "/v2/models/scale/versions/1/infer", body, headers)
                response = conn.getresponse()
                _, rest = split_answer({k.lower(): v for k, v in response.getheaders()}, response.read())
                assert response.status == 200 and np.frombuffer(rest, np.float32).tolist() == (2 * X).tolist()
            assert conn.sock is first, f"the server closed the connection after call {i}"
    finally:
        conn.close()


class _Stream:
    """A socket's one buffered reader, for http.client.HTTPResponse to read answers one
    after another (each would close it after its own)."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def makefile(self, *args, **kwargs):
        return self

    def close(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self.reader, name)


def test_pipelined_requests_are_answered_in_order(srv):
    def request(request_id: str, k: float) -> bytes:
        body = json.dumps({"id": request_id, "inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                                         "data": (k * X).tolist()}]}).encode()
        return (f"POST /v2/models/scale/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=60) as sock:
        sock.sendall(request("first", 1) + request("second", 10) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        stream = _Stream(sock.makefile("rb"))
        answers = []
        for _ in range(3):
            response = http.client.HTTPResponse(stream)
            response.begin()
            answers.append((response.status, json.loads(response.read())))
    assert [status for status, _ in answers] == [200, 200, 200]
    assert [a.get("id") for _, a in answers[:2]] == ["first", "second"]
    assert answers[0][1]["outputs"][0]["data"] == (2 * X).tolist()
    assert answers[1][1]["outputs"][0]["data"] == (20 * X).tolist()
    assert answers[2][1] == {"live": True}


# -- repository ----------------------------------------------------------------------

def test_repository_index_load_and_unload(make_server, test_repo):
    server = make_server(test_repo, "--no-metrics", "--model-control-mode", "explicit", "--load-model", "mlp")
    c = HTTP.client(server)
    index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["mlp"]["state"] == "READY" and index["scale"].get("state") != "READY"
    assert not c.is_model_ready("scale")
    c.load_model("scale")
    assert c.is_model_ready("scale") and c.is_model_ready("scale", "1")
    assert c.infer("scale", [HTTP.input("x", X, "FP32")]).as_numpy("y").tolist() == (3 * X).tolist()
    status, ready = call_json(server, "POST", "/v2/repository/index", {"ready": True})
    assert status == 200 and sorted(m["name"] for m in ready) == ["mlp", "scale", "scale"]
    c.unload_model("scale")
    assert not c.is_model_ready("scale")
    with expect_error(grpc.StatusCode.UNAVAILABLE, "model 'scale' is not loaded"):
        c.infer("scale", [HTTP.input("x", X, "FP32")])
    with expect_error(grpc.StatusCode.NOT_FOUND, "no-such-model"):
        c.load_model("no-such-model")
    status, error = call_json(server, "POST", "/v2/repository/index", {"ready": "yes"})
    assert status == 400 and "'ready' must be true or false" in error["error"]
    assert call_json(server, "GET", "/v2/repository/models/scale/load")[0] == 405


# -- tokens and TLS ----------------------------------------------------------------

ADMIN = "admin-0123456789abcdef"
TEAM = "team-mlp-0123456789ab"
TOKENS = f"# test tokens\n{ADMIN}\n{TEAM}  mlp   # only the mlp model\n"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def mlp_input() -> list[httpclient.InferInput]:
    return [HTTP.input("input", np.ones((1, 16), np.float32), "FP32")]


def test_bearer_tokens_and_per_model_lists(make_server, ops_repo, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server = make_server(ops_repo, "--no-metrics", "--auth-tokens-file", str(tokens),
                         metadata=tuple(bearer(ADMIN).items()))
    c = HTTP.client(server)
    with expect_error(grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer <token>"):
        c.infer("scale", [HTTP.input("x", X, "FP32")])
    with expect_error(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"):
        c.infer("scale", [HTTP.input("x", X, "FP32")], headers=bearer("not-a-token-of-this-server"))
    status, headers, _ = call(server, "GET", "/v2/health/ready")  # health too, without --auth-open-health
    assert (status, headers["www-authenticate"]) == (401, "Bearer")
    assert c.infer("scale", [HTTP.input("x", X, "FP32")], headers=bearer(ADMIN)).as_numpy("y").tolist() \
        == (3 * X).tolist()
    assert c.get_model_repository_index(headers=bearer(ADMIN))
    team = bearer(TEAM)
    assert c.infer("mlp", mlp_input(), headers=team).as_numpy("output").shape == (1, 4)
    assert c.get_model_metadata("mlp", headers=team)["name"] == "mlp"
    assert c.get_inference_statistics("mlp", headers=team)["model_stats"]
    assert c.is_server_ready(headers=team)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "only the models mlp", "'scale' is not among them"):
        c.infer("scale", [HTTP.input("x", X, "FP32")], headers=team)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "'scale'"):
        c.get_model_config("scale", headers=team)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "'scale'"):
        c.get_model_metadata("scale", "1", headers=team)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "spans every model"):
        c.get_model_repository_index(headers=team)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "spans every model"):
        c.get_inference_statistics(headers=team)


def test_open_health_leaves_probes_and_metadata_open(make_server, ops_repo):
    server = make_server(ops_repo, "--no-metrics", "--auth-tokens-env", "ICOW_TEST_TOKENS", "--auth-open-health",
                         env={"ICOW_TEST_TOKENS": TOKENS})
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/scale", "/v2/models/scale/ready",
                 "/v2/models/scale/versions/1/ready"):
        assert call(server, "GET", path)[0] == 200, path
    for path in ("/v2/models/scale/config", "/v2/models/scale/stats", "/v2/models/stats"):
        assert call(server, "GET", path)[0] == 401, path
    c = HTTP.client(server)
    with expect_error(grpc.StatusCode.UNAUTHENTICATED):
        c.infer("scale", [HTTP.input("x", X, "FP32")])
    assert c.infer("scale", [HTTP.input("x", X, "FP32")], headers=bearer(ADMIN)).as_numpy("y").tolist() \
        == (3 * X).tolist()


def _tls_channel(ca: Path, cert: Path | None = None, key: Path | None = None):
    def make(url: str) -> grpc.Channel:
        return grpc.secure_channel(url, grpc.ssl_channel_credentials(
            ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None))
    return make


def test_tls(make_server, ops_repo, pki):
    server = make_server(ops_repo, "--no-metrics", "--tls-cert", str(pki.server_cert), "--tls-key",
                         str(pki.server_key), channel=_tls_channel(pki.ca))
    c = httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_options={"ca_certs": str(pki.ca)})
    assert c.is_server_ready()
    assert c.infer("scale", [HTTP.input("x", X, "FP32")]).as_numpy("y").tolist() == (3 * X).tolist()
    context = ssl.create_default_context(cafile=str(pki.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=60)
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().status == 200
    conn.close()
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # plaintext to the TLS port
        call(server, "GET", "/v2/health/live")
    with pytest.raises(ssl.SSLError):  # a server certificate of another CA is refused by the client
        http.client.HTTPSConnection("127.0.0.1", server.http_port, context=ssl.create_default_context(),
                                    timeout=60).request("GET", "/v2/health/live")


def test_mutual_tls_needs_a_client_certificate_of_the_ca(make_server, ops_repo, pki):
    server = make_server(ops_repo, "--no-metrics", "--tls-cert", str(pki.server_cert), "--tls-key",
                         str(pki.server_key), "--tls-client-ca", str(pki.ca),
                         channel=_tls_channel(pki.ca, pki.client_cert, pki.client_key))
    c = httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_options={
        "ca_certs": str(pki.ca), "certfile": str(pki.client_cert), "keyfile": str(pki.client_key)})
    assert c.infer("scale", [HTTP.input("x", X, "FP32")]).as_numpy("y").tolist() == (3 * X).tolist()
    for cert, key in ((None, None), (pki.other_client_cert, pki.other_client_key)):
        context = ssl.create_default_context(cafile=str(pki.ca))
        if cert:
            context.load_cert_chain(str(cert), str(key))
        conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=60)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            conn.request("GET", "/v2/health/live")
            conn.getresponse()
        conn.close()


# -- limits and deadlines ---------------------------------------------------------

def test_bodies_over_the_limit_are_413(make_server, ops_repo):
    server = make_server(ops_repo, "--no-metrics", "--max-message-mb", "1")
    c = HTTP.client(server)
    big = np.zeros(1 << 19, dtype=np.float32)  # 2 MiB
    with expect_error(413, "over the server's limit of 1048576 bytes", "--max-message-mb"):
        c.infer("big", [HTTP.input("x", big, "FP32")])

    # no Content-Length: the limit holds as the body comes
    status, body = chunked_post_over_the_limit(server.http_port, "/v2/models/big/infer")
    assert status == 413 and "--max-message-mb" in json.loads(body)["error"]
    small = np.ones(1000, dtype=np.float32)
    assert np.array_equal(c.infer("big", [HTTP.input("x", small, "FP32")]).as_numpy("y"), small)
    # an answer over the limit: refused, with how to raise it
    inputs = [HTTP.input("x", np.ones(1, np.float32), "FP32"), HTTP.input("n", np.array([1 << 19], np.int64), "INT64")]
    with expect_error(413, "response of model 'expand'", "--max-message-mb"):
        c.infer("expand", inputs)


def chunked_post_over_the_limit(port: int, path: str, chunks: int = 3, size: int = 600_000) -> tuple[int, bytes]:
    """POST a chunked body of ``chunks`` x ``size`` bytes; the answer's status and body.
    The server answers and closes as soon as the body passes its limit, so sending the rest
    may fail (EPIPE); the answer is read all the same. If the close's reset reached the client
    before the answer could be read (TCP drops unread data then), the exchange is tried again."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            try:
                sock.sendall(head)
                for _ in range(chunks):
                    sock.sendall(b"%x\r\n" % size + bytes(size) + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed mid-body: read its answer
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
        if b"\r\n\r\n" in answer:
            head, _, body = answer.partition(b"\r\n\r\n")
            return int(head.split()[1]), body
    raise AssertionError("no answer could be read in five tries")


def slow_inputs(size: int, module=httpclient) -> list:
    transport = Transport("http" if module is httpclient else "grpc")
    return [transport.input("x", np.array([1.0], np.float32), "FP32"),
            transport.input("n", np.array([size, size], np.int64), "INT64")]


LONG = 4000  # the slow model's size for a run that outlasts what the test does meanwhile (seconds here)


class Running:
    """A call on its own thread (tritonclient.http's async_infer runs only when gevent is
    given the thread): its result or its error once it ends."""

    def __init__(self, target) -> None:
        self.result = self.error = None
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self._thread.start()

    def _run(self, target) -> None:
        try:
            self.result = target()
        except Exception as e:  # noqa: BLE001 - the test reads it
            self.error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self):
        self._thread.join(300)
        assert self.done(), "the call did not end"
        if self.error is not None:
            raise self.error
        return self.result


def slow_call(server: ServerProcess, size: int = LONG) -> Running:
    """A slow call over HTTP, in the server (running or queued) before this returns."""
    before = pending(server, "slow")
    running = Running(lambda: HTTP.client(server).infer("slow", slow_inputs(size)).as_numpy("y").item())
    wait_for("the slow call to reach the server", lambda: pending(server, "slow") == before + 1)
    return running


def test_calls_beyond_the_concurrency_limit_are_429(make_server, ops_repo):
    server = make_server(ops_repo, "--max-concurrent-requests", "1")
    running = slow_call(server)
    c = HTTP.client(server)
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-concurrent-requests 1"):
        c.infer("scale", [HTTP.input("x", X, "FP32")])
    assert not running.done(), "the slow call ended before the refused one: the test proves nothing"
    assert np.isclose(running.join(), LONG ** 3, rtol=0.05)  # float32 sums of LONG² products
    assert c.infer("scale", [HTTP.input("x", X, "FP32")]).as_numpy("y").tolist() == (3 * X).tolist()


def test_a_timeout_parameter_that_is_no_number_of_microseconds_is_400(make_server, ops_repo):
    """What the timeout does (a queue timeout where the model allows it, as over gRPC):
    tests/test_priority.py."""
    server = make_server(ops_repo)
    status, _, data = call(server, "POST", "/v2/models/scale/infer",
                           json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0] * 4}],
                                       "parameters": {"timeout": -1}}).encode())
    assert status == 400 and "parameters.timeout" in json.loads(data)["error"]


def slow_request(size: int, binary: bool) -> bytes:
    """A raw HTTP request for the slow model, its tensors in JSON or binary."""
    x, n = np.array([1.0], np.float32), np.array([size, size], np.int64)
    if binary:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
                  {"name": "n", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}]
        header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
        body, extra = header + x.tobytes() + n.tobytes(), f"Inference-Header-Content-Length: {len(header)}\r\n"
    else:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]},
                                      {"name": "n", "datatype": "INT64", "shape": [2], "data": [size, size]}]}).encode()
        extra = ""
    return (f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: icow\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def raw_call(server: ServerProcess, request: bytes) -> bytes:
    """``request`` sent on a connection of its own; the answer's first bytes."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=300) as s:
        s.sendall(request)
        return s.recv(1 << 16)


# JSON tensors take the Python path, whose queue is the Python scheduler's; binary ones
# the C++ lane, which waits in line on the grpcio plane (it shares gRPC's fast path there).
@pytest.mark.parametrize("binary, plane", [(False, "native"), (True, "grpcio")], ids=["json", "binary"])
def test_a_request_whose_client_goes_away_leaves_the_queue_unrun(make_server, ops_repo, binary, plane):
    server = make_server(ops_repo, "--data-plane", plane)
    running = Running(lambda: raw_call(server, slow_request(LONG, binary)))
    wait_for("the long call to run", lambda: pending(server, "slow") == 1)
    with socket.create_connection(("127.0.0.1", server.http_port)) as gone:
        gone.sendall(slow_request(10, binary))
        wait_for("the second call to wait in the queue", lambda: pending(server, "slow") == 2)
    wait_for("the call of the client that went away to leave the queue", lambda: pending(server, "slow") == 1)
    assert not running.done(), "the long run ended first: the call may have left by running, the test proves nothing"
    c = HTTP.client(server)
    assert c.get_inference_statistics("slow", "1")["model_stats"][0]["inference_stats"]["fail"]["count"] == 1
    assert running.join().startswith(b"HTTP/1.1 200")
    wait_for("nothing left to run", lambda: pending(server, "slow") == 0)
    assert c.get_inference_statistics("slow", "1")["model_stats"][0]["execution_count"] == 1  # the long call only


def test_http_and_grpc_take_the_same_instances(make_server, ops_repo):
    """The slow model has one instance: a gRPC call made while an HTTP call runs on it
    waits for it (here until its deadline, 0.2 s into a run of seconds), as two gRPC calls would."""
    server = make_server(ops_repo)
    running = Running(lambda: raw_call(server, slow_request(LONG, True)))
    wait_for("the long call to run", lambda: pending(server, "slow") == 1)
    with expect_error(grpc.StatusCode.DEADLINE_EXCEEDED):
        GRPC.client(server).infer("slow", slow_inputs(10, grpcclient), client_timeout=0.2)
    assert not running.done(), "the long run ended before the deadline: the test proves nothing"
    assert running.join().startswith(b"HTTP/1.1 200")


def test_an_http_request_waits_behind_grpc_and_takes_the_instance_it_frees(make_server, ops_repo):
    server = make_server(ops_repo)
    long_grpc = Running(lambda: GRPC.client(server).infer("slow", slow_inputs(LONG, grpcclient)).as_numpy("y"))
    wait_for("the long gRPC call to run", lambda: pending(server, "slow") == 1)
    waiting = Running(lambda: raw_call(server, slow_request(10, True)))
    wait_for("the HTTP call to wait in the queue", lambda: pending(server, "slow") == 2)
    assert not long_grpc.done(), "the long run ended first: the test proves nothing"
    long_grpc.join()
    assert waiting.join().startswith(b"HTTP/1.1 200")  # handed the instance when the gRPC run ended
    c = HTTP.client(server)
    assert c.get_inference_statistics("slow", "1")["model_stats"][0]["execution_count"] == 2


# -- access log, metrics, statistics ----------------------------------------------------

def test_access_log_records_failed_http_calls(make_server, ops_repo):
    server = make_server(ops_repo, "--no-metrics", "--log-format", "json")
    c = HTTP.client(server)
    c.infer("scale", [HTTP.input("x", X, "FP32")], request_id="fine")
    with expect_error(grpc.StatusCode.NOT_FOUND):
        c.infer("no-such-model", [HTTP.input("x", X, "FP32")], request_id="req-43")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT):
        c.infer("scale", [HTTP.input("x", X[:3], "FP32")], request_id="req-44")
    server.stop()
    records = json_lines(server.log())
    failed = next(r for r in records if r.get("method") == "HTTP POST /v2/models/no-such-model/infer")
    assert (failed["status"], failed["model"], failed["level"], failed["logger"]) == \
        ("404", "no-such-model", "INFO", "icow.access")
    assert "no model 'no-such-model'" in failed["message"] and failed["peer"].startswith("127.0.0.1:")
    assert failed["request_id"] == "req-43"
    invalid = next(r for r in records if r.get("method") == "HTTP POST /v2/models/scale/infer")
    assert (invalid["status"], invalid["model"], invalid["request_id"]) == ("400", "scale", "req-44")
    assert not any(r.get("request_id") == "fine" for r in records)  # successes only at debug


def test_access_log_at_debug_records_every_http_call(make_server, ops_repo):
    server = make_server(ops_repo, "--no-metrics", "--log-level", "debug")
    HTTP.client(server).infer("scale", [HTTP.input("x", X, "FP32")], model_version="1", request_id="fine")
    server.stop()
    assert "HTTP POST /v2/models/scale/versions/1/infer scale 1 200" in server.log()


def test_metrics_count_http_inferences(srv, client):
    def count(name: str, version: str, **labels: str) -> float:
        return sample(scrape(srv.metrics_port), name, model="scale", version=version, **labels)

    success = count("nv_inference_request_success", "1")
    failure = count("nv_inference_request_failure", "1", reason="OTHER")
    for _ in range(3):
        client.infer("scale", [HTTP.input("x", X, "FP32")], model_version="1")
    GRPC.client(srv).infer("scale", [GRPC.input("x", X, "FP32")], model_version="1")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT):
        client.infer("scale", [HTTP.input("x", X[:3], "FP32")], model_version="1")  # wrong shape
    assert count("nv_inference_request_success", "1") == success + 4
    assert count("nv_inference_request_failure", "1", reason="OTHER") == failure + 1  # an invalid request


def test_statistics_and_metadata_over_http_equal_grpcs(srv, client):
    """The same answers on both transports, field for field (gRPC's through icow's own
    protos: tritonclient's lack icow's additions, such as version_labels)."""
    client.infer("scale", [HTTP.input("x", X, "FP32")], model_version="1")
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url))
    for model, version in (("scale", ""), ("scale", "1"), ("mlp", ""), ("", "")):
        over_grpc = as_dict(stub.ModelStatistics(pb.ModelStatisticsRequest(name=model, version=version)))
        assert client.get_inference_statistics(model, version) == over_grpc, (model, version)
    assert client.get_inference_statistics("scale", "1")["model_stats"][0]["inference_stats"]["success"]["count"] > 0
    for model in ("mixed", "scale", "strings"):
        assert client.get_model_metadata(model) == as_dict(stub.ModelMetadata(pb.ModelMetadataRequest(name=model)))
        assert client.get_model_config(model) == as_dict(stub.ModelConfig(pb.ModelConfigRequest(name=model)))["config"]
    assert client.get_server_metadata() == as_dict(stub.ServerMetadata(pb.ServerMetadataRequest()))
    assert client.get_model_repository_index() == \
        as_dict(stub.RepositoryIndex(pb.RepositoryIndexRequest()))["models"]


# -- shared memory ---------------------------------------------------------------------

def test_system_shared_memory(client):
    key = f"/icow-test-{secrets.token_hex(4)}"
    handle = shm.create_shared_memory_region("http-io", key, 64)
    try:
        shm.set_shared_memory_region(handle, [X])
        client.register_system_shared_memory("http-io", key, 64)
        status = client.get_system_shared_memory_status()
        assert [(r["name"], r["key"], r["byte_size"]) for r in status] == [("http-io", key, 64)]
        assert client.get_system_shared_memory_status("http-io")[0]["name"] == "http-io"
        tensor = httpclient.InferInput("x", [4], "FP32")
        tensor.set_shared_memory("http-io", 16)
        output = httpclient.InferRequestedOutput("y")
        output.set_shared_memory("http-io", 16, offset=32)
        result = client.infer("scale", [tensor], outputs=[output], model_version="2")
        entry = result.get_output("y")
        assert (entry["datatype"], entry["shape"]) == ("FP32", [4]) and "data" not in entry
        assert "binary_data_size" not in entry.get("parameters", {})  # the bytes are in the region only
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [4], offset=32), 3 * X)
        with expect_error(grpc.StatusCode.NOT_FOUND, "no shared-memory region named 'nope'"):
            bad = httpclient.InferInput("x", [4], "FP32")
            bad.set_shared_memory("nope", 16)
            client.infer("scale", [bad])
        client.unregister_system_shared_memory("http-io")
        assert client.get_system_shared_memory_status() == []
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_shared_memory_is_refused_without_the_flag(make_server, ops_repo):
    server = make_server(ops_repo, "--no-metrics")
    c = HTTP.client(server)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--allow-client-shm"):
        c.register_system_shared_memory("r", "/icow-test-none", 64)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--allow-client-shm"):
        c.get_system_shared_memory_status()
    tensor = httpclient.InferInput("x", [4], "FP32")
    tensor.set_shared_memory("r", 16)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--allow-client-shm", "input 'x'"):
        c.infer("scale", [tensor])


# -- shutdown ------------------------------------------------------------------------

def test_sigterm_lets_http_calls_in_flight_finish(make_server, ops_repo):
    server = make_server(ops_repo, "--shutdown-grace-secs", "120", "--log-format", "json")
    calls = [slow_call(server, LONG), slow_call(server, 1000)]  # one running, one queued behind it
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=300) == 0
    for running, size in zip(calls, (LONG, 1000)):
        assert np.isclose(running.join(), size ** 3, rtol=0.05)
    messages = [r["message"] for r in json_lines(server.log())]
    assert "received SIGTERM, stopping (grace 120s)" in messages


def test_http_off_with_port_zero(make_server, ops_repo):
    server = make_server(ops_repo, "--no-metrics", "--http-port", "0")
    assert grpcclient.InferenceServerClient(server.url).is_server_ready()
    assert "(HTTP/REST" not in server.log() and f"icow listening on {server.url}" in server.log()


def test_errors_are_inference_server_exceptions_with_the_http_status(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no-such-model")
    assert e.value.status() == "404"
