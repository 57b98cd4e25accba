"""Routing kept in the repository (routing.json): written by a change, followed by every
replica on the same folder (poll mode: at its next poll; explicit mode: on its next
load), started with by a replica that comes later; two writers never both win.

In-process Repository objects play the replicas where only the repository's logic is
under test; real servers where the protocol, the poller and the CLI are."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

import icow
import make_models
from helpers import wait_for
from icow.repository.repository import Repository
from icow.repository.routing_store import ROUTING_FILE

X = np.ones(4, np.float32)  # version k answers k * x
CONFIG = '''version_policy: { all {} }
parameters { key: "version_labels" value { string_value: "stable=1" } }
parameters { key: "traffic_split" value { string_value: "stable=100" } }
'''


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for version in (1, 2, 3):
        make_models.write(make_models.scale(float(version)), root, "m", version)
    (root / "m" / "config.pbtxt").write_text(CONFIG)
    return root


def replica(root: Path, **kwargs) -> Repository:
    repository = Repository(root, **kwargs)
    repository.load("m")
    return repository


def stored(root: Path) -> dict:
    return json.loads((root / "m" / ROUTING_FILE).read_text())


def test_a_change_is_written_and_followed(repo):
    one, two = replica(repo), replica(repo)
    assert not (repo / "m" / ROUTING_FILE).exists()  # nothing changed yet: config.pbtxt is the routing
    changed = one.set_routing("m", labels={"canary": 2}, split=[("stable", 90), ("canary", 10)])
    assert changed.routing.generation == 2 and not changed.in_memory
    assert stored(repo) == {"generation": 2, "labels": {"canary": 2, "stable": 1},
                            "split": [["stable", 90], ["canary", 10]],
                            "config": {"labels": {"stable": 1}, "split": [["stable", 100]]}}
    assert two.get_loaded("m").routing.generation == 1  # it has not looked yet
    assert two.follow_routing("m") and two.get_loaded("m").routing == changed.routing
    assert not two.follow_routing("m")  # nothing new
    later = replica(repo)  # a replica that starts later starts with it
    assert later.get_loaded("m").routing == changed.routing


def test_a_stale_writer_is_refused_and_no_update_is_lost(repo):
    one, two = replica(repo), replica(repo)
    one.set_routing("m", labels={"canary": 2}, expected_generation=1)
    with pytest.raises(icow.InferenceServerError) as stale:  # two still shows generation 1, the repository 2
        two.set_routing("m", split=[("3", 1)], expected_generation=1)
    assert stale.value.code == grpc.StatusCode.ABORTED and "it is at 2" in stale.value.message
    assert stored(repo)["generation"] == 2
    # Without a generation, a change applies over what the repository holds: one's label stays.
    both = two.set_routing("m", labels={"previous": 1})
    assert both.routing.generation == 3 and both.routing.labels == {"stable": 1, "canary": 2, "previous": 1}


def test_concurrent_writers_one_wins(repo):
    replicas = [replica(repo) for _ in range(4)]
    start = threading.Barrier(len(replicas))
    outcomes: dict[int, str] = {}

    def change(i: int) -> None:
        start.wait()
        try:
            replicas[i].set_routing("m", split=[(str(i % 3 + 1), 1), ("stable", i + 1)], expected_generation=1)
            outcomes[i] = "OK"
        except icow.InferenceServerError as e:
            outcomes[i] = e.code.name

    threads = [threading.Thread(target=change, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (winner,) = [i for i, o in outcomes.items() if o == "OK"]
    assert sorted(outcomes.values()) == ["ABORTED"] * (len(replicas) - 1) + ["OK"], outcomes
    assert stored(repo)["split"] == [[str(winner % 3 + 1), 1], ["stable", winner + 1]]


def test_config_routing_changed_later_wins_everywhere(repo):
    one, two = replica(repo), replica(repo)
    one.set_routing("m", split=[("2", 1)])
    two.follow_routing("m")
    (repo / "m" / "config.pbtxt").write_text(CONFIG.replace("stable=1\"", "stable=3\""))
    for each in (one, two):
        each.load("m")
    for each in (one, two, replica(repo)):  # reloaded, or new: the same routing, the same generation
        routing = each.get_loaded("m").routing
        assert (dict(routing.labels), routing.split, routing.generation) == ({"stable": 3}, (("stable", 100),), 3)


def test_routing_in_memory_writes_nothing(repo):
    solo = replica(repo, routing_in_memory=True)
    changed = solo.set_routing("m", split=[("2", 1)])
    assert changed.routing.generation == 2 and "--routing-in-memory" in changed.in_memory
    assert not (repo / "m" / ROUTING_FILE).exists()


def test_a_broken_routing_file_leaves_the_routing_in_force(repo):
    one = replica(repo)
    one.set_routing("m", split=[("2", 1)])
    (repo / "m" / ROUTING_FILE).write_text("{not json")
    assert not one.follow_routing("m") and one.get_loaded("m").routing.generation == 2
    one.load("m")  # a reload with a broken file: what was loaded serves on, saying why
    assert one.get_loaded("m").routing.generation == 2
    assert "not a routing file icow wrote" in one.get_loaded("m").versions[1].reason
    with pytest.raises(icow.InferenceServerError) as refused:
        one.set_routing("m", split=[("3", 1)])
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION


def icow_models(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icow", "models", *args], capture_output=True, text=True,
                          timeout=60)


def answered(client: icow.Client) -> str:
    result = client.infer_result("m", {"x": X})
    assert float(result.outputs["y"][0]) == float(result.model_version)
    return result.model_version


def test_replicas_follow_a_change_made_on_one(repo, make_server):
    """Poll mode follows at its next poll, explicit mode on its next load; a server started later
    starts with the change."""
    polled = [make_server(repo, "--no-metrics", "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
              for _ in range(2)]
    explicit = make_server(repo, "--no-metrics", "--model-control-mode", "explicit", "--load-model", "m")
    split = icow_models("split", "m", "3=1", "--url", polled[0].url)
    assert split.returncode == 0 and "m: split 3=1 (generation 2)" in split.stdout, split.stderr
    assert "memory" not in split.stdout
    for server in polled:
        with icow.Client(server.url) as client:
            wait_for(f"{server.url} follows the split", lambda: client.routing("m").generation == 2)
            assert answered(client) == "3" and client.routing("m").kept_in == "repository"
    with icow.Client(explicit.url) as client:
        assert client.routing("m").generation == 1 and answered(client) == "1"  # until it loads again
        client.load("m")
        assert client.routing("m").generation == 2 and answered(client) == "3"
    late = make_server(repo, "--no-metrics")
    with icow.Client(late.url) as client:
        assert client.routing("m").generation == 2 and answered(client) == "3"
