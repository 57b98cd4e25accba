"""The native data plane's spike (issue 8, docs/native-plane.md): icow._plane,
a grpc++ server, living in one process with grpcio's server and clients.

Skipped where icow._plane was not built (no gRPC C++ libraries at build time),
except the test that the import fails gracefully there."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

import make_models
from icow import native_plane
from icow._proto import inference_pb2 as pb
from icow.server import InferenceServer, ServerOptions

needs_plane = pytest.mark.skipif(not native_plane.available(), reason=native_plane.UNAVAILABLE_REASON or "")

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MiB = 1 << 20
OPTIONS = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]


def request(rows: int, seed: int) -> tuple[bytes, np.ndarray]:
    """A ModelInfer request for identity_FP32 ([batch, 3]) and its input."""
    x = np.random.default_rng(seed).random((rows, 3), dtype=np.float32)
    message = pb.ModelInferRequest(model_name="identity_FP32", id=str(seed), inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 3])],
        raw_input_contents=[x.tobytes()])
    return message.SerializeToString(), x


def output(data: bytes) -> np.ndarray:
    response = pb.ModelInferResponse.FromString(data)
    assert [o.name for o in response.outputs] == ["y"]
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(response.outputs[0].shape))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """identity_FP32 ([batch, 3]) with no batch limit, so that 4 MiB fit in one request."""
    repo = tmp_path_factory.mktemp("plane") / "models"
    make_models.write(make_models.identity("FP32"), repo, "identity_FP32")
    (repo / "identity_FP32" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return repo


@pytest.fixture(scope="module")
def servers(repo: Path):
    """In this process: icow's grpcio server, the same service behind the grpc++
    plane, and the plane's C++ echo."""
    icow = InferenceServer(ServerOptions(repository=repo, port=0, metrics_port=None, workers=16))
    icow.start()
    plane = native_plane.serve(icow.service, "127.0.0.1:0", max_message_bytes=64 * MiB)
    echo = native_plane._plane.Server("127.0.0.1:0", max_message_bytes=64 * MiB)
    yield {"grpcio": icow.port, "plane": plane.port, "echo": echo.port}
    echo.stop()
    plane.stop(1.0)
    icow.stop(1.0).wait(10)


def hammer(calls: dict[str, Callable[[int], None]], threads: int, count: int) -> None:
    """``threads`` threads per target, all at once, each making ``count`` calls."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads * len(calls))

    def run(call: Callable[[int], None], thread: int) -> None:
        try:
            start.wait()
            for i in range(count):
                call(thread * count + i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=run, args=(call, t)) for call in calls.values() for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, f"{len(errors)} call(s) failed, first: {errors[0]!r}"


@needs_plane
@pytest.mark.parametrize("rows, count", [(4, 300), (MiB * 4 // 12, 12)], ids=["small", "4MiB"])
def test_grpcio_and_grpcpp_in_one_process_under_load(servers, rows, count):
    """8 client threads per server, all at once: grpcio's server with icow, the
    grpc++ plane with icow behind it, and the grpc++ echo; every answer checked."""
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) for name, port in servers.items()}
    stubs = {name: c.unary_unary(MODEL_INFER) for name, c in channels.items()}
    requests = [request(rows, seed) for seed in range(4)]

    def infer(name: str) -> Callable[[int], None]:
        def call(i: int) -> None:
            data, x = requests[i % len(requests)]
            np.testing.assert_array_equal(output(stubs[name](data, timeout=60)), x)
        return call

    def echo(i: int) -> None:
        data, _ = requests[i % len(requests)]
        assert stubs["echo"](data, timeout=60) == data

    try:
        hammer({"grpcio": infer("grpcio"), "plane": infer("plane"), "echo": echo}, threads=8, count=count)
    finally:
        for c in channels.values():
            c.close()


@needs_plane
def test_plane_statuses_and_other_methods(servers):
    with grpc.insecure_channel(f"127.0.0.1:{servers['plane']}", options=OPTIONS) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        with pytest.raises(grpc.RpcError) as e:
            infer(pb.ModelInferRequest(model_name="no-such-model").SerializeToString())
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            infer(b"\xff\xff")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ready = channel.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                    response_deserializer=pb.ServerReadyResponse.FromString)
        assert ready(pb.ServerReadyRequest().SerializeToString()).ready
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                       response_deserializer=pb.ModelMetadataResponse.FromString)
        assert metadata(pb.ModelMetadataRequest(name="identity_FP32").SerializeToString()).inputs[0].name == "x"
        with pytest.raises(grpc.RpcError) as e:
            metadata(pb.ModelMetadataRequest(name="no-such-model").SerializeToString())
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary("/no.Such/Method")(b"")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


@needs_plane
def test_handler_exception_is_internal():
    def broken(data: memoryview) -> bytes:
        raise ValueError("boom")

    server = native_plane._plane.Server("127.0.0.1:0", broken)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(MODEL_INFER)(b"x")
        assert e.value.code() == grpc.StatusCode.INTERNAL and e.value.details() == "handler failed: ValueError: boom"
        assert server.calls == 1
    finally:
        server.stop()
        server.stop()  # idempotent


def test_without_the_plane_import_fails_gracefully():
    """A build without the gRPC C++ libraries has no icow._plane: icow works, the plane says why not."""
    code = ("import sys; sys.modules['icow._plane'] = None\n"
            "from icow import native_plane, server\n"
            "assert not native_plane.available()\n"
            "print(native_plane.UNAVAILABLE_REASON)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "native data plane is not available" in out
