"""``--model-control-mode poll``: hot reload under load, with no failed request and no
leaked session, and what the poller does with models that come, change and go."""

from __future__ import annotations

import gc
import shutil
import threading
import weakref
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from onnx import TensorProto, helper, numpy_helper

import icow
import make_models
from helpers import expect_error, infer_input, wait_for
from icow.runtime.model import Model
from icow.server import InferenceServer, ServerOptions

N = 2048  # a 16 MiB weight per version: a leaked session shows in the memory
X = np.ones((1, N), np.float32)


def weighty(factor: float, note: str = "") -> onnx.ModelProto:
    """y = x @ (factor * I): answers factor * x, from a weight big enough to see."""
    w = numpy_helper.from_array(np.eye(N, dtype=np.float32) * factor, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "weighty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=note)
    model.ir_version = 8
    return model


def publish(repo: Path, version: int, model: onnx.ModelProto | bytes) -> None:
    """Put a version in place by a rename, as an operator should: never half a file."""
    staging = repo.parent / f"staging-{version}"
    staging.mkdir(exist_ok=True)
    (staging / "model.onnx").write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    target = repo / "hot" / str(version)
    if target.exists():
        (staging / "model.onnx").replace(target / "model.onnx")
        staging.rmdir()
    else:
        staging.rename(target)


def live(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Load:
    """Client threads calling the model (no version named) until stopped."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.failures: list[Exception] = []
        self.last: dict[int, str] = {}
        self.count = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(url, i)) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _call(self, url: str, i: int) -> None:
        with icow.Client(url, retries=0) as client:
            while not self._stop.is_set():
                try:
                    result = client.infer_result("hot", {"x": X})
                    assert float(result.outputs["y"][0, 0]) == float(result.model_version)
                    self.last[i] = result.model_version
                    self.count += 1
                except Exception as e:  # counted, never raised in the thread
                    self.failures.append(e)

    def serving(self, version: str) -> bool:
        """Every thread's latest answer came from ``version``."""
        return len(self.last) == len(self._threads) and set(self.last.values()) == {version}

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_hot_reload_under_load(tmp_path):
    repo = tmp_path / "models"
    (repo / "hot").mkdir(parents=True)
    publish(repo, 1, weighty(1))
    server = InferenceServer(ServerOptions(repo, port=0, metrics_port=None, model_control_mode="poll",
                                           repository_poll_secs=0.1))
    server.start()
    repository = server.repository
    load = Load(server.address)
    try:
        wait_for("the first answers", lambda: load.serving("1"))
        baseline_rss, baseline_models, baseline_sessions = rss_mib(), live(Model), live(ort.InferenceSession)

        def settled(version: str) -> None:
            wait_for(f"version {version} serving everyone", lambda: load.serving(version))
            assert repository.drainer.wait(60), "a retired version did not drain"
            assert live(Model) == baseline_models and live(ort.InferenceSession) == baseline_sessions

        publish(repo, 2, weighty(2))  # reload 1: a new version
        settled("2")
        before = weakref.ref(repository.get("hot", "2"))
        publish(repo, 2, weighty(2, note="retrained"))  # reload 2: a changed file
        wait_for("version 2 reloaded", lambda: repository.get("hot", "2") is not before())
        settled("2")
        publish(repo, 3, weighty(3))  # reload 3
        settled("3")
        publish(repo, 4, b"not an onnx model")  # a failed load: version 3 serves on, the index says why
        wait_for("version 4 failed", lambda: any(e.version == "4" for e in repository.index()))
        entries = {e.version: e for e in repository.index()}
        assert entries["4"].state == "UNAVAILABLE" and "failed to load" in entries["4"].reason
        assert entries["3"].state == "READY" and "until version 4 loads" in entries["3"].reason
        shutil.rmtree(repo / "hot" / "4")
        wait_for("version 4 gone", lambda: "4" not in {e.version for e in repository.index()})
        publish(repo, 5, weighty(5))  # reload 4
        settled("5")
        shutil.rmtree(repo / "hot" / "5")  # reload 5: a removed version drains; 3 is the latest again
        settled("3")
        wait_for("100 answers in all", lambda: load.count > 100)  # a load, however slow the machine
    finally:
        load.stop()
        server.stop(0)
    assert not load.failures, load.failures[:3]
    growth = rss_mib() - baseline_rss
    print(f"RSS growth over 5 reloads: {growth:.1f} MiB; {load.count} requests")
    assert growth < 48, f"RSS grew {growth:.0f} MiB over 5 reloads of a 16 MiB model"


@pytest.fixture
def poll_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    make_models.write(make_models.scale(2.0), repo, "scale", 1)
    return repo


def test_poll_mode_follows_the_folder(poll_repo, make_server):
    server = make_server(poll_repo, "--no-metrics", "--model-control-mode", "poll", "--repository-poll-secs", "0.1")
    client = tc.InferenceServerClient(server.url)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--model-control-mode poll"):
        client.load_model("scale")  # as in Triton: poll mode follows the folder, not load requests
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--model-control-mode poll"):
        client.unload_model("scale")

    make_models.write(make_models.scale(5.0), poll_repo, "fresh", 1)  # a new model
    wait_for("the new model", lambda: client.is_model_ready("fresh"))
    (poll_repo / "scale" / "config.pbtxt").write_text(  # a config change: labels, nothing to reload
        'parameters { key: "version_labels" value { string_value: "stable=1" } }\n')
    wait_for("the label", lambda: client.is_model_ready("scale", "stable"))
    x = np.ones(4, np.float32)
    assert client.infer("scale", [infer_input("x", x, "FP32")], model_version="stable").as_numpy("y")[0] == 2
    (poll_repo / "scale" / "config.pbtxt").write_text("max_batch_size: [broken\n")  # a bad edit
    wait_for("the failed reload", lambda: "reload failed" in " ".join(
        m.reason for m in client.get_model_repository_index().models if m.name == "scale"))
    assert client.infer("scale", [infer_input("x", x, "FP32")]).as_numpy("y")[0] == 2  # still serving

    shutil.rmtree(poll_repo / "fresh")  # a model that goes
    wait_for("the model unloaded", lambda: not client.is_model_ready("fresh"))
    assert "fresh" not in {m.name for m in client.get_model_repository_index().models}
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model 'fresh'"):
        client.infer("fresh", [infer_input("x", x, "FP32")])
    log = server.log()
    assert "polling" in log and "model 'fresh' left the repository" in log and "unloaded" in log
