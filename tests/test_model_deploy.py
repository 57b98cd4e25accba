"""Deploy over the wire (Triton's repository extension): RepositoryModelLoad with a
``config`` and ``file:<version>/model.onnx`` parameters, from tritonclient (gRPC and
HTTP) and ``icow models deploy``, into a folder or an object store; refused without
--allow-deploy, for tokens without +deploy, for hostile names and broken files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

import make_models
from helpers import expect_error, infer_input
from icow._proto import inference_pb2, inference_pb2_grpc

X = np.arange(4, dtype=np.float32)
TOKEN_ALL = "all-models-no-deploy-0123456789"
TOKEN_DEPLOY = "deployer-of-scale-0123456789"
TOKEN_DEPLOY_ALL = "deployer-of-all-0123456789"


def scale_bytes(factor: float) -> bytes:
    return make_models.scale(factor).SerializeToString()


def scale_y(client, model: str, version: str = "", **kwargs) -> list[float]:
    result = client.infer(model, [infer_input("x", X, "FP32")], model_version=version, **kwargs)
    return result.as_numpy("y").tolist()


def http_scale_y(client, model: str, version: str = "") -> list[float]:
    x = httpclient.InferInput("x", [4], "FP32")
    x.set_data_from_numpy(X)
    return client.infer(model, [x], model_version=version).as_numpy("y").tolist()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    make_models.write(make_models.scale(2.0), repo, "scale")
    return repo


def test_deploy_over_grpc_and_http_survives_a_restart(repo, make_server):
    server = make_server(repo, "--allow-deploy")
    grpc_client = tc.InferenceServerClient(server.url)
    http_client = httpclient.InferenceServerClient(server.http_url)
    grpc_client.load_model("fresh", config=json.dumps({"name": "fresh"}), files={"file:1/model.onnx": scale_bytes(5)})
    assert scale_y(grpc_client, "fresh") == (X * 5).tolist()
    assert (repo / "fresh" / "1" / "model.onnx").read_bytes() == scale_bytes(5)
    assert (repo / "fresh" / "config.pbtxt").read_text().strip() == 'name: "fresh"'
    http_client.load_model("viahttp", config="{}", files={"file:3/model.onnx": scale_bytes(6)})
    assert http_scale_y(http_client, "viahttp") == (X * 6).tolist()
    assert grpc_client.get_model_metadata("viahttp").versions == ["3"]

    # A second version: the default policy (latest) serves it, and only it.
    grpc_client.load_model("fresh", config="{}", files={"file:2/model.onnx": scale_bytes(7)})
    assert scale_y(grpc_client, "fresh") == (X * 7).tolist()
    assert not grpc_client.is_model_ready("fresh", "1") and grpc_client.is_model_ready("fresh", "2")
    # The same deploy again changes nothing; other bytes for a version it has are refused.
    grpc_client.load_model("fresh", config="{}", files={"file:2/model.onnx": scale_bytes(7)})
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, "already has a version 2"):
        grpc_client.load_model("fresh", config="{}", files={"file:2/model.onnx": scale_bytes(8)})
    # A config that keeps every version: both serve, by number.
    grpc_client.load_model("fresh", config=json.dumps({"version_policy": {"all": {}}}))
    assert scale_y(grpc_client, "fresh", "1") == (X * 5).tolist()
    assert scale_y(grpc_client, "fresh", "2") == (X * 7).tolist()

    server.stop()
    again = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(again.url)
    assert scale_y(client, "fresh", "1") == (X * 5).tolist() and scale_y(client, "fresh") == (X * 7).tolist()
    assert scale_y(client, "viahttp") == (X * 6).tolist()
    assert not list(repo.glob(".deploy-*"))


def test_refused_without_allow_deploy(repo, make_server, tmp_path):
    before = tree(repo)
    server = make_server(repo, "--model-control-mode", "explicit", "--load-model", "scale")
    client = tc.InferenceServerClient(server.url)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--allow-deploy"):
        client.load_model("fresh", config="{}", files={"file:1/model.onnx": scale_bytes(5)})
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--allow-deploy"):
        httpclient.InferenceServerClient(server.http_url).load_model("scale", config="{}")
    client.load_model("scale")  # a plain load still works
    assert tree(repo) == before
    conflict = subprocess.run([sys.executable, "-m", "icow", "serve", "--allow-deploy", "--model-control-mode",
                               "poll", "--model-repository", str(repo)], capture_output=True, text=True, timeout=60)
    assert conflict.returncode == 2 and "--allow-deploy needs --model-control-mode explicit" in conflict.stderr


def test_only_tokens_with_deploy_may_deploy(repo, make_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN_ALL} *\n{TOKEN_DEPLOY} scale +deploy\n{TOKEN_DEPLOY_ALL} +deploy\n")
    server = make_server(repo, "--allow-deploy", "--auth-tokens-file", str(tokens),
                         metadata=[("authorization", f"Bearer {TOKEN_ALL}")])
    client = tc.InferenceServerClient(server.url)
    http_client = httpclient.InferenceServerClient(server.http_url)

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    files = {"file:2/model.onnx": scale_bytes(9)}
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "+deploy"):
        client.load_model("scale", headers=bearer(TOKEN_ALL), config="{}", files=files)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "+deploy"):
        http_client.load_model("scale", headers=bearer(TOKEN_ALL), config="{}", files=files)
    client.load_model("scale", headers=bearer(TOKEN_ALL))  # loading without parameters needs no +deploy
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, "model 'other' is not among them"):
        client.load_model("other", headers=bearer(TOKEN_DEPLOY), config="{}", files=files)
    assert not (repo / "scale" / "2").exists() and not (repo / "other").exists()
    client.load_model("scale", headers=bearer(TOKEN_DEPLOY), config="{}", files=files)
    assert scale_y(client, "scale", headers=bearer(TOKEN_DEPLOY)) == (X * 9).tolist()
    http_client.load_model("other", headers=bearer(TOKEN_DEPLOY_ALL), config="{}", files=files)
    assert scale_y(client, "other", headers=bearer(TOKEN_ALL)) == (X * 9).tolist()
    tokens.write_text(f"{TOKEN_ALL} * +root\n")
    bad = subprocess.run([sys.executable, "-m", "icow", "serve", "--auth-tokens-file", str(tokens),
                          "--model-repository", str(repo)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown permission '+root'" in bad.stderr


HOSTILE_FILES = ["file:../1/model.onnx", "file:1/../../evil.onnx", "file:/etc/model.onnx", "file:1/sub/model.onnx",
                 "file:0/model.onnx", "file:1/.hidden", "file:1/", "file:01x/model.onnx", "file:1\\model.onnx"]
HOSTILE_NAMES = ["..", ".hidden", "a\\b", "tab\there", "x" * 300]


def test_hostile_names_and_configs_write_nothing(repo, make_server):
    before = tree(repo)
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    good = scale_bytes(3)
    for key in HOSTILE_FILES:
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "is not 'file:<version>/<file name>'"):
            client.load_model("fresh", config="{}", files={key: good})
    for name in HOSTILE_NAMES:
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT):
            client.load_model(name, config="{}", files={"file:1/model.onnx": good})
    cases = [
        ("{not json", "is not a model config in JSON"),
        (json.dumps({"name": "other"}), "names the model 'other'"),
        (json.dumps({"sequence_batching": {}}), "sequence_batching"),
        (json.dumps({"version_policy": {"latest": {"num_versions": 0}}}), "num_versions"),
    ]
    for config, fragment in cases:
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, fragment):
            client.load_model("fresh", config=config, files={"file:1/model.onnx": good})
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "need the 'config' parameter"):
        client.load_model("fresh", files={"file:1/model.onnx": good})
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "no 'file:1/model.onnx'"):
        client.load_model("fresh", config="{}", files={"file:1/other.onnx": good})
    with grpc.insecure_channel(server.url) as channel:  # a file as a string, an unknown parameter
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        for key, parameter in (("file:1/model.onnx", inference_pb2.ModelRepositoryParameter(string_param="x")),
                               ("nope", inference_pb2.ModelRepositoryParameter(bool_param=True))):
            request = inference_pb2.RepositoryModelLoadRequest(model_name="fresh")
            request.parameters[key].CopyFrom(parameter)
            with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "is not one icow takes"):
                stub.RepositoryModelLoad(request)
    status, answer = post(server.http_url, "fresh", {"parameters": {"config": "{}", "file:1/model.onnx": "no!"}})
    assert status == 400 and "the file's contents in base64" in answer["error"]
    assert tree(repo) == before


def test_broken_files_leave_nothing(repo, make_server):
    before = tree(repo)
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "version 1 does not load, nothing was written"):
        client.load_model("fresh", config="{}", files={"file:1/model.onnx": b"this is not an onnx model"})
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "version 2 does not load"):
        client.load_model("scale", config="{}", files={"file:2/model.onnx": b"\x08\x07garbage"})
    wrong_input = json.dumps({"input": [{"name": "nope", "data_type": "TYPE_FP32", "dims": [4]}]})
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'nope' is not in the model"):
        client.load_model("scale", config=wrong_input, files={"file:2/model.onnx": scale_bytes(4)})
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'nope' is not in the model"):
        client.load_model("scale", config=wrong_input)  # a config alone is checked on the versions it serves
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'nope' is not in the model"):  # files it has already
        client.load_model("scale", config=wrong_input, files={"file:1/model.onnx": scale_bytes(2)})
    assert tree(repo) == before
    assert scale_y(client, "scale") == (X * 2).tolist()


def test_deploy_into_an_object_store(s3, make_server, tmp_path):
    bucket = s3.new_bucket()
    server = make_server(f"s3://{bucket}/team", "--s3-endpoint", s3.endpoint, "--model-cache", str(tmp_path / "cache"),
                         "--allow-deploy", env=s3.env())
    client = tc.InferenceServerClient(server.url)
    client.load_model("fresh", config=json.dumps({"version_policy": {"all": {}}}),
                      files={"file:1/model.onnx": scale_bytes(5)})
    httpclient.InferenceServerClient(server.http_url).load_model(
        "fresh", config=json.dumps({"version_policy": {"all": {}}}), files={"file:2/model.onnx": scale_bytes(6)})
    assert scale_y(client, "fresh", "1") == (X * 5).tolist() and scale_y(client, "fresh") == (X * 6).tolist()
    store = s3.client()
    keys = sorted(o["Key"] for o in store.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["team/fresh/1/model.onnx", "team/fresh/2/model.onnx", "team/fresh/config.pbtxt"]
    assert store.get_object(Bucket=bucket, Key="team/fresh/2/model.onnx")["Body"].read() == scale_bytes(6)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "does not load"):
        client.load_model("fresh", config="{}", files={"file:3/model.onnx": b"broken"})
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, "already has a version 1"):
        client.load_model("fresh", config="{}", files={"file:1/model.onnx": scale_bytes(9)})
    assert len(store.list_objects_v2(Bucket=bucket)["Contents"]) == 3


def big_model(floats: int) -> onnx.ModelProto:
    """y = x + W[:4] with W an initializer of ``floats`` FP32 values (4 bytes each)."""
    weights = numpy_helper.from_array(np.arange(floats, dtype=np.float32) % 1000, "W")
    nodes = [helper.make_node("Constant", [], ["start"], value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Constant", [], ["end"], value=numpy_helper.from_array(np.array([4], np.int64))),
             helper.make_node("Slice", ["W", "start", "end"], ["w4"]), helper.make_node("Add", ["x", "w4"], ["y"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_100_mib_model_over_grpc(repo, make_server):
    data = big_model(25 * 1024 * 1024).SerializeToString()
    assert len(data) > 100 << 20
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    start = time.monotonic()
    client.load_model("big", config="{}", files={"file:1/model.onnx": data})
    print(f"deployed {len(data) / (1 << 20):.1f} MiB over gRPC in {time.monotonic() - start:.1f} s")
    assert scale_y(client, "big") == (X + np.arange(4)).tolist()
    assert (repo / "big" / "1" / "model.onnx").stat().st_size == len(data)


def icow_models(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icow", "models", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_deploy(repo, make_server, tmp_path):
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    model = tmp_path / "m.onnx"
    model.write_bytes(scale_bytes(4))
    done = icow_models("deploy", str(model), "--model", "newcli", "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert "deployed" in done.stdout and "version 1" in done.stdout
    assert "read " in done.stderr and "sending it to" in done.stderr and "loaded:" in done.stderr
    assert scale_y(client, "newcli") == (X * 4).tolist()
    # A model the server has: its config comes along (here as config.pbtxt), version 2, labelled canary.
    config = tmp_path / "config.pbtxt"
    config.write_text("version_policy: { all: {} }\n")
    model.write_bytes(scale_bytes(6))
    canary = icow_models("deploy", str(model), "--model", "newcli", "--config", str(config), "--label", "canary",
                         "--url", server.url)
    assert canary.returncode == 0, canary.stderr
    assert "label canary -> version 2" in canary.stderr
    assert scale_y(client, "newcli", "canary") == (X * 6).tolist()
    assert scale_y(client, "newcli", "1") == (X * 4).tolist()
    refused = icow_models("deploy", str(model), "--model", "newcli", "--url", server.url)
    assert refused.returncode == 2 and "give --config" in refused.stderr
    json_config = tmp_path / "config.json"
    json_config.write_text(json.dumps({"version_policy": {"latest": {"num_versions": 1}}}))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"broken")
    failed = icow_models("deploy", str(broken), "--model", "newcli", "--config", str(json_config), "--url", server.url)
    assert failed.returncode == 1 and "INVALID_ARGUMENT" in failed.stderr and "does not load" in failed.stderr


def test_http_file_parameter_is_base64(repo, make_server):
    """Triton's REST form, by hand: the file's bytes in base64 inside the JSON body."""
    server = make_server(repo, "--allow-deploy")
    body = {"parameters": {"config": "{}", "file:1/model.onnx": base64.b64encode(scale_bytes(3)).decode()}}
    status, answer = post(server.http_url, "raw", body)
    assert status == 200, answer
    assert http_scale_y(httpclient.InferenceServerClient(server.http_url), "raw") == (X * 3).tolist()


def post(address: str, model: str, body: dict) -> tuple[int, dict]:
    """POST a load request; the HTTP status and the JSON answer."""
    request = urllib.request.Request(f"http://{address}/v2/repository/models/{model}/load",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_model_over_the_message_limit_is_refused_whole(repo, make_server, tmp_path):
    """A model travels in one message: --max-message-mb bounds it, on both ports, and nothing is written."""
    data = big_model(600_000).SerializeToString()  # 2.3 MiB, over a limit of 1
    before = tree(repo)
    server = make_server(repo, "--allow-deploy", "--max-message-mb", "1")
    with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED):
        tc.InferenceServerClient(server.url).load_model("big", config="{}", files={"file:1/model.onnx": data})
    with expect_error(413, "--max-message-mb"):
        httpclient.InferenceServerClient(server.http_url).load_model("big", config="{}",
                                                                     files={"file:1/model.onnx": data})
    model = tmp_path / "big.onnx"
    model.write_bytes(data)
    cli = icow_models("deploy", str(model), "--model", "big", "--url", server.url)
    assert cli.returncode == 1 and "--max-message-mb must be above 2.3 MiB" in cli.stderr, cli.stderr
    assert tree(repo) == before


def test_icow_clients_deploy(repo, make_server):
    from icow.client import AsyncClient, Client

    server = make_server(repo, "--allow-deploy")
    with Client(server.url) as client:
        client.load("sync", config="{}", files={"file:1/model.onnx": scale_bytes(2)})
        assert client.infer("sync", {"x": X})["y"].tolist() == (X * 2).tolist()

    async def deploy_async() -> list[float]:
        async with AsyncClient(server.url) as client:
            await client.load("async", config="{}", files={"file:1/model.onnx": scale_bytes(3)})
            return (await client.infer("async", {"x": X}))["y"].tolist()

    assert asyncio.run(deploy_async()) == (X * 3).tolist()
