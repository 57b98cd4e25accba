"""TLS, mutual TLS and bearer tokens, with certificates made here and Triton's client."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import expect_error, infer_input
from ops_helpers import make_pki, scale_input

ADMIN = "admin-0123456789abcdef"
TEAM = "team-mlp-0123456789ab"
TOKENS = f"# test tokens\n{ADMIN}\n{TEAM}  mlp   # only the mlp model\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def mlp_input() -> list[tc.InferInput]:
    return [infer_input("input", np.ones((1, 16), np.float32), "FP32")]


def tls_channel(ca, cert=None, key=None):
    def make(url: str) -> grpc.Channel:
        return grpc.secure_channel(url, grpc.ssl_channel_credentials(
            ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None))
    return make


def test_tls_serves_tritonclient_and_refuses_plaintext(make_server, ops_repo, pki):
    srv = make_server(ops_repo, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                      channel=tls_channel(pki.ca))
    client = tc.InferenceServerClient(srv.url, ssl=True, root_certificates=str(pki.ca))
    assert client.infer("scale", scale_input()).as_numpy("y").tolist() == [0, 3, 6, 9]
    plain = tc.InferenceServerClient(srv.url)
    with expect_error(grpc.StatusCode.UNAVAILABLE):
        plain.infer("scale", scale_input(), client_timeout=10)
    assert "TLS" in srv.log()


def test_mutual_tls_needs_a_client_certificate_of_the_ca(make_server, ops_repo, pki):
    srv = make_server(ops_repo, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                      "--tls-client-ca", str(pki.ca), channel=tls_channel(pki.ca, pki.client_cert, pki.client_key))
    client = tc.InferenceServerClient(srv.url, ssl=True, root_certificates=str(pki.ca),
                                      private_key=str(pki.client_key), certificate_chain=str(pki.client_cert))
    assert client.infer("scale", scale_input()).as_numpy("y").tolist() == [0, 3, 6, 9]
    for kwargs in ({}, {"private_key": str(pki.other_client_key), "certificate_chain": str(pki.other_client_cert)}):
        stranger = tc.InferenceServerClient(srv.url, ssl=True, root_certificates=str(pki.ca), **kwargs)
        with expect_error(grpc.StatusCode.UNAVAILABLE):
            stranger.infer("scale", scale_input(), client_timeout=10)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKENS)
    return path


@pytest.fixture
def auth_server(make_server, ops_repo, token_file):
    return make_server(ops_repo, "--auth-tokens-file", str(token_file), "--model-control-mode", "explicit",
                       "--load-model", "*", metadata=tuple(bearer(ADMIN).items()))


def test_missing_or_wrong_token_is_unauthenticated(auth_server):
    client = tc.InferenceServerClient(auth_server.url)
    with expect_error(grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer <token>"):
        client.infer("scale", scale_input())
    with expect_error(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"):
        client.infer("scale", scale_input(), headers=bearer("not-a-token-of-this-server"))
    with expect_error(grpc.StatusCode.UNAUTHENTICATED, "must be 'Bearer <token>'"):
        client.infer("scale", scale_input(), headers={"authorization": f"Basic {ADMIN}"})
    with expect_error(grpc.StatusCode.UNAUTHENTICATED):  # health too, without --auth-open-health
        client.is_server_ready()
    with grpc.insecure_channel(auth_server.url) as channel, pytest.raises(grpc.RpcError) as e:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_without_list_may_do_everything(auth_server):
    client = tc.InferenceServerClient(auth_server.url)
    headers = bearer(ADMIN)
    assert client.infer("scale", scale_input(), headers=headers).as_numpy("y").tolist() == [0, 3, 6, 9]
    assert client.infer("mlp", mlp_input(), headers=headers).as_numpy("output").shape == (1, 4)
    assert client.get_model_repository_index(headers=headers).models
    client.unload_model("scale", headers=headers)
    client.load_model("scale", headers=headers)
    assert client.is_server_ready(headers=headers)


def test_token_with_list_is_limited_to_its_models(auth_server):
    client = tc.InferenceServerClient(auth_server.url)
    headers = bearer(TEAM)
    assert client.infer("mlp", mlp_input(), headers=headers).as_numpy("output").shape == (1, 4)
    assert client.get_model_metadata("mlp", headers=headers).name == "mlp"
    assert client.get_inference_statistics("mlp", headers=headers).model_stats
    assert client.is_server_ready(headers=headers)  # not about a model: any valid token
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "only the models mlp", "'scale' is not among them"):
        client.infer("scale", scale_input(), headers=headers)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "'scale'"):
        client.get_model_config("scale", headers=headers)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "'scale'"):
        client.unload_model("scale", headers=headers)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "spans every model"):
        client.get_model_repository_index(headers=headers)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "name a model"):
        client.get_inference_statistics(headers=headers)


def test_model_name_is_read_as_protobuf_does(auth_server):
    """A request naming 'mlp' first and 'scale' last is a request for 'scale'."""
    from icow._proto import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name="scale", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[4])], raw_input_contents=[np.zeros(4, np.float32).tobytes()])
    data = pb.ModelInferRequest(model_name="mlp").SerializeToString() + request.SerializeToString()
    with grpc.insecure_channel(auth_server.url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            infer(data, metadata=tuple(bearer(TEAM).items()), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'scale'" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            infer(b"\x0a\xff", metadata=tuple(bearer(TEAM).items()), timeout=10)  # truncated
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in e.value.details()
        answer = pb.ModelInferResponse.FromString(infer(data, metadata=tuple(bearer(ADMIN).items()), timeout=10))
        assert answer.model_name == "scale"


def test_open_health_leaves_probes_and_metadata_open(make_server, ops_repo):
    srv = make_server(ops_repo, "--auth-tokens-env", "ICOW_TEST_TOKENS", "--auth-open-health",
                      env={"ICOW_TEST_TOKENS": TOKENS})
    client = tc.InferenceServerClient(srv.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("scale")
    assert client.get_server_metadata().name == "icow"
    assert client.get_model_metadata("scale").name == "scale"
    with grpc.insecure_channel(srv.url) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    with expect_error(grpc.StatusCode.UNAUTHENTICATED):
        client.infer("scale", scale_input())
    with expect_error(grpc.StatusCode.UNAUTHENTICATED):
        client.get_model_config("scale")
    assert client.infer("scale", scale_input(), headers=bearer(ADMIN)).as_numpy("y").tolist() == [0, 3, 6, 9]


def test_tls_and_token_together(make_server, ops_repo, pki, token_file):
    srv = make_server(ops_repo, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                      "--auth-tokens-file", str(token_file), channel=tls_channel(pki.ca),
                      metadata=tuple(bearer(ADMIN).items()))
    client = tc.InferenceServerClient(srv.url, ssl=True, root_certificates=str(pki.ca))
    assert client.infer("mlp", mlp_input(), headers=bearer(TEAM)).as_numpy("output").shape == (1, 4)
    with expect_error(grpc.StatusCode.UNAUTHENTICATED):
        client.infer("mlp", mlp_input())


def serve_fails(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "icow", "serve", "--port", "0", "--no-metrics", "--http-port", "0",
                           *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("content, message", [
    ("short-token\n", "at least 16 characters"),
    ("# only comments\n\n", "holds no token"),
])
def test_unusable_token_file_is_refused(tmp_path, content, message):
    path = tmp_path / "tokens"
    path.write_text(content)
    result = serve_fails("--auth-tokens-file", str(path))
    assert result.returncode == 2 and message in result.stderr


def test_missing_token_sources_are_refused(tmp_path):
    result = serve_fails("--auth-tokens-file", str(tmp_path / "nope"))
    assert result.returncode == 2 and "cannot read token file" in result.stderr
    result = serve_fails("--auth-tokens-env", "ICOW_TEST_UNSET_VARIABLE")
    assert result.returncode == 2 and "ICOW_TEST_UNSET_VARIABLE" in result.stderr
    result = serve_fails("--auth-open-health")
    assert result.returncode == 2 and "needs --auth-tokens-file" in result.stderr


def test_bad_tls_files_are_refused(tmp_path, pki):
    result = serve_fails("--tls-cert", str(pki.server_cert))
    assert result.returncode == 1 and "both --tls-cert and --tls-key" in result.stderr
    result = serve_fails("--tls-cert", str(pki.server_key), "--tls-key", str(pki.server_key))
    assert result.returncode == 1 and "is not a PEM certificate" in result.stderr
    result = serve_fails("--tls-cert", str(pki.server_cert), "--tls-key", str(tmp_path / "nope"))
    assert result.returncode == 1 and "cannot read --tls-key" in result.stderr
