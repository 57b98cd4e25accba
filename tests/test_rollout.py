"""Version labels, traffic split, promotion and draining unloads, against the real
server with real clients (tritonclient, icow.Client, the ``icow models`` CLI)."""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

import icow
import make_models
from helpers import expect_error, infer_input
from icow._proto import litecow_pb2 as lc
from icow.repository.repository import Repository
from icow.repository.routing import Routing, SplitTable
from icow.services import plane as native_plane

X = np.ones(4, np.float32)  # version k answers y = k * x: the output says which version ran
ROUTING = '''version_policy: { all {} }
parameters { key: "version_labels" value { string_value: "stable=1, canary=2" } }
parameters { key: "traffic_split" value { string_value: "stable=90, canary=10" } }
'''


def build_rollout_repository(repo: Path, versions=(1, 2, 3), config: str = ROUTING) -> Path:
    for version in versions:
        make_models.write(make_models.scale(float(version)), repo, "m", version)
    (repo / "m" / "config.pbtxt").write_text(config)
    return repo


@pytest.fixture(scope="module")
def rollout_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rollout_repository(tmp_path_factory.mktemp("rollout") / "models")


@pytest.fixture
def server(rollout_repo, make_server, tmp_path):
    """A server on a copy of its own: routing changes are written into the repository (routing.json)."""
    return make_server(shutil.copytree(rollout_repo, tmp_path / "models"), "--no-metrics")


def icow_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icow", "models", *args], capture_output=True, text=True,
                          timeout=60)


def answered(result: icow.client.InferResult) -> str:
    """The version that answered, checked against what its output says."""
    assert float(result.outputs["y"][0]) == float(result.model_version)
    return result.model_version


def test_labels_wherever_a_version_goes(server):
    triton = tc.InferenceServerClient(server.url)
    result = triton.infer("m", [infer_input("x", X, "FP32")], model_version="canary")
    assert result.get_response().model_version == "2" and result.as_numpy("y")[0] == 2
    assert triton.is_model_ready("m", "stable") and not triton.is_model_ready("m", "nope")
    metadata = triton.get_model_metadata("m", "canary")
    assert [int(v) for v in metadata.versions] == [1, 2, 3]  # numbers only: Triton's clients parse them
    assert triton.get_model_config("m", "stable").config.parameters["version_labels"].string_value \
        == "canary=2, stable=1"
    assert triton.get_inference_statistics("m", "canary").model_stats[0].version == "2"
    with expect_error(grpc.StatusCode.NOT_FOUND, "no version or label 'nope'", "labels: canary=2, stable=1"):
        triton.infer("m", [infer_input("x", X, "FP32")], model_version="nope")

    with icow.Client(server.url) as client:
        assert dict(client.metadata("m").version_labels) == {"stable": "1", "canary": "2"}
        assert answered(client.infer_result("m", {"x": X}, version="stable")) == "1"

    with grpc.insecure_channel(server.url) as channel:  # lIteCOW's model_version takes labels too
        get = channel.unary_unary("/ICOW/get_inference", request_serializer=lc.InferenceRequest.SerializeToString,
                                  response_deserializer=lc.NamedArrays.FromString)
        request = lc.InferenceRequest(model_key="s3://models/m", model_version="canary")
        request.unnamed_inputs.arrays.add(shape=[4]).float_array.values.extend(X.tolist())
        assert get(request).name_to_array["y"].float_array.values == [2.0] * 4


def test_split_over_10000_requests(server):
    """Random without an id, sticky with one: within 2 % of the weights either way."""
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def send(n: int) -> None:
        with icow.Client(server.url) as client:
            mine = collections.Counter(answered(client.infer_result("m", {"x": X})) for _ in range(n))
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=send, args=(2500,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts.values()) == 10_000
    assert abs(counts["1"] / 10_000 - 0.90) <= 0.02 and abs(counts["2"] / 10_000 - 0.10) <= 0.02, counts

    with icow.Client(server.url) as client:  # the same id, the same version
        for i in range(100):
            first = answered(client.infer_result("m", {"x": X}, request_id=f"user-{i}"))
            assert answered(client.infer_result("m", {"x": X}, request_id=f"user-{i}")) == first


def test_sticky_ids_split_by_the_weights():
    models = {1: "v1", 2: "v2"}
    table = SplitTable(Routing({"stable": 1, "canary": 2}, (("stable", 90), ("canary", 10))), models)
    picks = collections.Counter(table.choose(f"req-{i}") for i in range(10_000))
    assert abs(picks["v2"] / 10_000 - 0.10) <= 0.02, picks
    assert table.choose("req-7") == table.choose("req-7")
    assert SplitTable(Routing({}, (("1", 1), ("9", 1))), models).choose("x") == "v1"  # not ready: left out


NO_SPLIT = ROUTING.replace('parameters { key: "traffic_split" value { string_value: "stable=90, canary=10" } }\n', "")


@pytest.mark.parametrize("config", [ROUTING, NO_SPLIT], ids=["split", "no-split"])
def test_one_rule_names_the_version(tmp_path, config):
    """Repository.get and the native plane's table both read LoadedModel.pick: the
    table holds exactly the version strings whose answer is fixed, each with the
    version that get gives ("" only without a split, where it is the highest)."""
    repository = Repository(build_rollout_repository(tmp_path / "models", config=config))
    picks = repository.load("m").fixed_picks()
    fixed = {"1", "2", "3", "stable", "canary"} | ({""} if config == NO_SPLIT else set())
    assert set(picks) == fixed
    assert {key: repository.get("m", key) for key in fixed} == picks
    assert [picks[k].version for k in ("stable", "canary", "3")] == [1, 2, 3]
    if config == NO_SPLIT:
        assert picks[""].version == 3
    pytest.importorskip("icow._plane", reason="the native table needs icow._plane (libgrpc++-dev at build time)")
    assert set(native_plane.ModelTable(repository).entries()) == {f"m\n{key}" for key in fixed}


def test_promotion_under_load(server):
    """Labels move while four clients call: no call fails, each answer comes from the
    old or the new version, and once a move returns every new call sees it."""
    stop = threading.Event()
    failures: list[Exception] = []
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    answered_calls = threading.Condition()  # notified on every answer: the test waits on counts, not time

    def call(version: str) -> None:
        with icow.Client(server.url, retries=0) as client:
            while not stop.is_set():
                try:
                    got = answered(client.infer_result("m", {"x": X}, version=version))
                except Exception as e:  # counted, never raised in the thread
                    failures.append(e)
                    continue
                with answered_calls:
                    seen[version, got] += 1
                    answered_calls.notify_all()

    threads = [threading.Thread(target=call, args=(v,)) for v in ("stable", "stable", "", "")]
    for t in threads:
        t.start()
    try:
        url = ["--url", server.url]
        for step in (["split", "m", "stable=100"], ["promote", "m", "2"], ["promote", "m", "1"],
                     ["promote", "m", "canary"]):
            result = icow_cli(*step, *url)
            assert result.returncode == 0, result.stderr
            with answered_calls:  # let 60 calls run on this routing before the next move
                target = sum(seen.values()) + 60
                assert answered_calls.wait_for(lambda n=target: sum(seen.values()) >= n or failures, timeout=60)
        with icow.Client(server.url) as client:  # stable is now 2: every new call says so
            assert {answered(client.infer_result("m", {"x": X}, version="stable")) for _ in range(50)} == {"2"}
            assert {answered(client.infer_result("m", {"x": X})) for _ in range(50)} == {"2"}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert {got for _, got in seen} == {"1", "2"} and sum(seen.values()) > 200, seen
    table = icow_cli("list", *url).stdout
    assert table.splitlines()[0].split() == ["MODEL", "VERSION", "STATE", "LABELS", "TRAFFIC", "IN", "FLIGHT",
                                             "REASON"]
    assert "m      2        READY  canary,stable  100%" in table, table
    assert "m: split stable=100 (generation 5)" in table


def test_routing_changes_are_checked(server):
    refused = icow_cli("promote", "m", "7", "--url", server.url)
    assert refused.returncode == 1 and "label 'stable' names version 7, which is not ready" in refused.stderr
    bad = icow_cli("split", "m", "stable=0", "--url", server.url)
    assert bad.returncode == 1 and "add up to 0" in bad.stderr
    with icow.Client(server.url) as client:
        now = client.routing("m").generation
        client.set_routing("m", split={"3": 1}, expected_generation=now)
        with pytest.raises(icow.InferenceServerError) as lost:  # someone else changed it first
            client.set_routing("m", split={"1": 1}, expected_generation=now)
        assert lost.value.code == grpc.StatusCode.ABORTED
        assert answered(client.infer_result("m", {"x": X})) == "3"
        client.set_routing("m", split={})
        assert answered(client.infer_result("m", {"x": X})) == "3"  # no split: the highest version

    async def through_asyncio() -> tuple[int, str]:
        async with icow.AsyncClient(server.url) as aio:
            routing = await aio.set_routing("m", labels={"canary": 3}, remove_labels=["stable"])
            return routing.labels["canary"], answered(await aio.infer_result("m", {"x": X}, version="canary"))

    assert asyncio.run(through_asyncio()) == (3, "3")


def test_unload_drains_in_flight_requests(rollout_repo):
    """A request that resolved a version before the unload finishes on it; new ones are
    refused at once; the version is closed only when nothing runs on it."""
    repository = Repository(rollout_repo)
    repository.load("m")
    model = repository.get("m", "2")
    closed = threading.Event()
    model.close = closed.set
    model.stats.begin()  # a request in flight, as Model.run counts one
    repository.unload("m")
    with pytest.raises(icow.InferenceServerError, match="model 'm' is not loaded"):
        repository.get("m", "2")
    assert not repository.drainer.wait(0.6) and not closed.is_set()
    np.testing.assert_array_equal(model.run({"x": X})["y"], X * 2)  # it still answers
    model.stats.record_failure(0)  # the request in flight ends
    assert repository.drainer.wait(60) and closed.is_set()  # a limit for a hang, not a measure of speed
