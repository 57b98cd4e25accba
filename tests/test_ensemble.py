"""Ensembles (Triton's ``platform: "ensemble"``): a graph of steps served as one model,
on both data planes, over gRPC and HTTP (binary and JSON); its checks at load, its
statistics, its batching with direct requests, deadlines, a failing step, and a
composing model unloaded and loaded again."""

from __future__ import annotations

import shutil
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th

import make_models
from helpers import expect_error, wait_for
from icow.repository.repository import Repository

Tensor = tuple[str, str, list[int]]  # name, config data type, dims
Step = tuple[str, int, dict[str, str], dict[str, str]]  # model, version, input_map, output_map
ROW = [4]


def ensemble_config(steps: list[Step], inputs: list[Tensor], outputs: list[Tensor], max_batch_size: int = 8,
                    extra: str = "") -> str:
    """config.pbtxt of an ensemble, as a Triton user writes it."""
    def tensors(kind: str, items: list[Tensor]) -> str:
        return "\n".join(f'{kind} {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in items)

    def maps(kind: str, mapping: dict[str, str]) -> str:
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in mapping.items())

    text = ",\n".join(f'{{ model_name: "{m}" model_version: {v} {maps("input_map", i)} {maps("output_map", o)} }}'
                      for m, v, i, o in steps)
    return (f'platform: "ensemble"\nmax_batch_size: {max_batch_size}\n{tensors("input", inputs)}\n'
            f'{tensors("output", outputs)}\n{extra}ensemble_scheduling {{ step [\n{text}\n] }}\n')


def write_ensemble(repo: Path, name: str, config: str) -> None:
    """An ensemble's folder: its config and an empty version folder (Triton requires one)."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)


FP32_IN, FP32_OUT = ("IN", "TYPE_FP32", ROW), ("OUT", "TYPE_FP32", ROW)
CHAIN = [("double", -1, {"x": "IN"}, {"y": "D1"}), ("inc", -1, {"x": "D1"}, {"y": "I"}),
         ("double", 1, {"x": "I"}, {"y": "OUT"})]
DIAMOND = [("double", -1, {"x": "IN"}, {"y": "DOUBLED"}), ("inc", -1, {"x": "IN"}, {"y": "I"}),
           ("add", -1, {"a": "DOUBLED", "b": "I"}, {"sum": "OUT"})]
BATCHING = 'dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 60000000 }\n'


def build_repository(repo: Path) -> Path:
    make_models.write(make_models.elementwise("Mul", 2.0), repo, "double")
    make_models.write(make_models.elementwise("Add", 1.0), repo, "inc")
    make_models.write(make_models.add(), repo, "add")
    make_models.write(make_models.regroup(), repo, "regroup")
    # a batching step: a batch runs once it has two rows (the delay ends no test)
    make_models.write(make_models.elementwise("Mul", 2.0), repo, "paired")
    (repo / "paired" / "config.pbtxt").write_text(f"max_batch_size: 8\n{BATCHING}")
    make_models.write(make_models.elementwise("Add", 1.0), repo, "after")
    write_ensemble(repo, "chain", ensemble_config(CHAIN, [FP32_IN], [FP32_OUT]))
    write_ensemble(repo, "diamond", ensemble_config(DIAMOND, [FP32_IN], [FP32_OUT, ("DOUBLED", "TYPE_FP32", ROW)]))
    write_ensemble(repo, "failing", ensemble_config(
        [("double", -1, {"x": "IN"}, {"y": "D"}), ("regroup", -1, {"x": "D"}, {"y": "OUT"})],
        [FP32_IN], [("OUT", "TYPE_FP32", [3])]))
    write_ensemble(repo, "waiting", ensemble_config(
        [("paired", -1, {"x": "IN"}, {"y": "P"}), ("after", -1, {"x": "P"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT]))
    write_ensemble(repo, "nested", ensemble_config(  # an ensemble as a step
        [("chain", -1, {"IN": "IN"}, {"OUT": "C"}), ("inc", -1, {"x": "C"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT]))
    for version, factor in ((1, 2.0), (2, 3.0)):
        make_models.write(make_models.elementwise("Mul", factor), repo, "scaled", version)
    (repo / "scaled" / "config.pbtxt").write_text(
        'version_policy: { all: {} }\nparameters { key: "version_labels" value { string_value: "stable=1" } }\n')
    scaled = [("scaled", -1, {"x": "IN"}, {"y": "OUT"})]
    write_ensemble(repo, "latest", ensemble_config(scaled, [FP32_IN], [FP32_OUT]))
    write_ensemble(repo, "labelled", ensemble_config(
        scaled, [FP32_IN], [FP32_OUT],
        extra='parameters { key: "step_version_labels" value { string_value: "scaled=stable" } }\n'))
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("ensembles") / "models")


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request, repo: Path, tmp_path_factory: pytest.TempPathFactory):
    from conftest import start_server

    srv = start_server(repo, "--data-plane", request.param, "--no-metrics", log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


def grpc_input(array: np.ndarray, name: str = "IN") -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def http_input(array: np.ndarray, binary: bool, name: str = "IN") -> th.InferInput:
    tensor = th.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


X = np.arange(12, dtype=np.float32).reshape(3, 4) - 5


# -- serving ---------------------------------------------------------------------

def test_a_chain_answers_as_its_steps_computed_in_numpy(server):
    client = tc.InferenceServerClient(server.url)
    assert client.is_model_ready("chain")
    out = client.infer("chain", [grpc_input(X)]).as_numpy("OUT")
    np.testing.assert_allclose(out, (2 * X + 1) * 2)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_answers_as_grpc(server, binary):
    client = th.InferenceServerClient(server.http_url)
    outputs = [th.InferRequestedOutput("OUT", binary_data=binary)]
    result = client.infer("diamond", [http_input(X, binary)], outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("OUT"), 3 * X + 1)
    assert result.as_numpy("DOUBLED") is None  # only what was asked for comes back


def check_diamond(client: tc.InferenceServerClient, x: np.ndarray = X) -> None:
    """``diamond``'s two outputs, then only the one asked for."""
    both = client.infer("diamond", [grpc_input(x)])
    np.testing.assert_allclose(both.as_numpy("OUT"), 3 * x + 1)
    np.testing.assert_allclose(both.as_numpy("DOUBLED"), 2 * x)
    one = client.infer("diamond", [grpc_input(x)], outputs=[tc.InferRequestedOutput("DOUBLED")])
    assert [o.name for o in one.get_response().outputs] == ["DOUBLED"]
    np.testing.assert_allclose(one.as_numpy("DOUBLED"), 2 * x)


def test_independent_steps_feed_a_third_and_only_requested_outputs_return(server):
    check_diamond(tc.InferenceServerClient(server.url))


def test_metadata_and_config_are_the_ensembles(server):
    client = tc.InferenceServerClient(server.url)
    meta = client.get_model_metadata("diamond", as_json=True)
    assert meta["platform"] == "ensemble" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("IN", "FP32", ["-1", "4"])]
    assert {t["name"] for t in meta["outputs"]} == {"OUT", "DOUBLED"}
    config = client.get_model_config("diamond", as_json=True)["config"]
    assert config["platform"] == "ensemble" and config["max_batch_size"] == 8
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["double", "inc", "add"]
    http = th.InferenceServerClient(server.http_url)
    assert http.get_model_metadata("diamond")["platform"] == "ensemble"


def test_a_bad_request_is_refused_by_the_ensembles_config(server):
    client = tc.InferenceServerClient(server.url)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'IN'", "expected shape [-1, 4]"):
        client.infer("chain", [grpc_input(np.zeros((2, 5), np.float32))])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "no output 'D1'"):
        client.infer("chain", [grpc_input(X)], outputs=[tc.InferRequestedOutput("D1")])
    http = th.InferenceServerClient(server.http_url)
    with expect_error(400, "input 'IN'", "expected shape [-1, 4]"):
        http.infer("chain", [http_input(np.zeros((2, 5), np.float32), False)])


def test_a_failing_step_fails_the_request_naming_it(server):
    client = tc.InferenceServerClient(server.url)
    with expect_error(grpc.StatusCode.INTERNAL, "ensemble 'failing' step 1 (model 'regroup') version 1 failed"):
        client.infer("failing", [grpc_input(X[:1])])  # 4 values do not make rows of 3
    http = th.InferenceServerClient(server.http_url)
    with expect_error(500, "step 1 (model 'regroup')"):
        http.infer("failing", [http_input(X[:1], True)])


# -- statistics and batching -------------------------------------------------------

def stats(client: tc.InferenceServerClient, name: str) -> dict:
    return client.get_inference_statistics(name, as_json=True)["model_stats"][0]


def count(entry: dict, *path: str) -> int:
    for key in path:
        entry = entry.get(key, {})
    return int(entry or 0)


def test_statistics_count_the_ensemble_and_each_step(server):
    client = tc.InferenceServerClient(server.url)
    before = {n: stats(client, n) for n in ("chain", "double", "inc")}
    for _ in range(3):
        client.infer("chain", [grpc_input(X)])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'IN'"):
        client.infer("chain", [grpc_input(np.zeros((2, 5), np.float32))])
    after = {n: stats(client, n) for n in ("chain", "double", "inc")}

    def delta(name: str, *path: str) -> int:
        return count(after[name], *path) - count(before[name], *path)

    assert delta("chain", "inference_stats", "success", "count") == 3
    assert delta("chain", "inference_stats", "fail", "count") == 1
    assert delta("chain", "inference_count") == 9  # rows
    assert delta("chain", "inference_stats", "compute_infer", "count") == 3
    assert delta("double", "inference_stats", "success", "count") == 6  # two steps run it
    assert delta("inc", "inference_stats", "success", "count") == 3
    assert delta("double", "inference_count") == 18


def test_a_step_batches_with_a_direct_request(server):
    """``paired`` runs a batch once it holds two rows: an ensemble request and a direct
    one answer only together, as one batch of two."""
    client = tc.InferenceServerClient(server.url)
    before = stats(client, "paired")
    one = X[:1]
    with ThreadPoolExecutor(2) as pool:
        piped = pool.submit(client.infer, "waiting", [grpc_input(one)])
        direct = pool.submit(client.infer, "paired", [grpc_input(one, "x")])
        np.testing.assert_allclose(piped.result(timeout=60).as_numpy("OUT"), 2 * one + 1)
        np.testing.assert_allclose(direct.result(timeout=60).as_numpy("y"), 2 * one)
    after = stats(client, "paired")
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after.get("batch_stats", [])}
    old = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in before.get("batch_stats", [])}
    assert batches.get(2, 0) - old.get(2, 0) == 1
    assert count(after, "execution_count") - count(before, "execution_count") == 1


def test_a_passed_deadline_stops_the_later_steps(server):
    """The request waits in ``paired``'s queue for a second row that never comes: its
    deadline ends it there, and ``after`` (the next step) never runs."""
    client = tc.InferenceServerClient(server.url)
    before = {n: stats(client, n) for n in ("waiting", "paired", "after")}
    with expect_error(grpc.StatusCode.DEADLINE_EXCEEDED):
        client.infer("waiting", [grpc_input(X[:1])], client_timeout=1.0)

    def failed(name: str) -> int:
        return count(stats(client, name), "inference_stats", "fail", "count") - \
            count(before[name], "inference_stats", "fail", "count")

    wait_for("the ensemble's failure to be counted", lambda: failed("waiting") == 1)
    assert failed("paired") == 1
    assert count(stats(client, "after"), "inference_stats", "success", "count") == \
        count(before["after"], "inference_stats", "success", "count")


# -- copies ----------------------------------------------------------------------

def test_tensors_pass_between_steps_with_no_copy(repo):
    """In-process, Python's and numpy's allocations of one request counted (tracemalloc):
    a copy of any tensor between steps would take its 4 MiB; ``run`` takes none, and
    ``run_into`` one: the response."""
    repository = Repository(repo, default_max_batch_size=1 << 20)
    repository.load_all(["double", "inc"])
    config = ensemble_config(CHAIN, [FP32_IN], [FP32_OUT], max_batch_size=0).replace(
        "dims: [4]", "dims: [-1, 4]")
    write_ensemble(repo, "big_chain", config)
    try:
        repository.load("big_chain")
        chain = repository.get("big_chain")
        x = np.ones((1 << 18, 4), np.float32)  # 4 MiB
        np.testing.assert_allclose(chain.run({"IN": x})["OUT"], (2 * x + 1) * 2)
        tracemalloc.start()
        try:
            chain.run({"IN": x})
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            response: dict[str, np.ndarray] = {}
            chain.run_into({"IN": x}, [], lambda specs: _Slots(specs, response))
            _, peak_into = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        np.testing.assert_allclose(response["OUT"].view(np.float32).reshape(x.shape), (2 * x + 1) * 2)
        assert peak < x.nbytes // 100, peak
        assert x.nbytes <= peak_into < 1.1 * x.nbytes, peak_into
    finally:
        shutil.rmtree(repo / "big_chain")


class _Slots:
    """A response of byte arrays, one per output (ResponseSlots): its allocation is the
    one copy's destination."""

    def __init__(self, specs, into: dict) -> None:
        self.buffers = [np.empty(size, np.uint8) for *_, size in specs]
        into.update(zip((s[0] for s in specs), self.buffers))

    def write(self, index: int, data) -> None:
        np.copyto(self.buffers[index], np.frombuffer(memoryview(data).cast("B"), np.uint8))

    def address(self, index: int) -> int:
        raise NotImplementedError

    def mark_written(self, index: int) -> None:
        pass


def test_model_version_minus_one_follows_the_model_and_a_label_names_a_version(server):
    client = tc.InferenceServerClient(server.url)
    np.testing.assert_allclose(client.infer("latest", [grpc_input(X)]).as_numpy("OUT"), 3 * X)  # version 2
    np.testing.assert_allclose(client.infer("labelled", [grpc_input(X)]).as_numpy("OUT"), 2 * X)  # stable=1


def test_an_ensemble_runs_as_a_step_of_another(server):
    client = tc.InferenceServerClient(server.url)
    np.testing.assert_allclose(client.infer("nested", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2 + 1)


# -- what loading refuses ------------------------------------------------------------

D = {"y": "D"}
BAD = {  # name: (steps, inputs, outputs, extra config, what the refusal says)
    "unknown": ([("nope", -1, {"x": "IN"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT], "",
                ["step 0 (model 'nope')", "no model 'nope'"]),
    "cycle": ([("double", -1, {"x": "T1"}, {"y": "T2"}), ("inc", -1, {"x": "T2"}, {"y": "T1"}),
               ("add", -1, {"a": "IN", "b": "T2"}, {"sum": "OUT"})], [FP32_IN], [FP32_OUT], "",
              ["the steps form a cycle: step 0 (model 'double'), step 1 (model 'inc')"]),
    "twice": ([("double", -1, {"x": "IN"}, {"y": "OUT"}), ("inc", -1, {"x": "IN"}, {"y": "OUT"})],
              [FP32_IN], [FP32_OUT], "", ["step 1 (model 'inc'): tensor 'OUT' is produced twice"]),
    "unproduced": ([("add", -1, {"a": "IN", "b": "GHOST"}, {"sum": "OUT"})], [FP32_IN], [FP32_OUT], "",
                   ["step 0 (model 'add'): its input 'b' is fed tensor 'GHOST'", "produces"]),
    "unused": ([("double", -1, {"x": "IN"}, D), ("inc", -1, {"x": "IN"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT],
               "", ["tensor 'D' (output of step 0 (model 'double')) is never used"]),
    "no_output": ([("double", -1, {"x": "IN"}, D)], [FP32_IN], [("D", "TYPE_FP32", ROW), FP32_OUT], "",
                  ["ensemble output 'OUT' is produced by no step"]),
    "datatype": ([("double", -1, {"x": "IN"}, {"y": "OUT"})], [("IN", "TYPE_INT32", ROW)], [FP32_OUT], "",
                 ["step 0 (model 'double'): input 'x' is FP32 but tensor 'IN' (ensemble input) is INT32"]),
    "shape": ([("double", -1, {"x": "IN"}, {"y": "OUT"})], [("IN", "TYPE_FP32", [5])], [FP32_OUT], "",
              ["step 0 (model 'double'): input 'x' has shape [-1, 4] but tensor 'IN' (ensemble input) has "
               "shape [-1, 5]"]),
    "output_type": ([("double", -1, {"x": "IN"}, {"y": "OUT"})], [FP32_IN], [("OUT", "TYPE_FP16", ROW)], "",
                    ["ensemble output 'OUT' is FP16 but output 'y' of step 0 (model 'double') is FP32"]),
    "wrong_input": ([("double", -1, {"z": "IN"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT], "",
                    ["step 0 (model 'double'): input_map names input 'z', which model 'double' does not have"]),
    "wrong_output": ([("double", -1, {"x": "IN"}, {"w": "OUT"})], [FP32_IN], [FP32_OUT], "",
                     ["step 0 (model 'double'): output_map names output 'w'"]),
    "instances": ([("double", -1, {"x": "IN"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT], "instance_group { count: 2 }\n",
                  ["config field 'instance_group' does not apply to an ensemble"]),
    "label": ([("double", -1, {"x": "IN"}, {"y": "OUT"})], [FP32_IN], [FP32_OUT],
              'parameters { key: "step_version_labels" value { string_value: "double=gold" } }\n',
              ["step 0 (model 'double')", "label 'gold'"]),
}


@pytest.fixture(scope="module")
def explicit(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server of the repository and the bad ensembles, loading on request."""
    from conftest import start_server

    bad = tmp_path_factory.mktemp("bad") / "models"
    shutil.copytree(repo, bad)
    for name, (steps, inputs, outputs, extra, _) in BAD.items():
        write_ensemble(bad, f"bad_{name}", ensemble_config(steps, inputs, outputs, extra=extra))
    for name, other in (("loop_a", "loop_b"), ("loop_b", "loop_a")):  # each runs the other
        write_ensemble(bad, name, ensemble_config([(other, -1, {"IN": "IN"}, {"OUT": "OUT"})], [FP32_IN], [FP32_OUT]))
    srv = start_server(bad, "--model-control-mode", "explicit", "--no-metrics", log_dir=tmp_path_factory.mktemp("l"))
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", list(BAD))
def test_loading_refuses_a_bad_graph_naming_the_step(explicit, name):
    client = tc.InferenceServerClient(explicit.url)
    with expect_error(grpc.StatusCode.INTERNAL, f"failed to load model 'bad_{name}'", *BAD[name][-1]):
        client.load_model(f"bad_{name}")
    assert not client.is_model_ready(f"bad_{name}")


def test_ensembles_that_run_each_other_are_refused(explicit):
    client = tc.InferenceServerClient(explicit.url)
    with expect_error(grpc.StatusCode.INTERNAL, "failed to load model 'loop_a'", "a cycle of ensembles"):
        client.load_model("loop_a")


def test_unloading_a_composing_model_makes_the_ensemble_unready_and_loading_it_restores_it(explicit):
    client = tc.InferenceServerClient(explicit.url)
    http = th.InferenceServerClient(explicit.http_url)
    client.load_model("chain")  # its composing models load with it, as in Triton
    assert client.is_model_ready("inc") and client.is_model_ready("chain")
    np.testing.assert_allclose(client.infer("chain", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2)
    client.unload_model("inc")
    assert not client.is_model_ready("chain") and not http.is_model_ready("chain")
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    assert index[("chain", "1")].state == "UNAVAILABLE" and "step 1 (model 'inc')" in index[("chain", "1")].reason
    with expect_error(grpc.StatusCode.UNAVAILABLE, "ensemble 'chain' is not ready: step 1 (model 'inc')"):
        client.infer("chain", [grpc_input(X)])
    with expect_error(grpc.StatusCode.UNAVAILABLE, "step 1 (model 'inc')"):
        http.infer("chain", [http_input(X, True)])
    client.load_model("inc")
    assert client.is_model_ready("chain") and http.is_model_ready("chain")
    np.testing.assert_allclose(client.infer("chain", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2)


def test_poll_mode_reloads_an_ensemble_whose_config_changed(repo, make_server, tmp_path):
    polled = tmp_path / "models"
    shutil.copytree(repo, polled)
    srv = make_server(polled, "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    client = tc.InferenceServerClient(srv.url)
    np.testing.assert_allclose(client.infer("chain", [grpc_input(X)]).as_numpy("OUT"), (2 * X + 1) * 2)
    thrice = [("double", -1, {"x": "IN"}, {"y": "A"}), ("double", -1, {"x": "A"}, {"y": "B"}),
              ("double", -1, {"x": "B"}, {"y": "OUT"})]
    (polled / "chain" / "config.pbtxt").write_text(ensemble_config(thrice, [FP32_IN], [FP32_OUT]))
    wait_for("the changed ensemble to serve",
             lambda: np.allclose(client.infer("chain", [grpc_input(X)]).as_numpy("OUT"), 8 * X))
    steps = client.get_model_config("chain", as_json=True)["config"]["ensemble_scheduling"]["step"]
    assert [s["output_map"] for s in steps] == [{"y": "A"}, {"y": "B"}, {"y": "OUT"}]


def test_steps_without_the_ensemble_platform_are_refused():
    from icow._proto import model_config_pb2 as mc
    from icow.runtime import config_fields
    from icow.runtime.config import ConfigError

    config = mc.ModelConfig()
    config.ensemble_scheduling.step.add(model_name="double")
    with pytest.raises(ConfigError, match="'ensemble_scheduling' needs platform"):
        config_fields.check(config, "m")
