"""The response cache (``response_cache { enable: true }``, ``--cache-size-mb``): a repeat
is a hit with the same answer, on both planes, over gRPC and HTTP (binary requests that
the C++ lane would take included); a different input or output list is a miss; LRU by
bytes; never another version's answer; a version's answers go when it unloads; Triton's
statistics and metric names."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper

import make_models
from helpers import infer_input, wait_for

CACHED = "response_cache { enable: true }\n"


def identity(n: str = "n") -> onnx.ModelProto:
    """x -> y, FP32 [batch, n]: answers of any size."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def cache_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    make_models.write(make_models.mlp(), repo, "mlp")  # input [batch, 16] -> output [batch, 4]
    (repo / "mlp" / "config.pbtxt").write_text(CACHED)
    make_models.write(make_models.mlp(), repo, "uncached")
    make_models.write(make_models.mixed(), repo, "mixed")  # a, b, c -> sum, b_next, c_not, a_half
    (repo / "mixed" / "config.pbtxt").write_text(CACHED)
    make_models.write(make_models.strings(), repo, "strings")
    (repo / "strings" / "config.pbtxt").write_text("max_batch_size: 0\n" + CACHED)
    for version, factor in ((1, 2.0), (2, 3.0)):  # same inputs, an answer per version
        make_models.write(make_models.scale(factor), repo, "scale", version)
    (repo / "scale" / "config.pbtxt").write_text("version_policy: { all: {} }\n" + CACHED)
    make_models.write(identity(), repo, "big")
    (repo / "big" / "config.pbtxt").write_text(CACHED)
    return repo


def cache_stats(client, model: str, version: str = "") -> tuple[int, int, int, int]:
    """(cache hits, cache misses, inference_count, execution_count) of one version."""
    s = client.get_inference_statistics(model, version).model_stats[0]
    return (s.inference_stats.cache_hit.count, s.inference_stats.cache_miss.count, s.inference_count,
            s.execution_count)


def metrics(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M)
    assert match, f"{name}{{{labels}}} not in the metrics"
    return float(match.group(1))


@pytest.mark.parametrize("codec, plane", [("native", "native"), ("native", "grpcio"), ("protobuf", "native")])
def test_a_repeat_is_a_hit_over_grpc(cache_repo, make_server, codec, plane):
    server = make_server(cache_repo, "--cache-size-mb", "4", "--codec", codec, "--data-plane", plane)
    client = tc.InferenceServerClient(server.url)
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    first = client.infer("mlp", [infer_input("input", x, "FP32")]).as_numpy("output")
    assert cache_stats(client, "mlp") == (0, 1, 2, 1)
    again = client.infer("mlp", [infer_input("input", x, "FP32")], request_id="again")
    assert again.get_response().id == "again"  # the answer is this request's, from the cached outputs
    np.testing.assert_array_equal(again.as_numpy("output"), first)
    # A hit is a success, but no inference and no execution (as Triton counts them)
    assert cache_stats(client, "mlp") == (1, 1, 2, 1)
    s = client.get_inference_statistics("mlp").model_stats[0].inference_stats
    assert s.success.count == 2 and s.compute_infer.count == 1 and s.cache_hit.ns > 0 and s.cache_miss.ns > 0

    client.infer("mlp", [infer_input("input", x + 1, "FP32")])  # other bytes: a miss
    client.infer("mlp", [infer_input("input", x[:1], "FP32")])  # another shape: a miss
    assert cache_stats(client, "mlp")[:2] == (1, 3)
    uncached = client.infer("uncached", [infer_input("input", x, "FP32")]).as_numpy("output")
    np.testing.assert_array_equal(uncached, first)
    assert cache_stats(client, "uncached") == (0, 0, 2, 1)

    # The outputs asked for are part of the key; their order is the response's
    feeds = [infer_input("a", np.ones((1, 4), np.float32), "FP32"),
             infer_input("b", np.ones((1, 4), np.int64), "INT64"), infer_input("c", np.ones((1, 4), bool), "BOOL")]
    every = client.infer("mixed", feeds)
    some = client.infer("mixed", feeds, outputs=[tc.InferRequestedOutput("sum")])
    assert [o.name for o in some.get_response().outputs] == ["sum"]
    assert cache_stats(client, "mixed")[:2] == (0, 2)
    repeat = client.infer("mixed", feeds, outputs=[tc.InferRequestedOutput("sum")])
    np.testing.assert_array_equal(repeat.as_numpy("sum"), every.as_numpy("sum"))
    assert cache_stats(client, "mixed")[:2] == (1, 2)

    words = np.array([b"warm", b"cache"], dtype=object)  # BYTES in and out
    for _ in range(2):
        upper = client.infer("strings", [infer_input("text", words, "BYTES")]).as_numpy("upper")
        assert list(upper) == [b"WARM", b"CACHE"]
    assert cache_stats(client, "strings")[:2] == (1, 1)


@pytest.mark.parametrize("plane", ["native", "grpcio"])
def test_a_repeat_is_a_hit_over_http(cache_repo, make_server, plane):
    server = make_server(cache_repo, "--cache-size-mb", "4", "--data-plane", plane)
    client = th.InferenceServerClient(server.http_url)
    grpc_client = tc.InferenceServerClient(server.url)
    x = np.arange(16, dtype=np.float32).reshape(1, 16)

    def infer(binary: bool) -> np.ndarray:
        tensor = th.InferInput("input", [1, 16], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        output = th.InferRequestedOutput("output", binary_data=binary)
        return client.infer("mlp", [tensor], outputs=[output]).as_numpy("output")

    first = infer(binary=True)  # all binary: the request the C++ lane takes for an uncached model
    np.testing.assert_array_equal(infer(binary=True), first)
    assert cache_stats(grpc_client, "mlp") == (1, 1, 1, 1)
    np.testing.assert_array_equal(infer(binary=False), first)  # JSON: the same request, the same key
    assert cache_stats(grpc_client, "mlp") == (2, 1, 1, 1)
    # and over gRPC: one cache for both transports
    np.testing.assert_array_equal(grpc_client.infer("mlp", [infer_input("input", x, "FP32")]).as_numpy("output"),
                                  first)
    stats = client.get_inference_statistics("mlp")["model_stats"][0]  # the statistics over HTTP too
    assert stats["inference_stats"]["cache_hit"]["count"] == 3
    assert stats["inference_stats"]["cache_miss"]["count"] == 1


def test_each_version_has_its_own_answers(cache_repo, make_server):
    server = make_server(cache_repo, "--cache-size-mb", "4")
    client = tc.InferenceServerClient(server.url)
    x = np.ones(4, np.float32)
    for _ in range(3):
        for version, factor in (("1", 2), ("2", 3)):
            y = client.infer("scale", [infer_input("x", x, "FP32")], model_version=version).as_numpy("y")
            np.testing.assert_array_equal(y, x * factor)
    assert cache_stats(client, "scale", "1")[:2] == (2, 1) and cache_stats(client, "scale", "2")[:2] == (2, 1)


def test_a_reloaded_version_never_answers_from_its_old_files(cache_repo, make_server):
    server = make_server(cache_repo, "--cache-size-mb", "4", "--model-control-mode", "explicit",
                         "--load-model", "scale")
    client = tc.InferenceServerClient(server.url)
    x = np.ones(4, np.float32)
    for _ in range(2):
        assert client.infer("scale", [infer_input("x", x, "FP32")], model_version="1").as_numpy("y")[0] == 2
    make_models.write(make_models.scale(5.0), cache_repo, "scale", 1)  # version 1, retrained
    client.load_model("scale")
    assert client.infer("scale", [infer_input("x", x, "FP32")], model_version="1").as_numpy("y")[0] == 5
    assert cache_stats(client, "scale", "1")[:2] == (0, 1)  # a new version: its own, empty, part of the cache


def test_unloading_drops_the_versions_answers(cache_repo, make_server):
    server = make_server(cache_repo, "--cache-size-mb", "4", "--model-control-mode", "explicit",
                         "--load-model", "mlp", "--load-model", "scale")
    client = tc.InferenceServerClient(server.url)
    client.infer("mlp", [infer_input("input", np.ones((1, 16), np.float32), "FP32")])
    client.infer("scale", [infer_input("x", np.ones(4, np.float32), "FP32")])
    assert metric(metrics(server), "nv_cache_num_entries") == 2
    client.unload_model("mlp")
    wait_for("mlp's answer dropped", lambda: metric(metrics(server), "nv_cache_num_entries") == 1)
    client.load_model("mlp")
    client.infer("mlp", [infer_input("input", np.ones((1, 16), np.float32), "FP32")])
    assert cache_stats(client, "mlp")[:2] == (0, 1)  # loaded again: a miss, not the old answer


def test_least_recently_used_answers_leave_first(cache_repo, make_server):
    server = make_server(cache_repo, "--cache-size-mb", "1")
    client = tc.InferenceServerClient(server.url)
    n = 65536  # 256 KiB an answer: three fit in 1 MiB, a fourth does not

    def ask(value: float) -> None:
        x = np.full((1, n), value, np.float32)
        np.testing.assert_array_equal(client.infer("big", [infer_input("x", x, "FP32")]).as_numpy("y"), x)

    for value in (1, 2, 3, 1):  # three misses, then 1 is a hit and the most recent
        ask(value)
    assert cache_stats(client, "big")[:2] == (1, 3)
    ask(4)  # 2, the least recently used, leaves
    text = metrics(server)
    assert metric(text, "nv_cache_num_entries") == 3 and metric(text, "nv_cache_num_evictions") == 1
    assert 0.7 < metric(text, "nv_cache_util") <= 1
    ask(1)
    ask(2)  # a miss again; 3 leaves
    assert cache_stats(client, "big")[:2] == (2, 5)
    ask(4)
    ask(3)
    assert cache_stats(client, "big")[:2] == (3, 6)
    big = np.ones((1, 4 * n), np.float32)  # 1 MiB: over the whole cache, answered and not kept
    client.infer("big", [infer_input("x", big, "FP32")])
    client.infer("big", [infer_input("x", big, "FP32")])
    assert cache_stats(client, "big")[:2] == (3, 8)


def test_metrics_have_tritons_names(cache_repo, make_server):
    server = make_server(cache_repo, "--cache-size-mb", "4")
    client = tc.InferenceServerClient(server.url)
    x = np.ones((1, 16), np.float32)
    for _ in range(3):
        client.infer("mlp", [infer_input("input", x, "FP32")])
    text = metrics(server)
    labels = 'model="mlp",version="1"'
    assert metric(text, "nv_cache_num_hits_per_model", labels) == 2
    assert metric(text, "nv_cache_num_misses_per_model", labels) == 1
    assert metric(text, "nv_cache_hit_duration_per_model", labels) >= 0
    assert metric(text, "nv_cache_miss_duration_per_model", labels) >= 0
    assert metric(text, "nv_inference_request_success", labels) == 3
    assert metric(text, "nv_inference_count", labels) == 1  # cached requests are not inferences
    assert metric(text, "nv_inference_exec_count", labels) == 1
    assert 'nv_cache_num_hits_per_model{model="uncached"' not in text  # only models that use the cache
    assert metric(text, "nv_cache_num_lookups") == 3 and metric(text, "nv_cache_num_hits") == 2
    assert metric(text, "nv_cache_num_misses") == 1


def test_a_server_without_a_cache_says_so_and_runs_uncached(cache_repo, make_server):
    server = make_server(cache_repo)
    assert "model 'mlp' version 1: its config enables response_cache, but the server has no response cache " \
           "(start it with --cache-size-mb N)" in server.log()
    client = tc.InferenceServerClient(server.url)
    x = np.ones((1, 16), np.float32)
    for _ in range(2):
        client.infer("mlp", [infer_input("input", x, "FP32")])
    assert cache_stats(client, "mlp") == (0, 0, 2, 2)
    assert "nv_cache" not in metrics(server)


def test_a_negative_cache_size_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "icow", "serve", "--cache-size-mb", "-1", "--model-repository",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--cache-size-mb" in done.stderr


def test_a_hit_writes_into_the_clients_shared_memory(cache_repo, make_server):
    """An answer kept from a request over the wire is written into a region for the next one
    (and the other way): the cache keeps outputs, not a response's bytes."""
    server = make_server(cache_repo, "--cache-size-mb", "4", "--allow-client-shm")
    client = tc.InferenceServerClient(server.url)
    x = np.arange(4, dtype=np.float32)
    assert client.infer("scale", [infer_input("x", x, "FP32")], model_version="2").as_numpy("y")[0] == 0
    handle = shm.create_shared_memory_region("out", f"/icow-cache-{secrets.token_hex(4)}", 16)
    try:
        client.register_system_shared_memory("out", handle._shm_key, 16)
        output = tc.InferRequestedOutput("y")
        output.set_shared_memory("out", 16)
        result = client.infer("scale", [infer_input("x", x, "FP32")], outputs=[output], model_version="2")
        assert list(result.get_output("y").shape) == [4]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [4]), 3 * x)
        assert cache_stats(client, "scale", "2")[:2] == (1, 1)
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(handle)
