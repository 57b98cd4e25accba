"""Soak and faults, bounded, on both data planes.

test_soak_with_faults: client processes at full speed while the test kills
clients mid-call, sends malformed messages, unloads and loads a model and
overfills the concurrency limit. The server must keep serving, answer every
well-formed call correctly or with a clear error, and neither grow without
bound nor leak file descriptors. ICOW_SOAK_SECONDS sets the load's length per
plane (default 30); the RSS curve is printed (pytest -s) and written to
soak.json in the test's tmp_path.

test_memory_comes_back: 50 clients killed mid-upload of 12 MiB requests and
20 000 mutated requests; then the server's RSS returns to within 20 % of where
it was before, and its descriptors and threads to where they were
(icow.services.memory gives back what the faults left)."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from icow._proto import inference_pb2 as pb
from ops_helpers import scale_input

SECONDS = float(os.environ.get("ICOW_SOAK_SECONDS", "30"))
WORKERS = 16
CLIENT = Path(__file__).with_name("soak_client.py")
UPLOADER = Path(__file__).with_name("upload_client.py")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PLANES = pytest.mark.parametrize("data_plane", ["native", "grpcio"])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_names(pid: int) -> dict[str, int]:
    names = collections.Counter()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            names[Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()] += 1
        except OSError:  # ended meanwhile
            pass
    return dict(names)


def malformed_requests() -> list[tuple[str, bytes]]:
    """Bad ModelInfer requests, for models that stay loaded throughout."""
    tensor = pb.ModelInferRequest.InferInputTensor

    def mlp(datatype: str = "FP32", shape=(1, 16), raw: bytes = b"\0" * 64) -> bytes:
        return pb.ModelInferRequest(model_name="mlp", inputs=[tensor(name="input", datatype=datatype, shape=shape)],
                                    raw_input_contents=[raw]).SerializeToString()

    return [
        ("garbage", b"\xff\xfe\xfd\xfc" * 64),
        ("truncated", mlp()[:-3]),
        ("short raw contents", mlp(raw=b"\0" * 63)),
        ("wrong datatype", mlp("FP64", raw=b"\0" * 128)),
        ("wrong shape", mlp(shape=(1, 15), raw=b"\0" * 60)),
        ("unknown datatype", mlp("FP128")),
        ("huge declared shape", pb.ModelInferRequest(
            model_name="big", inputs=[tensor(name="x", datatype="FP32", shape=[1 << 40])],
            raw_input_contents=[b"\0" * 16]).SerializeToString()),
    ]


@PLANES
def test_soak_with_faults(make_server, ops_repo, tmp_path, data_plane):
    srv = make_server(ops_repo, "--model-control-mode", "explicit", "--load-model", "*", "--data-plane", data_plane,
                      "--max-concurrent-requests", "8", "--workers", str(WORKERS))
    pid = srv.proc.pid
    problems: list[str] = []
    stop = threading.Event()
    samples: list[tuple[float, float, int]] = []  # (seconds, RSS MiB, open fds)
    start = time.monotonic()

    def sampler() -> None:
        while not stop.wait(1.0):
            samples.append((round(time.monotonic() - start, 1), rss_mib(pid), fd_count(pid)))

    def kill_clients() -> int:
        killed = 0
        while not stop.is_set() and killed < 1000:
            victim = subprocess.Popen([sys.executable, str(CLIENT), srv.url, "victim"], stdout=subprocess.PIPE)
            assert victim.stdout.readline() == b"sending\n"
            stop.wait(0.3 + 0.1 * (killed % 4))  # at different points of the transfer and the run
            victim.kill()
            victim.wait()
            killed += 1
        return killed

    def malformed() -> None:
        with grpc.insecure_channel(srv.url) as channel:
            infer = channel.unary_unary(MODEL_INFER)
            rounds = 0
            while not stop.wait(0.2) and rounds < 10_000:
                rounds += 1
                for what, data in malformed_requests():
                    try:
                        infer(data, timeout=30)
                        problems.append(f"malformed request ({what}) succeeded")
                    except grpc.RpcError as e:
                        if e.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                            problems.append(f"malformed request ({what}): {e.code()} {e.details()}")

    def reload() -> None:
        client = tc.InferenceServerClient(srv.url)
        rounds = 0
        while not stop.wait(0.5) and rounds < 10_000:
            rounds += 1
            for action in (client.unload_model, client.load_model):
                try:
                    action("scale")
                except Exception as e:  # noqa: BLE001 - a refusal under the concurrency limit is fine
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        problems.append(f"{action.__name__}: {e}")

    steady = [subprocess.Popen([sys.executable, str(CLIENT), srv.url, "steady", str(SECONDS),
                                str(tmp_path / f"steady{i}.json")]) for i in range(3)]
    bursting = subprocess.Popen([sys.executable, str(CLIENT), srv.url, "burst", str(SECONDS),
                                 str(tmp_path / "burst.json")])
    baseline_fds = fd_count(pid)
    killed: list[int] = []
    threads = [threading.Thread(target=sampler), threading.Thread(target=lambda: killed.append(kill_clients())),
               threading.Thread(target=malformed), threading.Thread(target=reload)]
    for t in threads:
        t.start()
    try:
        for p in [*steady, bursting]:
            assert p.wait(timeout=SECONDS + 120) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    results = {p.stem: json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))}
    # the server kept serving: every steady client was answered, correctly
    for name, result in results.items():
        assert result["faults"] == [], (name, result)
        assert result["counts"].get("ok", 0) > 0, (name, result)
    assert results["burst"]["counts"].get("StatusCode.RESOURCE_EXHAUSTED", 0) > 0  # the limit was hit
    assert problems == []
    assert killed and killed[0] >= 3
    client = tc.InferenceServerClient(srv.url)
    client.load_model("scale")  # whatever state the reload loop left
    assert client.infer("scale", scale_input(), model_version="1").as_numpy("y").tolist() == [0, 2, 4, 6]
    assert srv.proc.poll() is None

    # no leaked descriptors once the clients are gone (the kernel closes killed clients' sockets)
    for _ in range(300):
        if fd_count(pid) <= baseline_fds + 2:
            break
        time.sleep(0.1)
    assert fd_count(pid) <= baseline_fds + 2, f"{fd_count(pid)} fds open, {baseline_fds} at the start"

    # RSS bounded: after a warm-up quarter, the typical RSS of the last third is not above that of
    # the first third by more than a margin (a leak grows with the calls), and no sample is absurd
    rss = [r for _, r, _ in samples[len(samples) // 4:]]
    third = max(1, len(rss) // 3)
    early, late = float(np.median(rss[:third])), float(np.median(rss[-third:]))
    report = {"seconds": SECONDS, "rss_mib": [[t, round(r, 1), f] for t, r, f in samples],
              "early_median_mib": early, "late_median_mib": late, "clients_killed": killed[0],
              "results": results}
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=1))
    print("\nsoak RSS curve (s, MiB, fds):", " ".join(f"{t:.0f}:{r:.0f}:{f}" for t, r, f in samples))
    print(f"soak: RSS median {early:.0f} MiB early, {late:.0f} MiB late, peak {max(rss):.0f} MiB; "
          f"{killed[0]} clients killed; " + "; ".join(f"{k} {v['counts']}" for k, v in results.items()))
    # Between two trims (--memory-trim-secs, 10 s here) freed tensor-sized blocks stay in
    # glibc's per-thread arenas and the native plane's pool, so within a period RSS may climb
    # until each gRPC thread has held a large request: the bound is the idle server plus, per
    # thread, one 16 MiB request and its 16 MiB response, twice over for grpcio's copies.
    bound = samples[0][1] + WORKERS * 4 * 16 + 64
    assert max(rss) <= bound, f"RSS reached {max(rss):.0f} MiB, over the bound of {bound:.0f} MiB"
    assert max(rss) < 1024, f"RSS reached {max(rss):.0f} MiB"


# -- memory that comes back ------------------------------------------------------

def settled_rss(pid: int, timeout: float = 30.0) -> float:
    """The server's RSS once it holds still: 3 s (three trim periods) within 1 MiB;
    the last sample when it has not settled within ``timeout``."""
    window: collections.deque[float] = collections.deque(maxlen=13)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        window.append(rss_mib(pid))
        if len(window) == window.maxlen and max(window) - min(window) < 1.0:
            break
        time.sleep(0.25)  # the poll's pace, not an ordering
    return window[-1]


def until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def mutated(valid: bytes, rng: random.Random) -> bytes:
    """``valid`` with one to four changes: a byte overwritten, the tail cut, bytes inserted."""
    data = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        pick = rng.random()
        if pick < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif pick < 0.7:
            del data[rng.randrange(len(data) + 1):]
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def send_mutated(infer, count: int, seed: int, in_flight: int = 32) -> collections.Counter:
    """``count`` mutated mlp requests, ``in_flight`` at a time; their status codes counted."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, 16])
    valid = pb.ModelInferRequest(model_name="mlp", id="m", inputs=[tensor],
                                 raw_input_contents=[np.arange(32, dtype=np.float32).tobytes()]).SerializeToString()
    rng, codes, calls = random.Random(seed), collections.Counter(), collections.deque()

    def collect(call) -> None:
        try:
            call.result()
            codes["OK"] += 1
        except grpc.RpcError as e:
            codes[e.code().name] += 1

    for _ in range(count):
        calls.append(infer.future(mutated(valid, rng), timeout=60))
        if len(calls) >= in_flight:
            collect(calls.popleft())
    for call in calls:
        collect(call)
    return codes


def kill_mid_upload(url: str, request: Path, times: int, at_once: int = 10) -> None:
    """``times`` clients killed while uploading ``request``, ``at_once`` held mid-upload together,
    each stopped after a different share of it has reached the server."""
    size = request.stat().st_size
    for first in range(0, times, at_once):
        holds = [size * (1 + (first + i) % 9) // 10 for i in range(min(at_once, times - first))]
        clients = [subprocess.Popen([sys.executable, str(UPLOADER), url, str(request), str(hold)],
                                    stdout=subprocess.PIPE) for hold in holds]
        try:
            for client in clients:  # the sign: that many bytes of the request reached the server
                line = client.stdout.readline()
                assert line.startswith(b"uploading"), (line, client.wait())
        finally:
            for client in clients:
                client.kill()
                client.wait()


# gRPC core's event engine adds a thread to its pool when work backs up, and keeps it (seen on
# grpcio: 4 -> 5 "event_engine" threads, not back 45 s later): flat is a few, not one per fault
SPARE_THREADS = 2
# what the first round of faults may leave that trimming does not return (see the test)
HIGH_WATER_MIB = 64


def fault_round(url: str, request: Path, infer, pid: int, before: dict, seed: int) -> dict:
    """50 clients killed mid-upload and 20 000 mutated requests; what the server holds once settled."""
    start = time.monotonic()
    kill_mid_upload(url, request, 50)
    peak = rss_mib(pid)
    codes = send_mutated(infer, 20_000, seed=seed)
    faults_s = time.monotonic() - start
    settle = time.monotonic()
    until(lambda: fd_count(pid) <= before["fds"] and thread_count(pid) <= before["threads"] + SPARE_THREADS)
    settle_s = time.monotonic() - settle
    after = {"rss": settled_rss(pid), "fds": fd_count(pid), "threads": thread_count(pid), "names": thread_names(pid)}
    return {"after": after, "rss_after_kills_mib": peak, "faults_seconds": round(faults_s, 1),
            "settle_seconds": round(settle_s, 1), "codes": dict(codes)}


@PLANES
def test_memory_comes_back(make_server, ops_repo, tmp_path, data_plane):
    srv = make_server(ops_repo, "--model-control-mode", "explicit", "--load-model", "*", "--data-plane", data_plane,
                      "--workers", str(WORKERS), "--memory-trim-secs", "1")
    pid = srv.proc.pid
    channel = grpc.insecure_channel(srv.url, options=[("grpc.max_send_message_length", -1),
                                                      ("grpc.max_receive_message_length", -1)])
    infer = channel.unary_unary(MODEL_INFER)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[3 << 20])
    request = tmp_path / "request-12mib.bin"
    request.write_bytes(pb.ModelInferRequest(model_name="big", inputs=[tensor],
                                             raw_input_contents=[bytes(12 << 20)]).SerializeToString())

    # warm: every way a call can take, and the threads gRPC starts for them (its event engine's
    # pool grows with the connections held at once), before "before"
    for _ in range(3):
        infer(request.read_bytes(), timeout=60)
    kill_mid_upload(srv.url, request, 10)
    send_mutated(infer, 1000, seed=1)
    before = {"rss": settled_rss(pid), "fds": fd_count(pid), "threads": thread_count(pid), "names": thread_names(pid)}

    # Two rounds of the same faults. Memory must come back after each within a high-water that
    # trimming does not return (grpcio: seen +10 to +40 MiB after a round, up or down the next
    # round, with 16 000 refused requests and fifty 12 MiB uploads cut): a leak grows with the
    # faults, so one of 1.6 KiB per fault or more passes the bound by the second round.
    rounds = [fault_round(srv.url, request, infer, pid, before, seed) for seed in (2, 3)]
    report = {"plane": data_plane, "before": before, "rounds": rounds}
    (tmp_path / "memory.json").write_text(json.dumps(report, indent=1))
    print(f"\nmemory ({data_plane}): {report}")

    # every mutated request got an answer or a clear refusal; the server still answers right
    for codes in (r["codes"] for r in rounds):
        assert set(codes) <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}, codes
        assert codes["INVALID_ARGUMENT"] > 10_000, codes
    client = tc.InferenceServerClient(srv.url)
    assert client.infer("scale", scale_input(), model_version="1").as_numpy("y").tolist() == [0, 2, 4, 6]
    assert srv.proc.poll() is None
    first, second = rounds[0]["after"], rounds[1]["after"]
    for after in (first, second):
        assert after["rss"] <= before["rss"] + HIGH_WATER_MIB, \
            f"RSS {after['rss']:.0f} MiB after a round of faults, {before['rss']:.0f} before: {rounds}"
        assert after["fds"] <= before["fds"], (before, after)
        assert after["threads"] <= before["threads"] + SPARE_THREADS, (before, after)
    if data_plane == "native":  # the plane's own buffers: held to a close bound
        assert second["rss"] <= 1.2 * before["rss"], (before, rounds)
    channel.close()


def test_memory_flags_are_checked(tmp_path):
    for flag in ("--buffer-pool-mb", "--memory-trim-secs"):
        command = [sys.executable, "-m", "icow", "serve", "--model-repository", str(tmp_path), flag, "-1"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "must be >= 0" in result.stderr, (flag, result.stderr)
