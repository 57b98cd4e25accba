"""Hostile names: a model name (or version) far over any name a model can have is
refused with INVALID_ARGUMENT and a short message by every call that takes one, on
both data planes, with no traceback in the log; the server then answers as before."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from conftest import ServerProcess, start_server
from helpers import expect_error, infer_input
from icow._proto import inference_pb2 as pb
from icow._proto import litecow_pb2 as lc
from icow._proto import litecow_pb2_grpc as lc_grpc
from icow._proto import rollout_pb2 as rp
from icow._proto import rollout_pb2_grpc as rp_grpc
from icow.protocol.errors import MAX_MESSAGE_CHARS
from icow.protocol.names import MAX_NAME_BYTES

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HOSTILE = "m" * 100_000
SHORT_MESSAGE = 400  # characters: the name shortened, its length, and the rule


@pytest.fixture(scope="module", params=["native", "grpcio"], ids=lambda p: f"{p}-plane")
def explicit_server(request: pytest.FixtureRequest, test_repo: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Explicit model control, so that load and unload reach the repository."""
    server = start_server(test_repo, "--data-plane", request.param, "--model-control-mode", "explicit",
                          "--load-model", "scale", "--no-metrics", log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(explicit_server: ServerProcess) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(explicit_server.url)


@pytest.fixture(scope="module")
def channel(explicit_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(explicit_server.url) as channel:
        yield channel


def scale_input() -> tc.InferInput:
    return infer_input("x", np.arange(4, dtype=np.float32), "FP32")


@pytest.fixture(autouse=True)
def still_serving(client: tc.InferenceServerClient, explicit_server: ServerProcess) -> Iterator[None]:
    """After every hostile call: no traceback, the name not logged whole, a good call answered."""
    yield
    result = client.infer("scale", [scale_input()]).as_numpy("y")
    np.testing.assert_array_equal(result, np.arange(4, dtype=np.float32) * 3)
    log = explicit_server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "m" * 1000 not in log


CALLS: dict[str, Callable[[tc.InferenceServerClient, str], object]] = {
    "ModelInfer": lambda c, name: c.infer(name, [scale_input()]),
    "ModelReady": lambda c, name: c.is_model_ready(name),
    "ModelMetadata": lambda c, name: c.get_model_metadata(name),
    "ModelConfig": lambda c, name: c.get_model_config(name),
    "ModelStatistics": lambda c, name: c.get_inference_statistics(name),
    "RepositoryModelLoad": lambda c, name: c.load_model(name),
    "RepositoryModelUnload": lambda c, name: c.unload_model(name),
}


@pytest.mark.parametrize("call", CALLS)
def test_hostile_model_name(client: tc.InferenceServerClient, call: str) -> None:
    with expect_error(INVALID, "100000 bytes", f"at most {MAX_NAME_BYTES} bytes") as refused:
        CALLS[call](client, HOSTILE)
    assert len(refused.message) < SHORT_MESSAGE, refused.message


def test_bound_counts_bytes(client: tc.InferenceServerClient) -> None:
    """At the bound an unknown name is NOT_FOUND as any unknown name; one byte over
    (here 128 two-byte characters) is refused."""
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model"):
        client.get_model_metadata("m" * MAX_NAME_BYTES)
    with expect_error(INVALID, f"{MAX_NAME_BYTES + 1} bytes"):
        client.get_model_metadata("é" * ((MAX_NAME_BYTES + 1) // 2))


def test_hostile_version(client: tc.InferenceServerClient) -> None:
    """A 5000-digit version is refused before it becomes a number (Python's int() refuses it)."""
    with expect_error(INVALID, "version or label", "5000 bytes") as refused:
        client.infer("scale", [scale_input()], model_version="1" * 5000)
    assert len(refused.message) < SHORT_MESSAGE, refused.message


def test_hostile_litecow_model_key(channel: grpc.Channel) -> None:
    stub = lc_grpc.ICOWStub(channel)
    for key in (HOSTILE, "s3://models/" + HOSTILE + ".onnx", "gs://" + HOSTILE):
        request = lc.InferenceRequest(model_key=key, unnamed_inputs=lc.ArrayList(arrays=[
            lc.Array(shape=[4], float_array=lc.FloatArray(values=[0, 1, 2, 3]))]))
        with expect_error(INVALID, "characters") as refused:
            stub.get_inference(request)
        assert len(refused.message) < SHORT_MESSAGE, refused.message


def test_hostile_rollout_names(channel: grpc.Channel) -> None:
    stub = rp_grpc.ModelRolloutStub(channel)
    with expect_error(INVALID, "100000 bytes") as refused:
        stub.GetRouting(rp.GetRoutingRequest(model_name=HOSTILE))
    assert len(refused.message) < SHORT_MESSAGE, refused.message
    with expect_error(INVALID, "100000 bytes"):
        stub.SetRouting(rp.SetRoutingRequest(model_name=HOSTILE, labels={"stable": 1}))
    with expect_error(INVALID, "is not a label") as refused:  # a known model, a hostile label
        stub.SetRouting(rp.SetRoutingRequest(model_name="scale", labels={HOSTILE: 1}))
    assert len(refused.message) < SHORT_MESSAGE, refused.message


@pytest.mark.parametrize("field", ["an input name twice", "a datatype"])
def test_any_message_fits_the_clients_metadata_limit(channel: grpc.Channel, field: str) -> None:
    """Messages that echo what the request said (here 100 000 characters) are bounded
    (protocol/errors.py): the client sees the refusal, not RESOURCE_EXHAUSTED."""
    hostile, tensor = "t" * 100_000, pb.ModelInferRequest.InferInputTensor
    if field == "a datatype":
        inputs = [tensor(name="x", datatype=hostile, shape=[4])]
    else:
        inputs = [tensor(name=hostile, datatype="FP32", shape=[4])] * 2
    request = pb.ModelInferRequest(model_name="scale", inputs=inputs, raw_input_contents=[bytes(16)] * len(inputs))
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as raised:
        infer(request.SerializeToString(), timeout=60)
    assert raised.value.code() == INVALID, raised.value.details()
    assert len(raised.value.details()) <= MAX_MESSAGE_CHARS + len("... (100000 characters)")
