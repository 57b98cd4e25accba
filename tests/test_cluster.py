"""Three icow replicas on loopback ports, one SeaweedFS repository (poll mode over S3),
and a client that balances calls over them as a cluster's would: gRPC's round_robin
policy over the three addresses, and a retry policy (inference is idempotent).

What must hold: a split changed on one replica is served by all three; a version
uploaded to the bucket is served by all three; one replica killed (SIGKILL) and one
stopped (SIGTERM) under load fail no call at the client; and the split's ratio holds.

Why the ratio test cannot flake: every call carries a request id, and the split is
sticky on it (a 64-bit BLAKE2b hash of the id modulo the weights' total,
repository/routing.py). So the version that must answer each call is known in
advance, whichever replica takes it: the test checks every answer against it (which
also proves the replicas route alike), and the share of the ids "c0".."c9999" that a
50/50 split sends to version 3 is a fixed number, checked to be within +-2 %
(binomially, +-2 % over 10 000 is four standard deviations, but here it is no draw).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

import icow
import make_models
from helpers import wait_for
from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc as pb_grpc
from icow.repository.object_store import ObjectStore, StoreLocation
from icow.repository.routing import Routing
from icow.repository.routing_store import ROUTING_FILE, Conflict, ObjectRoutingStore, ReadOnly, StoredRouting

CALLS = 10_000
X = np.ones(4, np.float32)  # version k answers k * x
POLL = "0.5"  # seconds between polls of the store
# gRPC's service config: retry a call the replica could not take (UNAVAILABLE: it is gone or
# going; CANCELLED: the server cancelled it while stopping) on another replica.
SERVICE_CONFIG = {"methodConfig": [{
    "name": [{"service": "inference.GRPCInferenceService"}],
    "timeout": "30s",
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
}]}


def upload_version(client, bucket: str, version: int) -> None:
    client.put_object(Bucket=bucket, Key=f"m/{version}/model.onnx",
                      Body=make_models.scale(float(version)).SerializeToString())


def serve(make_server, s3, bucket: str, cache: Path, *args: str, endpoint: str | None = None):
    return make_server(f"s3://{bucket}", "--s3-endpoint", endpoint or s3.endpoint, "--model-cache", str(cache),
                       "--no-metrics", *args, env=s3.env())


def request(request_id: str, version: str = "") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="m", model_version=version, id=request_id, raw_input_contents=[X.tobytes()],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[4])])


def answer(response: pb.ModelInferResponse) -> str:
    """The version that answered, checked against what its output says."""
    y = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert float(y[0]) == float(response.model_version), response
    return response.model_version


def sticky_pick(request_id: str, split: list[tuple[str, int]]) -> str:
    """The target a split sends ``request_id`` to, computed here as the docs define it."""
    total = sum(w for _, w in split)
    point = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little") % total
    for target, weight in split:
        if point < weight:
            return target
        point -= weight
    raise AssertionError("unreachable")


def cluster_channel(servers) -> grpc.Channel:
    target = "ipv4:" + ",".join(s.url for s in servers)
    return grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin"),
                                                  ("grpc.enable_retries", 1),
                                                  ("grpc.service_config", json.dumps(SERVICE_CONFIG))])


def inference_count(server) -> int:
    with grpc.insecure_channel(server.url) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name="m"))
    return sum(s.inference_count for s in stats.model_stats)


def icow_models(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icow", "models", *args], capture_output=True, text=True,
                          timeout=60)


def test_a_cluster_follows_one_repository_and_loses_no_call(s3, make_server, tmp_path):
    bucket = s3.new_bucket()
    store = s3.client()
    for version in (1, 2):
        upload_version(store, bucket, version)
    store.put_object(Bucket=bucket, Key="m/config.pbtxt", Body=b"version_policy: { all {} }\n")
    replicas = [serve(make_server, s3, bucket, tmp_path / f"cache{i}", "--model-control-mode", "poll",
                      "--repository-poll-secs", POLL, "--shutdown-grace-secs", "30") for i in range(3)]
    clients = [icow.Client(r.url) for r in replicas]
    try:
        # A new version uploaded to the bucket: every replica loads and serves it.
        upload_version(store, bucket, 3)
        for replica, client in zip(replicas, clients):
            wait_for("version 3 ready on every replica",
                     lambda c=client: any(v.version == 3 and v.state == "READY" for v in c.routing("m").versions))
            assert answer(_infer(replica, request("v3", "3"))) == "3"
        # A split changed on replica 1 (the CLI), written to the bucket: every replica follows it.
        changed = icow_models("split", "m", "2=1", "3=1", "--url", replicas[0].url)
        assert changed.returncode == 0 and "(generation 2)" in changed.stdout, changed.stderr
        assert store.head_object(Bucket=bucket, Key=f"m/{ROUTING_FILE}")["ContentLength"] > 0
        split = [("2", 1), ("3", 1)]
        for replica, client in zip(replicas, clients):
            wait_for("the split on every replica", lambda c=client: c.routing("m").generation == 2)
            routing = client.routing("m")
            assert [(w.target, w.weight) for w in routing.split] == split and routing.kept_in == "repository"
            assert all(answer(_infer(replica, request(f"p{i}"))) == sticky_pick(f"p{i}", split) for i in range(50))
        # Under load over round_robin: one replica killed, one stopped; every call answered as the split says.
        before = [inference_count(r) for r in replicas]
        with cluster_channel(replicas) as channel:
            answers, failures, taken = _load(pb_grpc.GRPCInferenceServiceStub(channel), replicas)
        assert not failures, failures[:5]
        assert taken[0] > before[1] and taken[1] > before[2], (before, taken)  # round_robin used them all
        assert len(answers) == CALLS
        wrong = [(i, v) for i, v in answers.items() if v != sticky_pick(i, split)]
        assert not wrong, wrong[:5]
        share = Counter(answers.values())["3"] / CALLS
        assert abs(share - 0.5) <= 0.02, share
        assert inference_count(replicas[0]) > before[0]
        assert replicas[1].proc.returncode == -signal.SIGKILL and replicas[2].proc.returncode == 0, \
            replicas[2].log()[-2000:]
    finally:
        for client in clients:
            client.close()


def _infer(replica, message: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """One call to one replica, on a channel of its own."""
    with grpc.insecure_channel(replica.url) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)


def _load(stub, replicas) -> tuple[dict[str, str], list[str], list[int]]:
    """CALLS calls from 8 threads; replica 2 gets SIGKILL once a quarter are answered, replica 3
    SIGTERM at half. The answers by request id, the failures, and the calls replicas 2 and 3 had
    taken just before they went."""
    answers: dict[str, str] = {}
    failures: list[str] = []
    taken: list[int] = []
    lock = threading.Lock()
    quarter, half = threading.Event(), threading.Event()

    def call(i: int) -> None:
        request_id = f"c{i}"
        try:
            version = answer(stub.ModelInfer(request(request_id), timeout=30))
        except grpc.RpcError as e:
            with lock:
                failures.append(f"{request_id}: {e.code().name}: {e.details()}")
            return
        with lock:
            answers[request_id] = version
            if len(answers) >= CALLS // 4:
                quarter.set()
            if len(answers) >= CALLS // 2:
                half.set()

    def stop_two() -> None:
        for replica, answered, how in ((replicas[1], quarter, signal.SIGKILL), (replicas[2], half, signal.SIGTERM)):
            answered.wait(120)
            taken.append(inference_count(replica))
            os.kill(replica.proc.pid, how)

    stopper = threading.Thread(target=stop_two)
    stopper.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(CALLS)))
    stopper.join()
    for replica in replicas[1:]:
        replica.proc.wait(60)
    return answers, failures, taken


@pytest.fixture
def bucket_with_m(s3) -> str:
    bucket = s3.new_bucket()
    for version in (1, 2):
        upload_version(s3.client(), bucket, version)
    return bucket


def test_the_store_refuses_the_second_of_two_writes(s3, bucket_with_m):
    """The compare-and-swap itself: two writers read the same routing.json; the store takes
    the first write and refuses the second (If-Match), as it refuses a second first write
    (If-None-Match)."""
    stores = [ObjectRoutingStore(ObjectStore(StoreLocation(bucket_with_m), client=s3.client())) for _ in range(2)]
    written = StoredRouting(Routing({}, (("1", 1),), 2), Routing())
    for outcome in ("created", "replaced"):
        with stores[0].transaction("m") as (_, first), stores[1].transaction("m") as (_, second):
            first(written)
            with pytest.raises(Conflict):
                second(StoredRouting(Routing({}, (("2", 1),), written.routing.generation), Routing()))
        body = s3.client().get_object(Bucket=bucket_with_m, Key=f"m/{ROUTING_FILE}")["Body"].read()
        assert StoredRouting.from_json(body, outcome) == written, outcome
        written = StoredRouting(Routing({}, (("2", 1),), 3), Routing())


def test_a_model_of_one_object_gets_no_routing_folder(s3, bucket_with_m):
    """lIteCOW's layout (one object per model): a "<name>/routing.json" beside it would make the
    model both an object and a folder, so its routing stays in memory."""
    s3.client().put_object(Bucket=bucket_with_m, Key="plain.onnx", Body=make_models.scale(1.0).SerializeToString())
    routing_store = ObjectRoutingStore(ObjectStore(StoreLocation(bucket_with_m), client=s3.client()))
    with pytest.raises(ReadOnly, match="lIteCOW's layout"), routing_store.transaction("plain"):
        pass


def test_a_read_only_store_keeps_the_routing_in_memory(s3, s3_proxy, bucket_with_m, make_server, tmp_path):
    s3_proxy.read_only = True  # credentials that may read, not write
    server = serve(make_server, s3, bucket_with_m, tmp_path / "cache", endpoint=s3_proxy.endpoint)
    changed = icow_models("split", "m", "2=1", "--url", server.url)
    assert changed.returncode == 0, changed.stderr
    assert "m: routing kept in this replica's memory only" in changed.stdout and "AccessDenied" in changed.stdout
    with icow.Client(server.url) as client:
        routing = client.routing("m")
        assert routing.kept_in == "memory" and routing.generation == 2 and "AccessDenied" in routing.kept_note
        assert client.infer_result("m", {"x": X}).model_version == "2"
    listed = s3.client().list_objects_v2(Bucket=bucket_with_m, Prefix="m/")
    assert ROUTING_FILE not in {o["Key"].rpartition("/")[2] for o in listed["Contents"]}
