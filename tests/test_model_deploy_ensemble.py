"""Deploying an ensemble over the wire: RepositoryModelLoad with a ``config`` whose platform
is "ensemble" and no files (as in Triton, its versions hold none) writes config.pbtxt and an
empty version folder, then serves it; a config that cannot run (an unknown step model, a
cycle, datatypes that do not meet) is refused naming the step, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as httpclient

import make_models
from helpers import expect_error
from test_ensemble import ensemble_config
from test_model_deploy import icow_models, tree

X = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
BATCHED = json.dumps({"max_batch_size": 8})


def tensor(name: str, datatype: str = "TYPE_FP32") -> dict:
    return {"name": name, "data_type": datatype, "dims": [4]}


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> dict:
    return {"model_name": model, "model_version": version, "input_map": inputs, "output_map": outputs}


def ensemble(steps: list[dict], inputs: list[dict] | None = None, outputs: list[dict] | None = None,
             **extra) -> str:
    """An ensemble's config in JSON, as tritonclient's load_model(config=...) sends it."""
    return json.dumps({"platform": "ensemble", "max_batch_size": 8, "input": inputs or [tensor("IN")],
                       "output": outputs or [tensor("OUT")], "ensemble_scheduling": {"step": steps}, **extra})


# OUT = (IN * 2) + 1: "double" then "inc"
CHAIN = ensemble([step("double", {"x": "IN"}, {"y": "D"}), step("inc", {"x": "D"}, {"y": "OUT"})])


def model_bytes(op: str, constant: float) -> bytes:
    return make_models.elementwise(op, constant).SerializeToString()


def grpc_out(client: tc.InferenceServerClient, model: str, x: np.ndarray = X) -> np.ndarray:
    tensor_in = tc.InferInput("IN", list(x.shape), "FP32")
    tensor_in.set_data_from_numpy(x)
    return client.infer(model, [tensor_in]).as_numpy("OUT")


def http_out(client: httpclient.InferenceServerClient, model: str, x: np.ndarray = X) -> np.ndarray:
    tensor_in = httpclient.InferInput("IN", list(x.shape), "FP32")
    tensor_in.set_data_from_numpy(x)
    return client.infer(model, [tensor_in]).as_numpy("OUT")


@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_deploy_composing_models_then_the_ensemble(tmp_path, make_server, plane):
    repo = tmp_path / "models"
    repo.mkdir()
    server = make_server(repo, "--allow-deploy", "--data-plane", plane)
    client = tc.InferenceServerClient(server.url)
    http_client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("double", config=BATCHED, files={"file:1/model.onnx": model_bytes("Mul", 2.0)})
    http_client.load_model("inc", config=BATCHED, files={"file:1/model.onnx": model_bytes("Add", 1.0)})

    client.load_model("chain", config=CHAIN)  # the config alone: Triton's way for an ensemble
    assert client.is_model_ready("chain", "1")
    np.testing.assert_array_equal(grpc_out(client, "chain"), X * 2 + 1)
    np.testing.assert_array_equal(http_out(http_client, "chain"), X * 2 + 1)
    assert sorted(p.name for p in (repo / "chain").iterdir()) == ["1", "config.pbtxt"]
    assert not any((repo / "chain" / "1").iterdir())  # as in Triton: the version folder is empty

    # Over HTTP, two steps side by side: OUT = double(IN) + inc(IN), a third model deployed for it.
    http_client.load_model("add", config=BATCHED,
                           files={"file:1/model.onnx": make_models.add().SerializeToString()})
    diamond = ensemble([step("double", {"x": "IN"}, {"y": "A"}), step("inc", {"x": "IN"}, {"y": "B"}),
                        step("add", {"a": "A", "b": "B"}, {"sum": "OUT"})])
    http_client.load_model("diamond", config=diamond)
    np.testing.assert_array_equal(http_out(http_client, "diamond"), X * 2 + (X + 1))

    # The same deploy again changes nothing; a specific policy adds its (empty) version folders.
    client.load_model("chain", config=CHAIN)
    client.load_model("chain", config=ensemble(json.loads(CHAIN)["ensemble_scheduling"]["step"],
                                               version_policy={"specific": {"versions": [1, 2]}}))
    assert sorted(p.name for p in (repo / "chain").iterdir()) == ["1", "2", "config.pbtxt"]
    assert client.is_model_ready("chain", "1") and client.is_model_ready("chain", "2")

    server.stop()  # what was deployed serves after a restart: the ensembles load after their steps
    again = make_server(repo, "--allow-deploy", "--data-plane", plane)
    client = tc.InferenceServerClient(again.url)
    np.testing.assert_array_equal(grpc_out(client, "chain"), X * 2 + 1)
    np.testing.assert_array_equal(grpc_out(client, "diamond"), X * 2 + (X + 1))
    assert not list(repo.glob(".deploy-*"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    make_models.write(make_models.elementwise("Mul", 2.0), repo, "double")
    make_models.write(make_models.elementwise("Add", 1.0), repo, "inc")
    make_models.write(make_models.elementwise("Mul", 3.0), repo, "triple")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    return repo


REFUSED = [  # (what is wrong, ensemble config, code, what the message names)
    ("unknown model", ensemble([step("double", {"x": "IN"}, {"y": "D"}), step("nowhere", {"x": "D"}, {"y": "OUT"})]),
     grpc.StatusCode.INVALID_ARGUMENT, ["step 1 (model 'nowhere')", "no model 'nowhere'"]),
    ("cycle of steps", ensemble([step("double", {"x": "T2"}, {"y": "T1"}), step("inc", {"x": "T1"}, {"y": "T2"}),
                                 step("triple", {"x": "IN"}, {"y": "OUT"})]),
     grpc.StatusCode.INVALID_ARGUMENT, ["cycle", "step 0 (model 'double')"]),
    ("runs itself", ensemble([step("double", {"x": "IN"}, {"y": "D"}), step("fresh", {"IN": "D"}, {"OUT": "OUT"})]),
     grpc.StatusCode.INVALID_ARGUMENT, ["step 1 (model 'fresh')", "cycle"]),
    ("wrong datatype", ensemble([step("double", {"x": "IN"}, {"y": "OUT"})], inputs=[tensor("IN", "TYPE_INT32")]),
     grpc.StatusCode.INVALID_ARGUMENT, ["step 0 (model 'double'): input 'x' is FP32", "INT32"]),
    ("no such input", ensemble([step("double", {"nope": "IN"}, {"y": "OUT"})]),
     grpc.StatusCode.INVALID_ARGUMENT, ["step 0 (model 'double')", "'nope'"]),
    ("no such version", ensemble([step("double", {"x": "IN"}, {"y": "OUT"}, version=7)]),
     grpc.StatusCode.INVALID_ARGUMENT, ["step 0 (model 'double')", "no version '7'"]),
    ("step not ready", ensemble([step("broken", {"x": "IN"}, {"y": "OUT"})]),
     grpc.StatusCode.FAILED_PRECONDITION, ["step 0 (model 'broken')", "not ready"]),
    ("no steps", ensemble([]), grpc.StatusCode.INVALID_ARGUMENT, ["at least one step"]),
    ("version 0", ensemble([step("double", {"x": "IN"}, {"y": "OUT"})], version_policy={"specific": {"versions": [0]}}),
     grpc.StatusCode.INVALID_ARGUMENT, ["positive versions"]),
]


@pytest.mark.parametrize("what,config,code,fragments", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_broken_ensemble_is_refused_and_writes_nothing(repo, make_server, what, config, code, fragments):
    before = tree(repo)
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    with expect_error(code, *fragments):
        client.load_model("fresh", config=config)
    with expect_error(code, *fragments):
        httpclient.InferenceServerClient(server.http_url).load_model("fresh", config=config)
    assert tree(repo) == before and not list(repo.glob(".deploy-*"))


def test_an_ensemble_takes_no_files_and_a_cycle_through_a_deployed_ensemble_is_refused(repo, make_server):
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    chain = ensemble([step("double", {"x": "IN"}, {"y": "D"}), step("inc", {"x": "D"}, {"y": "OUT"})])
    before = tree(repo)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "an ensemble's versions hold no files", "file:1/model.onnx"):
        client.load_model("outer", config=chain, files={"file:1/model.onnx": model_bytes("Mul", 2.0)})
    assert tree(repo) == before
    client.load_model("inner", config=chain)
    client.load_model("outer", config=ensemble([step("inner", {"IN": "IN"}, {"OUT": "OUT"})]))
    np.testing.assert_array_equal(grpc_out(client, "outer"), X * 2 + 1)
    # "inner" redeployed to run "outer", which runs "inner": refused, and both serve on as they were.
    before = tree(repo)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "step 0 (model 'outer')", "cycle"):
        client.load_model("inner", config=ensemble([step("outer", {"IN": "IN"}, {"OUT": "OUT"})]))
    assert tree(repo) == before
    np.testing.assert_array_equal(grpc_out(client, "outer"), X * 2 + 1)


def test_an_ensemble_over_a_model_with_files_is_refused(repo, make_server):
    """Its versions would become an ensemble's while they still hold model.onnx."""
    server = make_server(repo, "--allow-deploy")
    client = tc.InferenceServerClient(server.url)
    before = tree(repo)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "model 'triple' has versions that hold files (1)",
                      "deploy it under another name"):
        client.load_model("triple", config=CHAIN)
    assert tree(repo) == before


def test_the_cli_deploys_an_ensemble_from_its_config_alone(repo, make_server, tmp_path):
    server = make_server(repo, "--allow-deploy")
    config = tmp_path / "pipe.pbtxt"
    config.write_text(ensemble_config(
        [("triple", -1, {"x": "IN"}, {"y": "T"}), ("inc", -1, {"x": "T"}, {"y": "OUT"})],
        [("IN", "TYPE_FP32", [4])], [("OUT", "TYPE_FP32", [4])]))
    done = icow_models("deploy", "--model", "pipe", "--config", str(config), "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert "deployed ensemble 'pipe'" in done.stdout and "loaded: ensemble 'pipe'" in done.stderr
    np.testing.assert_array_equal(grpc_out(tc.InferenceServerClient(server.url), "pipe"), X * 3 + 1)
    assert sorted(p.name for p in (repo / "pipe").iterdir()) == ["1", "config.pbtxt"]
    plain = tmp_path / "plain.pbtxt"
    plain.write_text("max_batch_size: 8\n")
    refused = icow_models("deploy", "--model", "other", "--config", str(plain), "--url", server.url)
    assert refused.returncode == 2 and "give FILE.onnx, or --config with an ensemble's config" in refused.stderr


def test_an_ensemble_is_not_deployed_into_an_object_store(s3, make_server, tmp_path):
    """An object store keeps no empty folder, so an ensemble's version would be lost: refused."""
    bucket = s3.new_bucket()
    server = make_server(f"s3://{bucket}/team", "--s3-endpoint", s3.endpoint, "--model-cache", str(tmp_path / "cache"),
                         "--allow-deploy", env=s3.env())
    client = tc.InferenceServerClient(server.url)
    client.load_model("double", config=BATCHED, files={"file:1/model.onnx": model_bytes("Mul", 2.0)})
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "object store", "empty version folder"):
        client.load_model("chain", config=ensemble([step("double", {"x": "IN"}, {"y": "OUT"})]))
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["team/double/1/model.onnx", "team/double/config.pbtxt"]
