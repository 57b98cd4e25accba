"""Model repositories in an object store: a real S3-compatible server (SeaweedFS,
started by the ``s3`` fixture), in Triton's layout and in lIteCOW's, served to
tritonclient and to the litecow 0.1.0 client; downloads cut short or corrupted
by a proxy never replace a serving version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tc

import make_models
from conftest import ROOT
from helpers import expect_error, infer_input, reference
from litecow_client import call

X = np.arange(4, dtype=np.float32)


def scale_bytes(factor: float) -> bytes:
    return make_models.scale(factor).SerializeToString()


def upload_folder(client, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}".lstrip("/"),
                          Body=path.read_bytes())


def serve_store(make_server, s3, url: str, cache: Path, *args: str, endpoint: str | None = None):
    return make_server(url, "--s3-endpoint", endpoint or s3.endpoint, "--model-cache", str(cache), *args,
                       env=s3.env())


def scale_y(client, model: str, version: str = "") -> list[float]:
    return client.infer(model, [infer_input("x", X, "FP32")], model_version=version).as_numpy("y").tolist()


def index(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def test_triton_layout(s3, make_server, tmp_path, litecow):
    bucket = s3.new_bucket()
    examples = ROOT / "examples" / "models"
    for name in ("scale", "mlp"):
        upload_folder(s3.client(), bucket, examples / name, f"team/models/{name}")
    cache = tmp_path / "cache"
    server = serve_store(make_server, s3, f"s3://{bucket}/team/models", cache)
    client = tc.InferenceServerClient(server.url)
    assert scale_y(client, "scale", "1") == (X * 2).tolist()  # config.pbtxt came along: all versions
    assert scale_y(client, "scale") == (X * 3).tolist()
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_array_equal(client.infer("mlp", [infer_input("input", x, "FP32")]).as_numpy("output"),
                                  reference(examples / "mlp" / "1" / "model.onnx", {"input": x})["output"])
    assert (cache / "scale" / "2" / "model.onnx").read_bytes() == (examples / "scale" / "2" / "model.onnx").read_bytes()
    assert server.log().count("fetched from") == 3

    v1, prefixed, other_bucket, unknown = litecow(server.url, [
        call(f"s3://{bucket}/scale", {"x": X}, model_version="1"),
        call(f"s3://{bucket}/team/models/scale.onnx", {"x": X}),
        call("s3://elsewhere/scale", {"x": X}),
        call(f"s3://{bucket}/nope", {"x": X}),
    ])
    np.testing.assert_array_equal(v1.outputs["y"], X * 2)
    np.testing.assert_array_equal(prefixed.outputs["y"], X * 3)
    assert other_bucket.code == "NOT_FOUND" and f"repository is s3://{bucket}/team/models" in other_bucket.details
    assert unknown.code == "NOT_FOUND" and f"no model 'nope' in the repository s3://{bucket}/team/models" \
        in unknown.details

    # A second server on the same cache finds every file there, checked by its ETag: no download.
    server.stop()
    again = serve_store(make_server, s3, f"s3://{bucket}/team/models", cache)
    assert scale_y(tc.InferenceServerClient(again.url), "scale", "1") == (X * 2).tolist()
    assert "fetched from" not in again.log()


def test_litecow_layout(s3, make_server, tmp_path, litecow):
    bucket = s3.new_bucket(versioning=True)
    client = s3.client()
    for factor, tagging in ((2.0, "model-version=1"), (3.0, "model-version=2"), (5.0, ""), (7.0, "model-version=v3")):
        client.put_object(Bucket=bucket, Key="scaler.onnx", Body=scale_bytes(factor), Tagging=tagging)
    client.put_object(Bucket=bucket, Key="plain", Body=scale_bytes(4.0))  # never tagged: version 1
    server = serve_store(make_server, s3, f"s3://{bucket}", tmp_path / "cache")
    one, two, newest, untagged, unknown, plain = litecow(server.url, [
        call(f"s3://{bucket}/scaler.onnx", {"x": X}, model_version="1"),
        call(f"s3://{bucket}/scaler.onnx", {"x": X}, model_version="2"),
        call(f"s3://{bucket}/scaler.onnx", {"x": X}),
        call(f"s3://{bucket}/scaler", {"x": X}, model_version="3"),
        call(f"s3://{bucket}/scaler", {"x": X}, model_version="v3"),
        call(f"s3://{bucket}/plain", X),
    ])
    np.testing.assert_array_equal(one.outputs["y"], X * 2)
    np.testing.assert_array_equal(two.outputs["y"], X * 3)
    np.testing.assert_array_equal(newest.outputs["y"], X * 3)
    assert untagged.code == "NOT_FOUND" and "ready versions: 1, 2" in untagged.details
    assert unknown.code == "NOT_FOUND"
    np.testing.assert_array_equal(plain.outputs["y"], X * 4)
    assert "tagged model-version='v3', not a version number; left out" in server.log()
    assert {k: v[0] for k, v in index(tc.InferenceServerClient(server.url)).items()} == {
        ("scaler", "1"): "READY", ("scaler", "2"): "READY", ("plain", "1"): "READY"}


def test_failed_downloads_never_replace_a_serving_version(s3, s3_proxy, make_server, tmp_path):
    bucket = s3.new_bucket()
    store = s3.client()
    store.put_object(Bucket=bucket, Key="m/1/model.onnx", Body=scale_bytes(2.0))
    cache = tmp_path / "cache"
    server = serve_store(make_server, s3, f"s3://{bucket}", cache, "--model-control-mode", "explicit",
                         "--load-model", "m", endpoint=s3_proxy.endpoint)
    client = tc.InferenceServerClient(server.url)
    assert scale_y(client, "m") == (X * 2).tolist()

    # A new version cut off halfway: not served, reported, and version 1 serves on.
    store.put_object(Bucket=bucket, Key="m/2/model.onnx", Body=scale_bytes(3.0))
    s3_proxy.key_suffix, s3_proxy.fault = "m/2/model.onnx", "truncate"
    with expect_error(grpc.StatusCode.INTERNAL, "version 2: download from", "cut short"):
        client.load_model("m")
    assert s3_proxy.faulted == 1
    assert scale_y(client, "m") == (X * 2).tolist()
    state, reason = index(client)[("m", "2")]
    assert state == "UNAVAILABLE" and "download from" in reason
    assert not (cache / "m" / "2").exists()

    s3_proxy.fault = None
    client.load_model("m")
    assert scale_y(client, "m") == (X * 3).tolist()

    # Version 2 replaced in the store, its download corrupted: the cached copy serves on.
    store.put_object(Bucket=bucket, Key="m/2/model.onnx", Body=scale_bytes(5.0))
    s3_proxy.fault = "corrupt"
    client.load_model("m")
    assert s3_proxy.faulted == 2
    assert scale_y(client, "m") == (X * 3).tolist()
    assert "is not its ETag" in server.log() and "the cached copy stays" in server.log()

    s3_proxy.fault = None
    client.load_model("m")
    assert scale_y(client, "m") == (X * 5).tolist()
    assert sorted(p.name for p in (cache / "m").iterdir()) == ["1", "2"]  # nothing half-made left behind


def test_new_and_removed_models_show_on_load(s3, make_server, tmp_path):
    bucket = s3.new_bucket()
    store = s3.client()
    store.put_object(Bucket=bucket, Key="a/1/model.onnx", Body=scale_bytes(2.0))
    server = serve_store(make_server, s3, f"s3://{bucket}", tmp_path / "cache", "--model-control-mode", "explicit")
    client = tc.InferenceServerClient(server.url)
    store.put_object(Bucket=bucket, Key="b/1/model.onnx", Body=scale_bytes(6.0))
    client.load_model("b")
    assert scale_y(client, "b") == (X * 6).tolist()
    store.delete_object(Bucket=bucket, Key="b/1/model.onnx")
    with expect_error(grpc.StatusCode.NOT_FOUND, f"no model 'b' in the repository s3://{bucket}"):
        client.load_model("b")
    assert not (tmp_path / "cache" / "b").exists()
    client.load_model("a")
    for name in ("..", ".", "a/1"):  # names that are paths reach neither the cache's parent nor inside it
        with expect_error(grpc.StatusCode.NOT_FOUND, f"no model '{name}'"):
            client.load_model(name)
    assert (tmp_path / "cache" / "a" / "1" / "model.onnx").is_file()


def icow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "icow", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_store_that_cannot_be_listed_stops_the_server(s3, tmp_path):
    bucket = s3.new_bucket()
    missing = icow("serve", "--port", "0", "--model-repository", "s3://no-such-bucket-here",
                   "--s3-endpoint", s3.endpoint, "--model-cache", str(tmp_path / "c1"), env=s3.env())
    assert missing.returncode == 1 and "icow serve:" in missing.stderr and "NoSuchBucket" in missing.stderr
    wrong_key = icow("serve", "--port", "0", "--model-repository", f"s3://{bucket}", "--s3-endpoint", s3.endpoint,
                     "--model-cache", str(tmp_path / "c2"), env={**s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert wrong_key.returncode == 1 and "SignatureDoesNotMatch" in wrong_key.stderr


def test_cache_must_be_a_folder_of_icows(s3, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    result = icow("serve", "--port", "0", "--model-repository", f"s3://{s3.new_bucket()}",
                  "--s3-endpoint", s3.endpoint, "--model-cache", str(tmp_path / "home"), env=s3.env())
    assert result.returncode == 1 and "not an icow cache" in result.stderr
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
