"""The model repository: version policies, broken models, explicit load/unload,
statistics — through tritonclient against the real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from helpers import expect_error, infer_input
from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def client(server) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(server.url)


def index(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def test_index_lists_versions_and_failures(client, server):
    entries = index(client)
    assert entries[("scale", "1")] == ("READY", "") and entries[("scale", "2")] == ("READY", "")
    state, reason = entries[("broken", "1")]
    assert state == "UNAVAILABLE" and "failed to load" in reason and "model.onnx" in reason
    state, reason = entries[("badconfig", "")]
    assert state == "UNAVAILABLE" and "config.pbtxt" in reason
    ready_only = pb.RepositoryIndexRequest(ready=True)  # tritonclient cannot ask this
    with grpc.insecure_channel(server.url) as channel:
        ready = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(ready_only).models
    assert {m.state for m in ready} == {"READY"}
    assert ("mlp", "1") in {(m.name, m.version) for m in ready}


def test_version_policy_latest(client):
    assert [k[1] for k in index(client) if k[0] == "latest2"] == ["2", "3"]
    with expect_error(grpc.StatusCode.NOT_FOUND, "ready versions: 2, 3"):
        client.infer("latest2", [infer_input("x", np.zeros(4, np.float32), "FP32")], model_version="1")


def test_version_policy_specific(client):
    assert [k[1] for k in index(client) if k[0] == "specific"] == ["1", "3"]
    assert client.get_model_metadata("specific").versions == ["1", "3"]


def test_default_policy_serves_only_the_latest(test_repo, tmp_path, make_server):
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    for version in (1, 2, 10):  # 10 > 2: versions compare as numbers, not strings
        (repo / "m" / str(version)).symlink_to(test_repo / "scale" / "1", target_is_directory=True)
    client = tc.InferenceServerClient(make_server(repo).url)
    assert client.get_model_metadata("m").versions == ["10"]


def test_statistics(client):
    before = client.get_inference_statistics("mlp").model_stats[0]
    x = np.zeros((3, 16), np.float32)
    client.infer("mlp", [infer_input("input", x, "FP32")])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "expected datatype FP32"):
        client.infer("mlp", [infer_input("input", np.zeros((3, 16), np.float64), "FP64")])
    after = client.get_inference_statistics("mlp", "1").model_stats[0]
    assert after.name == "mlp" and after.version == "1"
    assert after.inference_count == before.inference_count + 3
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.last_inference > 0
    assert any(b.batch_size == 3 for b in after.batch_stats)
    everything = client.get_inference_statistics()
    assert {(s.name, s.version) for s in everything.model_stats} >= {("mlp", "1"), ("scale", "1"), ("scale", "2")}


def test_explicit_control(test_repo, make_server):
    server = make_server(test_repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    client = tc.InferenceServerClient(server.url)
    entries = index(client)
    assert entries[("mlp", "1")] == ("READY", "")
    assert entries[("scale", "")] == ("UNAVAILABLE", "unloaded")
    assert not client.is_model_ready("scale")
    with expect_error(grpc.StatusCode.UNAVAILABLE, "model 'scale' is not loaded"):
        client.infer("scale", [infer_input("x", np.zeros(4, np.float32), "FP32")])

    client.load_model("scale")
    assert client.is_model_ready("scale", "1") and client.is_model_ready("scale", "2")
    x = np.ones(4, np.float32)
    np.testing.assert_array_equal(client.infer("scale", [infer_input("x", x, "FP32")]).as_numpy("y"), x * 3)

    client.unload_model("scale")
    assert not client.is_model_ready("scale")
    assert index(client)[("scale", "")] == ("UNAVAILABLE", "unloaded")
    assert client.is_model_ready("mlp")

    with expect_error(grpc.StatusCode.INTERNAL, "failed to load model 'broken'"):
        client.load_model("broken")
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model 'nope'"):
        client.load_model("nope")
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model '..'"):
        client.load_model("..")
    assert "mlp" in server.log() and "listening on" in server.log()


def test_explicit_load_all_at_start(test_repo, make_server):
    server = make_server(test_repo, "--model-control-mode", "explicit", "--load-model", "*")
    client = tc.InferenceServerClient(server.url)
    assert client.is_model_ready("strings") and client.is_model_ready("mixed")
