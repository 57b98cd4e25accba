"""Fuzz a live ``icow serve`` over a real gRPC connection, as a hostile client would:
valid requests of every method (live_seeds.py) mutated as bytes, as protobuf
encodings and as fields (mutations.py), sent raw with generic calls (no
serializers), on either data plane.

    python tests/fuzz/live.py [--seconds 60 | --count N] [--seed 0] [--plane both|native|grpcio]
                              [--codec native|protobuf]

Deterministic given the seed (the requests; the server's answers may depend on
timing). It passes when no answer is UNKNOWN or INTERNAL (each is a request the
server did not classify), no call hangs, the server stays alive with no
traceback, ``Abort`` or ``terminate`` in its log, and afterwards still answers
the seeds' inference requests with the bytes in-process ONNX Runtime computes.
Prints the status histogram; exits 1 on a failure, with each request's bytes.

Over HTTP (--protocol http or both) the seeds are REST requests (live_seeds.
http_seeds), mutated as raw bytes, as bodies (Content-Length kept true), as JSON
trees, as paths and as headers, each on a new connection. It passes when no answer
is a 5xx other than 503, every error answer is JSON ``{"error": ...}``, none hangs
(the server runs with --http-read-timeout-secs 1, so that a request whose body
never comes whole is cut), and the same server checks as above hold.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent, HERE.parents[1] / "examples"):  # run as a script: the test helpers' folders
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import live_seeds  # noqa: E402
from live_seeds import OIP, HttpSeed, Seed  # noqa: E402
from mutations import mutate_bytes, mutate_fields, mutate_json, mutate_wire  # noqa: E402

from helpers import reference  # noqa: E402
from icow import _wire  # noqa: E402
from icow._proto import inference_pb2 as pb  # noqa: E402

SERVER_ARGS = ("--model-control-mode", "explicit", "--load-model", "*", "--allow-client-shm",
               "--shm-max-regions", "8", "--workers", "4", "--http-read-timeout-secs", "1")
UNCLASSIFIED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
CALL_TIMEOUT_S = 10.0  # a call still unanswered by then counts as a hang
LOG_MARKERS = ("Traceback", "Abort", "terminate")


@dataclass
class Finding:
    method: str
    code: str
    details: str
    data: bytes  # the request as sent

    def __str__(self) -> str:
        return f"{self.method} -> {self.code}: {self.details[:300]}\n    request ({len(self.data)} bytes): " \
               f"{self.data[:512].hex()}"


@dataclass
class Report:
    plane: str
    seed: int
    sent: int = 0
    histogram: Counter = field(default_factory=Counter)  # "method STATUS" -> calls
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # crashes, log markers, wrong answers

    @property
    def ok(self) -> bool:
        return not self.findings and not self.problems

    def summary(self) -> str:
        lines = [f"live fuzz, {self.plane} plane, seed {self.seed}: {self.sent} requests, "
                 f"{len(self.findings)} unclassified or hung, {len(self.problems)} other problems"]
        lines += [f"  {n:6d}  {key}" for key, n in sorted(self.histogram.items())]
        lines += [f"FINDING {f}" for f in self.findings[:20]]
        lines += [f"PROBLEM {p}" for p in self.problems]
        return "\n".join(lines)


class Caller:
    """Raw bytes to any method of one channel; the answer's status and details."""

    def __init__(self, url: str) -> None:
        self.channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", -1),
                                                           ("grpc.max_send_message_length", -1)])

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, data: bytes, stream: bool = False) -> tuple[grpc.StatusCode, str, bytes]:
        try:
            if stream:
                answers = list(self.channel.stream_stream(method)(iter([data]), timeout=CALL_TIMEOUT_S))
                return grpc.StatusCode.OK, "", b"".join(answers)
            return grpc.StatusCode.OK, "", self.channel.unary_unary(method)(data, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            return e.code(), e.details() or "", b""


def mutant(seeds: Sequence[Seed], words: Sequence[str], rng: random.Random) -> tuple[Seed, bytes]:
    """A seed, and its bytes mutated one way or two."""
    seed = rng.choice(seeds)
    roll = rng.random()
    if roll < 0.35:
        data = mutate_bytes(seed.data, rng, [s.data for s in rng.sample(list(seeds), 2)])
    elif roll < 0.65:
        data = mutate_wire(seed.data, rng)
    else:
        message = type(seed.message)()
        message.CopyFrom(seed.message)
        for _ in range(rng.randint(1, 3)):
            mutate_fields(message, rng, words)
        data = message.SerializeToString()
    if rng.random() < 0.1:
        data = mutate_bytes(data, rng)
    return seed, data


def fuzz(caller: Caller, seeds: Sequence[Seed], words: Sequence[str], report: Report, rng: random.Random, *,
         count: int | None = None, seconds: float | None = None, alive=lambda: True) -> None:
    """Send mutants until ``count`` were sent or ``seconds`` passed (or the server died)."""
    end = time.monotonic() + seconds if seconds is not None else None
    while (count is None or report.sent < count) and (end is None or time.monotonic() < end):
        seed, data = mutant(seeds, words, rng)
        start = time.monotonic()
        code, details, _ = caller.call(seed.method, data, seed.stream)
        report.sent += 1
        report.histogram[f"{seed.method.rsplit('/', 1)[-1]} {code.name}"] += 1
        hung = code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start >= CALL_TIMEOUT_S * 0.9
        if code in UNCLASSIFIED or hung:
            report.findings.append(Finding(seed.method, code.name, details, data))
        if report.sent % 25 == 0 and not alive():
            report.problems.append(f"the server died after {report.sent} requests")
            return


# -- HTTP ------------------------------------------------------------------------

PATH_WORDS = ["v2", "models", "versions", "infer", "ready", "stats", "config", "repository", "load", "unload",
              "index", "systemsharedmemory", "cudasharedmemory", "region", "register", "unregister", "status",
              "health", "live", "..", "%00", "%2F", "%ff%fe", "%", "x" * 300, "", "?a=b", "#f"]
HEADERS = ["Inference-Header-Content-Length", "Content-Encoding", "Content-Length", "Transfer-Encoding",
           "Content-Type", "Authorization", "Expect", "Connection", "Upgrade"]
HEADER_VALUES = ["0", "-1", "1", "16", "99999999999999999999", "gzip", "deflate", "br", "chunked", "identity",
                 "close", "100-continue", "websocket", "application/json", "Bearer x", "", " ", "\x7f"]


def http_mutant(seeds: Sequence[HttpSeed], rng: random.Random) -> tuple[HttpSeed, bytes]:
    """A REST seed, and its request mutated one way."""
    seed = rng.choice(seeds)
    mutated = HttpSeed(seed.method, seed.path, seed.body, list(seed.headers))
    roll = rng.random()
    if roll < 0.3 and seed.body:
        mutated.body = mutate_bytes(seed.body, rng, [s.body for s in rng.sample(list(seeds), 2)])
    elif roll < 0.55 and seed.body.startswith(b"{") and not any(k.startswith("Inference") for k, _ in seed.headers):
        tree = orjson.loads(seed.body)
        for _ in range(rng.randint(1, 3)):
            tree = mutate_json(tree, rng)
        mutated.body = json.dumps(tree).encode()
    elif roll < 0.7:
        parts = seed.path.split("/")
        at = rng.randrange(len(parts))
        parts[at:at + rng.randint(0, 1)] = [rng.choice(PATH_WORDS) for _ in range(rng.randint(0, 2))]
        mutated.path = "/".join(parts) or "/"
        mutated.method = rng.choice([seed.method] * 6 + ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
    elif roll < 0.85:
        mutated.headers.append((rng.choice(HEADERS), rng.choice(HEADER_VALUES)))
        if rng.random() < 0.3 and mutated.headers:
            del mutated.headers[rng.randrange(len(mutated.headers))]
    else:
        return seed, mutate_bytes(seed.raw(), rng)
    return seed, mutated.raw()


def http_call(port: int, data: bytes) -> tuple[int | None, bytes, bool]:
    """(status, body, hung) of one request on a new connection; status None: closed without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    return None, answer, False
                answer += chunk
            head, body = answer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            size = next((int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                         if k.strip().lower() == b"content-length"), 0)
            if data.startswith(b"HEAD "):  # the answer's head only, its Content-Length that of a GET's body
                return int(lines[0].split()[1]), b"", False
            while len(body) < size:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            return int(lines[0].split()[1]), body, False
        except (BrokenPipeError, ConnectionResetError):
            return None, b"", False
        except TimeoutError:
            return None, b"", True


def _json_error(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body).get("error"), str)
    except (orjson.JSONDecodeError, AttributeError):
        return False


def fuzz_http(port: int, seeds: Sequence[HttpSeed], report: Report, rng: random.Random, *, count: int | None = None,
              seconds: float | None = None, alive=lambda: True) -> None:
    end = time.monotonic() + seconds if seconds is not None else None
    while (count is None or report.sent < count) and (end is None or time.monotonic() < end):
        seed, data = http_mutant(seeds, rng)
        status, body, hung = http_call(port, data)
        report.sent += 1
        endpoint = seed.path.rsplit("/", 1)[-1] or "v2"
        report.histogram[f"HTTP {seed.method} {endpoint} {status or ('hung' if hung else 'closed')}"] += 1
        if hung:
            report.findings.append(Finding(f"HTTP {seed.method} {seed.path}", "hung", "", data))
        elif status is not None and ((status >= 500 and status != 503)
                                     or (status >= 400 and not data.startswith(b"HEAD ") and not _json_error(body))):
            report.findings.append(Finding(f"HTTP {seed.method} {seed.path}", str(status),
                                           body.decode(errors="replace"), data))
        if report.sent % 25 == 0 and not alive():
            report.problems.append(f"the server died after {report.sent} requests")
            return


def check_http(port: int, seeds: Sequence[HttpSeed]) -> list[str]:
    """The JSON inference seed of ``scale`` answered as in-process ONNX Runtime answers."""
    status, body, _ = http_call(port, seeds[0].raw())
    if status != 200:
        return [f"HTTP {seeds[0].path}: {status} {body[:300]!r}"]
    x = np.arange(4, dtype=np.float32)
    want = reference(live_seeds.ROOT / "examples" / "models" / "scale" / "1" / "model.onnx", {"x": x})["y"]
    if orjson.loads(body)["outputs"][0]["data"] != want.tolist():
        return ["HTTP: scale's output differs from ONNX Runtime's"]
    return []


# -- the answers afterwards -----------------------------------------------------

def _expected(seed: Seed) -> list[bytes]:
    # ONNX Runtime takes strings as str (bytes objects it would turn into "b'...'")
    feeds = {k: np.array([b.decode() for b in v.ravel()], dtype=object).reshape(v.shape) if v.dtype == object
             else v for k, v in seed.feeds.items()}
    want = reference(seed.model, feeds)
    names = seed.outputs or list(want)
    return [_wire.pack_bytes(want[n].ravel().tolist()) if want[n].dtype == object
            else np.ascontiguousarray(want[n]).tobytes() for n in names]


def restore(caller: Caller, seeds: Sequence[Seed]) -> None:
    """Undo what the mutants may have changed: unloaded models, registered regions, routing."""
    for name in sorted({s.message.model_name for s in seeds if s.model is not None} | {"spare"}):
        caller.call(OIP + "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name).SerializeToString())
    caller.call(OIP + "SystemSharedMemoryUnregister", b"")  # every region


def check_answers(caller: Caller, seeds: Sequence[Seed], region: shared_memory.SharedMemory) -> list[str]:
    """Each inference seed's answer compared with ONNX Runtime's, bytes for bytes;
    ``scale`` through the shared-memory region too."""
    problems = []
    for seed in seeds:
        if seed.model is None:
            continue
        code, details, data = caller.call(seed.method, seed.data)
        if code != grpc.StatusCode.OK:
            problems.append(f"{seed.message.model_name}: {code.name}: {details}")
            continue
        got = list(pb.ModelInferResponse.FromString(data).raw_output_contents)
        if got != _expected(seed):
            problems.append(f"{seed.message.model_name}: the outputs differ from ONNX Runtime's")
    shm = [s for s in seeds if s.model is None and s.method.endswith(("SystemSharedMemoryRegister", "ModelInfer"))]
    np.ndarray((8,), np.float32, region.buf)[4:] = 0
    for seed in shm:
        code, details, _ = caller.call(seed.method, seed.data)
        if code != grpc.StatusCode.OK:
            problems.append(f"shared memory, {seed.method}: {code.name}: {details}")
    x = np.ndarray((8,), np.float32, region.buf)
    want = reference(live_seeds.ROOT / "examples" / "models" / "scale" / "1" / "model.onnx", {"x": x[:4].copy()})
    if x[4:].tobytes() != want["y"].tobytes():
        problems.append("shared memory: scale's output in the region differs from ONNX Runtime's")
    caller.call(OIP + "SystemSharedMemoryUnregister", b"")
    return problems


def log_problems(log: str) -> list[str]:
    return [f"the server log has {marker!r}:\n{_around(log, marker)}" for marker in LOG_MARKERS if marker in log]


def _around(log: str, marker: str) -> str:
    at = log.index(marker)
    return log[max(0, at - 1500):at + 1500]


# -- a run ----------------------------------------------------------------------

def run(server, repo: Path, plane: str, *, seed: int = 0, count: int | None = None,
        seconds: float | None = None, protocol: str = "grpc") -> Report:
    """Fuzz ``server`` (a conftest.ServerProcess serving ``repo`` with SERVER_ARGS) over
    gRPC on its ``plane``, or (``protocol`` "http") over HTTP."""
    report = Report(plane if protocol == "grpc" else "HTTP", seed)
    region = shared_memory.SharedMemory(create=True, size=4096)
    caller = Caller(server.url)
    try:
        seeds = live_seeds.seeds(repo, region)
        words = live_seeds.words("/" + region.name)
        report.problems += [f"before fuzzing: {p}" for p in check_answers(caller, seeds, region)]
        alive = lambda: server.proc.poll() is None  # noqa: E731
        if protocol == "http":
            rest = live_seeds.http_seeds(region)
            report.problems += [f"before fuzzing: {p}" for p in check_http(server.http_port, rest)]
            fuzz_http(server.http_port, rest, report, random.Random(seed), count=count, seconds=seconds, alive=alive)
        else:
            fuzz(caller, seeds, words, report, random.Random(seed), count=count, seconds=seconds, alive=alive)
        if server.proc.poll() is not None:
            report.problems.append(f"the server exited with {server.proc.returncode}")
        else:
            restore(caller, seeds)
            report.problems += [f"after fuzzing: {p}" for p in check_answers(caller, seeds, region)]
            if protocol == "http":
                report.problems += [f"after fuzzing: {p}" for p in check_http(server.http_port,
                                                                              live_seeds.http_seeds(region))]
        report.problems += log_problems(server.log())
    finally:
        caller.close()
        region.close()
        region.unlink()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from conftest import start_server  # the tests' own way to start `icow serve` and wait for it

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="time for all planes (and HTTP) together, in equal shares")
    parser.add_argument("--count", type=int, help="requests per plane (instead of --seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plane", choices=["both", "native", "grpcio"], default="both")
    parser.add_argument("--protocol", choices=["both", "grpc", "http"], default="both",
                        help="gRPC on each plane, HTTP (on the first plane's server), or both")
    parser.add_argument("--codec", choices=["native", "protobuf"], default="native",
                        help="how the server reads ModelInfer (protobuf: the baseline)")
    args = parser.parse_args(argv)
    planes = ["native", "grpcio"] if args.plane == "both" else [args.plane]
    runs = [(p, "grpc") for p in planes] if args.protocol != "http" else []
    if args.protocol != "grpc":
        runs.insert(1 if runs else 0, (planes[0], "http"))
    failed = False
    with tempfile.TemporaryDirectory(prefix="icow-live-fuzz-") as tmp:
        repo = live_seeds.build_repository(Path(tmp) / "models")
        for plane, protocol in runs:
            server = start_server(repo, *SERVER_ARGS, "--data-plane", plane, "--codec", args.codec, "--no-metrics",
                                  log_dir=Path(tmp) / "logs")
            try:
                seconds = None if args.count else args.seconds / len(runs)
                report = run(server, repo, plane, seed=args.seed, count=args.count, seconds=seconds,
                             protocol=protocol)
            finally:
                server.stop()
            print(report.summary(), flush=True)
            failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
