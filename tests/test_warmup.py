"""Triton's ``model_warmup``: zero, random and file data run on every instance before a
version is ready, uncounted; a broken entry fails the load naming it; a new version under
hot reload (poll or explicit mode) takes traffic only once warmed up, and no request fails."""

from __future__ import annotations

import re
import shutil
import struct
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from onnx import TensorProto, helper, numpy_helper

import make_models
from helpers import expect_error, infer_input, wait_for

N = 256  # features of the hot-reload model: enough work that a warm-up takes a while


def warmup(name: str, inputs: dict[str, str], batch_size: int = 0, count: int = 0) -> str:
    """A model_warmup entry; ``inputs``: name -> the Input message's body."""
    body = ", ".join(f'{{ key: "{k}" value: {{ {v} }} }}' for k, v in inputs.items())
    return f'{{ name: "{name}" batch_size: {batch_size} count: {count} inputs [ {body} ] }}'


def config(*entries: str, extra: str = "") -> str:
    return f"{extra}\nmodel_warmup [ {', '.join(entries)} ]\n"


@pytest.fixture
def warm_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    make_models.write(make_models.mlp(), repo, "mlp")  # input [batch, 16] FP32
    (repo / "mlp" / "warmup").mkdir()
    (repo / "mlp" / "warmup" / "ones.bin").write_bytes(np.ones(16, np.float32).tobytes())
    (repo / "mlp" / "config.pbtxt").write_text(config(
        warmup("zeros", {"input": "data_type: TYPE_FP32 dims: [16] zero_data: true"}, batch_size=4, count=2),
        warmup("file", {"input": 'data_type: TYPE_FP32 dims: [16] input_data_file: "ones.bin"'}, batch_size=2),
        extra="instance_group [ { count: 2 kind: KIND_CPU } ]"))
    make_models.write(make_models.mixed(), repo, "mixed")  # a, b, c: [batch, 4] FP32, INT64, BOOL
    (repo / "mixed" / "config.pbtxt").write_text(config(warmup("random", {
        "a": "data_type: TYPE_FP32 dims: [4] random_data: true",
        "b": "data_type: TYPE_INT64 dims: [4] random_data: true",
        "c": "data_type: TYPE_BOOL dims: [4] random_data: true"}, batch_size=3, count=3)))
    make_models.write(make_models.strings(), repo, "strings")  # text: [n] BYTES, no batching
    (repo / "strings" / "warmup").mkdir()
    (repo / "strings" / "warmup" / "words").write_bytes(
        b"".join(struct.pack("<I", len(w)) + w for w in (b"warm", b"", "up \u00e9".encode())))
    (repo / "strings" / "config.pbtxt").write_text(config(
        warmup("words", {"text": 'data_type: TYPE_STRING dims: [3] input_data_file: "words"'}),
        warmup("random strings are zeros", {"text": "data_type: TYPE_STRING dims: [2] random_data: true"}),
        extra="max_batch_size: 0"))
    make_models.write(make_models.scale(2.0), repo, "cold")  # no warm-up: loads as before
    return repo


@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_warmup_runs_before_ready_and_is_not_counted(warm_repo, make_server, plane):
    server = make_server(warm_repo, "--no-metrics", "--data-plane", plane)
    log = server.log()
    assert "warmed up model 'mlp' version 1: 2 entries, 6 runs (on 2 instances)" in log, log
    assert "warmed up model 'mixed' version 1: 1 entries, 3 runs (on 1 instance)" in log, log
    assert "warmed up model 'strings' version 1: 2 entries, 2 runs (on 1 instance)" in log, log
    assert "warmed up model 'cold'" not in log
    # Each warm-up line precedes its version's ready line.
    assert log.index("warmed up model 'mlp' version 1") < log.index("model 'mlp' version 1 is ready")

    client = tc.InferenceServerClient(server.url)
    for name in ("mlp", "mixed", "strings", "cold"):
        assert client.is_model_ready(name)
        stats = client.get_inference_statistics(name).model_stats[0]
        assert stats.inference_count == 0 and stats.execution_count == 0, (name, stats)
        assert stats.inference_stats.success.count == 0 and not stats.batch_stats, (name, stats)
    x = np.ones((1, 16), np.float32)
    client.infer("mlp", [infer_input("input", x, "FP32")])
    stats = client.get_inference_statistics("mlp").model_stats[0]
    assert stats.inference_count == 1 and stats.execution_count == 1, stats


@pytest.mark.parametrize("entry, message", [
    (warmup("wrong name", {"nope": "data_type: TYPE_FP32 dims: [16] zero_data: true"}, 1),
     "model_warmup 'wrong name': model 'mlp' has no input 'nope'"),
    (warmup("wrong type", {"input": "data_type: TYPE_INT32 dims: [16] zero_data: true"}, 1),
     "model_warmup 'wrong type': input 'input': expected datatype FP32, got INT32"),
    (warmup("wrong dims", {"input": "data_type: TYPE_FP32 dims: [15] zero_data: true"}, 1),
     "model_warmup 'wrong dims': input 'input': expected shape [-1, 16], got [1, 15]"),
    (warmup("no file", {"input": 'data_type: TYPE_FP32 dims: [16] input_data_file: "gone.bin"'}, 1),
     "model_warmup 'no file': input 'input': cannot read input_data_file warmup/gone.bin"),
    (warmup("escape", {"input": 'data_type: TYPE_FP32 dims: [16] input_data_file: "../1/model.onnx"'}, 1),
     "model_warmup 'escape': input 'input': input_data_file '../1/model.onnx' is not a file inside"),
    (warmup("absolute", {"input": 'data_type: TYPE_FP32 dims: [16] input_data_file: "/etc/hostname"'}, 1),
     "model_warmup 'absolute': input 'input': input_data_file '/etc/hostname' is not a file inside"),
    (warmup("short file", {"input": 'data_type: TYPE_FP32 dims: [16] input_data_file: "half.bin"'}, 1),
     "model_warmup 'short file': input 'input': input_data_file warmup/half.bin holds 32 bytes; "
     "dims [16] of FP32 take 64"),
    (warmup("big batch", {"input": "data_type: TYPE_FP32 dims: [16] zero_data: true"}, 33),
     "model_warmup 'big batch': batch_size 33 is over the model's max_batch_size 32"),
    (warmup("no data", {"input": "data_type: TYPE_FP32 dims: [16]"}),
     "model_warmup 'no data': input 'input' says none of zero_data, random_data or input_data_file"),
], ids=["input-name", "datatype", "dims", "missing-file", "escaping-file", "absolute-file", "file-size",
        "batch-size", "no-data"])
def test_a_broken_entry_fails_the_load_naming_it(tmp_path, make_server, entry, message):
    repo = tmp_path / "models"
    make_models.write(make_models.mlp(), repo, "mlp")
    (repo / "mlp" / "warmup").mkdir()
    (repo / "mlp" / "warmup" / "half.bin").write_bytes(np.ones(8, np.float32).tobytes())
    good = warmup("good", {"input": "data_type: TYPE_FP32 dims: [16] zero_data: true"}, 1)
    (repo / "mlp" / "config.pbtxt").write_text(config(good, entry))
    make_models.write(make_models.scale(2.0), repo, "other")
    server = make_server(repo, "--no-metrics")
    client = tc.InferenceServerClient(server.url)
    assert client.is_model_ready("other") and not client.is_model_ready("mlp")
    reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
    assert reasons["mlp"].startswith("warm-up failed: ") and message in reasons["mlp"], reasons["mlp"]
    http = th.InferenceServerClient(server.http_url)  # the same reason over HTTP
    assert any(message in m.get("reason", "") for m in http.get_model_repository_index() if m["name"] == "mlp")


def dense(factor: float) -> onnx.ModelProto:
    """y = x @ (factor * I), [batch, N]: answers factor * x with some work per row."""
    w = numpy_helper.from_array(np.eye(N, dtype=np.float32) * factor, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def publish(repo: Path, version: int) -> None:
    """Version ``version`` (answering ``version`` * x) in place by one rename."""
    staging = repo.parent / f"staging-{version}"
    make_models.write(dense(float(version)), staging, "v", 1)
    (staging / "v" / "1").rename(repo / "hot" / str(version))
    shutil.rmtree(staging)


class Traffic:
    """Client threads calling "hot" (no version named) until stopped; each thread, at the
    first answer of a version, notes whether the server's log then says it was warmed up."""

    def __init__(self, url: str, log, threads: int = 3) -> None:
        self.failures: list[Exception] = []
        self.answers: dict[str, int] = {}
        self.warmed_first: dict[str, bool] = {}  # version -> its warm-up line was logged before its first answer
        self._log = log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(url,)) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _call(self, url: str) -> None:
        client = tc.InferenceServerClient(url)
        x = np.ones((1, N), np.float32)
        while not self._stop.is_set():
            try:
                result = client.infer("hot", [infer_input("x", x, "FP32")])
                version = result.get_response().model_version
                assert float(result.as_numpy("y")[0, 0]) == float(version)
                with self._lock:
                    if version not in self.warmed_first:
                        self.warmed_first[version] = f"warmed up model 'hot' version {version}:" in self._log()
                    self.answers[version] = self.answers.get(version, 0) + 1
            except Exception as e:  # counted, never raised in the thread
                self.failures.append(e)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


@pytest.mark.parametrize("mode", ["poll", "explicit"])
def test_a_new_version_takes_traffic_only_once_warmed_up(tmp_path, make_server, mode):
    repo = tmp_path / "models"
    (repo / "hot").mkdir(parents=True)
    # Latest version only; a warm-up of 40 runs of 64 rows, long enough to be seen serving around.
    (repo / "hot" / "config.pbtxt").write_text(config(
        warmup("rows", {"x": f"data_type: TYPE_FP32 dims: [{N}] random_data: true"}, batch_size=64, count=40),
        extra="max_batch_size: 64"))
    publish(repo, 1)
    args = ["--model-control-mode", mode] + (["--repository-poll-secs", "0.1"] if mode == "poll"
                                             else ["--load-model", "hot"])
    server = make_server(repo, "--no-metrics", *args)
    client = tc.InferenceServerClient(server.url)
    traffic = Traffic(server.url, server.log)
    try:
        wait_for("answers from version 1", lambda: traffic.answers.get("1", 0) >= 20)
        publish(repo, 2)
        if mode == "explicit":
            client.load_model("hot")  # returns once version 2 serves
        wait_for("answers from version 2", lambda: traffic.answers.get("2", 0) >= 20)
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.failures[:3]
    assert traffic.warmed_first == {"1": True, "2": True}, traffic.warmed_first
    log = server.log()
    assert re.search(r"warmed up model 'hot' version 2: 1 entries, 40 runs", log), log
    assert log.index("warmed up model 'hot' version 2") < log.index("model 'hot' version 2 is ready")
    # The warm-up's 40 runs are nowhere in the statistics: only the answers clients got.
    stats = {s.version: s for s in client.get_inference_statistics("hot").model_stats}
    assert stats["2"].inference_count == traffic.answers["2"], (stats["2"], traffic.answers)


def test_a_load_request_for_a_broken_warm_up_fails_naming_the_entry(tmp_path, make_server):
    repo = tmp_path / "models"
    make_models.write(make_models.mlp(), repo, "mlp")
    (repo / "mlp" / "config.pbtxt").write_text(config(
        warmup("typo", {"inptu": "data_type: TYPE_FP32 dims: [16] zero_data: true"}, 1)))
    server = make_server(repo, "--no-metrics", "--model-control-mode", "explicit")
    client = tc.InferenceServerClient(server.url)
    with expect_error(grpc.StatusCode.INTERNAL, "failed to load model 'mlp': version 1: warm-up failed: "
                      "model_warmup 'typo': model 'mlp' has no input 'inptu'"):
        client.load_model("mlp")
    assert not client.is_model_ready("mlp")
