"""``icow import-model`` and ``icow export-model``, run as commands, into and out of
folders and a real S3-compatible store (SeaweedFS), in both of its layouts."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import make_models
from litecow_client import call

X = np.arange(4, dtype=np.float32)


def icow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icow", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """ONNX files of scale models (y = 2x, 3x, 5x)."""
    paths = {}
    for factor in (2, 3, 5):
        paths[f"x{factor}"] = tmp_path / f"scale{factor}.onnx"
        paths[f"x{factor}"].write_bytes(make_models.scale(float(factor)).SerializeToString())
    return paths


def test_import_into_a_folder_and_export(tmp_path, files):
    repo = tmp_path / "repo"
    first = icow("import-model", "--source", str(files["x2"]), "m", "--repository", str(repo))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"imported {files['x2']} as model 'm': version 1 at {repo}/m/1/model.onnx"
    second = icow("import-model", "--source", f"file://{files['x3']}", "m", "--repository", str(repo))
    assert second.returncode == 0 and "version 2 at" in second.stdout
    assert (repo / "m" / "2" / "model.onnx").read_bytes() == files["x3"].read_bytes()

    again = icow("import-model", "--source", str(files["x5"]), "m", "--version", "2", "--repository", str(repo))
    assert again.returncode == 1 and "model 'm' already has version 2" in again.stderr
    assert (repo / "m" / "2" / "model.onnx").read_bytes() == files["x3"].read_bytes()
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]

    newest = tmp_path / "out" / "newest.onnx"
    newest.parent.mkdir()
    exported = icow("export-model", "m", "--dest", str(newest), "--repository", str(repo))
    assert exported.returncode == 0 and exported.stdout.strip() == f"exported model 'm' version 2 to {newest}"
    assert newest.read_bytes() == files["x3"].read_bytes()
    v1 = tmp_path / "out" / "v1.onnx"
    assert icow("export-model", "m", "--version", "1", "--dest", str(v1), "--repository", str(repo)).returncode == 0
    assert v1.read_bytes() == files["x2"].read_bytes()

    taken = icow("export-model", "m", "--dest", str(newest), "--repository", str(repo))
    assert taken.returncode == 1 and "exists; give a new file" in taken.stderr
    missing = icow("export-model", "m", "--version", "9", "--dest", str(tmp_path / "x.onnx"), "--repository", str(repo))
    assert missing.returncode == 1
    assert "model 'm' has no version 9" in missing.stderr and "it has: 1, 2" in missing.stderr


def test_import_refuses_what_is_not_a_valid_model(tmp_path, files):
    repo = tmp_path / "repo"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    result = icow("import-model", "--source", str(garbage), "m", "--repository", str(repo))
    assert result.returncode == 1 and "is not a valid ONNX model" in result.stderr
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("not_made", TensorProto.FLOAT, [2])])
    invalid = tmp_path / "invalid.onnx"
    onnx.save(helper.make_model(graph), invalid)
    result = icow("import-model", "--source", str(invalid), "m", "--repository", str(repo))
    assert result.returncode == 1 and "'not_made' is not an output of any node" in result.stderr
    for bad_name in ("a/b", "..", "m.onnx"):
        result = icow("import-model", "--source", str(files["x2"]), bad_name, "--repository", str(repo))
        assert result.returncode == 1 and "is not a model name" in result.stderr
    result = icow("import-model", "--source", str(files["x2"]), "m", "--version", "0", "--repository", str(repo))
    assert result.returncode == 2 and "not a version number" in result.stderr
    assert not repo.exists()


def test_import_from_a_url(tmp_path, files):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files["x2"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = icow("import-model", "--source", f"{base}/{files['x2'].name}", "m", "--repository", str(tmp_path / "r"))
        missing = icow("import-model", "--source", f"{base}/nope.onnx", "m", "--repository", str(tmp_path / "r"))
    finally:
        server.shutdown()
        server.server_close()
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r" / "m" / "1" / "model.onnx").read_bytes() == files["x2"].read_bytes()
    assert missing.returncode == 1 and "cannot download" in missing.stderr and "404" in missing.stderr


def test_triton_layout_in_a_store(s3, tmp_path, files):
    bucket = s3.new_bucket()
    repo = f"s3://{bucket}/team"
    env, endpoint = s3.env(), ["--s3-endpoint", s3.endpoint]
    for name in ("x2", "x3"):
        result = icow("import-model", "--source", str(files[name]), "m", "--repository", repo, *endpoint, env=env)
        assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"version 2 at s3://{bucket}/team/m/2/model.onnx")
    stored = s3.client().get_object(Bucket=bucket, Key="team/m/1/model.onnx")["Body"].read()
    assert stored == files["x2"].read_bytes()
    again = icow("import-model", "--source", str(files["x5"]), "m", "--version", "1", "--repository", repo,
                 *endpoint, env=env)
    assert again.returncode == 1 and f"already has version 1 in {repo}" in again.stderr

    # Out to a file and to the store, and back in from the store into a folder.
    out = tmp_path / "v1.onnx"
    assert icow("export-model", "m", "--version", "1", "--dest", str(out), "--repository", repo, *endpoint,
                env=env).returncode == 0
    assert out.read_bytes() == files["x2"].read_bytes()
    exported = icow("export-model", "m", "--dest", f"s3://{bucket}/exports/m.onnx", "--repository", repo,
                    *endpoint, env=env)
    assert exported.returncode == 0 and "version 2 to" in exported.stdout
    back = icow("import-model", "--source", f"s3://{bucket}/exports/m.onnx", "m", "--repository",
                str(tmp_path / "local"), *endpoint, env=env)
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "local" / "m" / "1" / "model.onnx").read_bytes() == files["x3"].read_bytes()


def test_litecow_layout_in_a_store(s3, make_server, tmp_path, files, litecow):
    bucket = s3.new_bucket(versioning=True)
    s3.client().put_object(Bucket=bucket, Key="legacy.onnx", Body=files["x2"].read_bytes())  # untagged
    env, endpoint = s3.env(), ["--s3-endpoint", s3.endpoint]
    result = icow("import-model", "--source", str(files["x3"]), "legacy", "--repository", f"s3://{bucket}",
                  *endpoint, env=env)
    assert result.returncode == 0, result.stderr
    assert f"version 2 at s3://{bucket}/legacy.onnx (object version" in result.stdout
    assert "tagged model-version=2" in result.stdout
    again = icow("import-model", "--source", str(files["x5"]), "legacy", "--version", "1",
                 "--repository", f"s3://{bucket}", *endpoint, env=env)
    assert again.returncode == 1 and "already has version 1" in again.stderr

    server = make_server(f"s3://{bucket}", *endpoint, "--model-cache", str(tmp_path / "cache"), env=env)
    one, two = litecow(server.url, [call(f"s3://{bucket}/legacy.onnx", {"x": X}, model_version="1"),
                                    call(f"s3://{bucket}/legacy.onnx", {"x": X}, model_version="2")])
    np.testing.assert_array_equal(one.outputs["y"], X * 2)  # the object that was there: tagged 1 on import
    np.testing.assert_array_equal(two.outputs["y"], X * 3)

    plain = s3.new_bucket()
    s3.client().put_object(Bucket=plain, Key="legacy.onnx", Body=files["x2"].read_bytes())
    refused = icow("import-model", "--source", str(files["x3"]), "legacy", "--repository", f"s3://{plain}",
                   *endpoint, env=env)
    assert refused.returncode == 1 and "bucket without versioning" in refused.stderr
    assert s3.client().get_object(Bucket=plain, Key="legacy.onnx")["Body"].read() == files["x2"].read_bytes()
