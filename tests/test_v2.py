"""The Open Inference Protocol served to Triton's own clients, tritonclient[grpc] and
tritonclient[http] (the ``transport`` fixture: every test here that the protocol
defines on both runs on both), every output compared with in-process ONNX Runtime on
the same inputs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from helpers import NUMERIC, dtype_feeds, expect_error, reference
from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc as pb_grpc
from icow.protocol import tensors
from icow.protocol.datatypes import DATATYPES
from transports import TRANSPORTS, Transport


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    return Transport(request.param)


@pytest.fixture(scope="module")
def client(server, transport):
    """tritonclient.grpc's or tritonclient.http's client."""
    client = transport.client(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.url))


# -- health and metadata ------------------------------------------------------

def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("scale", "1")
    assert not client.is_model_ready("scale", "3")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata(client, transport):
    meta = transport.server_metadata(client)
    assert meta["name"] == "icow"
    assert {"model_repository", "model_configuration", "statistics"} <= set(meta["extensions"])


def signature(tensors: list[dict]) -> list[tuple]:
    return [(t["name"], t["datatype"], t["shape"]) for t in tensors]


def test_model_metadata(client, transport):
    meta = transport.metadata(client, "mlp")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert signature(meta["inputs"]) == [("input", "FP32", [-1, 16])]
    assert signature(meta["outputs"]) == [("output", "FP32", [-1, 4])]
    assert transport.metadata(client, "scale")["versions"] == ["1", "2"]
    mixed = transport.metadata(client, "mixed")
    assert [(t["name"], t["datatype"]) for t in mixed["outputs"]] == [
        ("sum", "FP32"), ("b_next", "INT64"), ("c_not", "BOOL"), ("a_half", "FP16")]


def test_model_config_derived_from_graph(client, transport):
    config = transport.config(client, "mlp")
    assert config["name"] == "mlp" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 32  # first dims dynamic, no config file: the default
    assert [(i["name"], i["dims"]) for i in config["input"]] == [("input", [16])]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("output", [4])]


def test_model_config_from_pbtxt(client, transport):
    scale = transport.config(client, "scale")
    assert "all" in scale["version_policy"] and scale["max_batch_size"] == 0
    assert [(i["name"], i["dims"]) for i in scale["input"]] == [("x", [4])]
    strings = transport.config(client, "strings")
    assert strings["input"][0]["data_type"] == "TYPE_STRING"


# -- inference ----------------------------------------------------------------

def test_infer_matches_onnxruntime(client, transport, test_repo):
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    result = client.infer("mlp", [transport.input("input", x, "FP32")],
                          outputs=[transport.output("output")], request_id="req-42")
    expected = reference(test_repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_array_equal(result.as_numpy("output"), expected)
    response = transport.response(result)
    assert (response["id"], response["model_name"], response["model_version"]) == ("req-42", "mlp", "1")


def test_versions(client, transport):
    x = np.arange(4, dtype=np.float32)
    tensor = [transport.input("x", x, "FP32")]
    np.testing.assert_array_equal(client.infer("scale", tensor, model_version="1").as_numpy("y"), x * 2)
    np.testing.assert_array_equal(client.infer("scale", tensor, model_version="2").as_numpy("y"), x * 3)
    newest = client.infer("scale", tensor)
    assert transport.response(newest)["model_version"] == "2"
    np.testing.assert_array_equal(newest.as_numpy("y"), x * 3)


def test_unknown_model_or_version_is_not_found(client, transport):
    tensor = [transport.input("x", np.arange(4, dtype=np.float32), "FP32")]
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model 'no-such-model'"):
        client.infer("no-such-model", tensor)
    with expect_error(grpc.StatusCode.NOT_FOUND, "'scale'"):
        client.infer("scale", tensor, model_version="3")
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model 'no-such-model'"):
        transport.metadata(client, "no-such-model")


def test_wrong_input_is_invalid_argument(client, transport):
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'x'"):
        client.infer("scale", [transport.input("x", np.zeros(3, np.float32), "FP32")])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'x'"):
        client.infer("scale", [transport.input("x", np.zeros(4, np.int32), "INT32")])


def test_requested_outputs_filter(client, transport, test_repo):
    rng = np.random.default_rng(2)
    feeds = {"a": rng.standard_normal((2, 4)).astype(np.float32),
             "b": rng.integers(-100, 100, (2, 4)).astype(np.int64),
             "c": rng.integers(0, 2, (2, 4)).astype(bool)}
    inputs = [transport.input(n, v, t) for (n, v), t in zip(feeds.items(), ["FP32", "INT64", "BOOL"])]
    result = client.infer("mixed", inputs, outputs=[transport.output("c_not"), transport.output("a_half")])
    assert [o["name"] for o in transport.response(result)["outputs"]] == ["c_not", "a_half"]
    expected = reference(test_repo / "mixed" / "1" / "model.onnx", feeds)
    np.testing.assert_array_equal(result.as_numpy("c_not"), expected["c_not"])
    np.testing.assert_array_equal(result.as_numpy("a_half"), expected["a_half"])
    assert result.as_numpy("sum") is None
    everything = client.infer("mixed", inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(everything.as_numpy(name), value)


def test_bytes_model(client, transport):
    text = np.array([b"hello", b"icow", "\u00fcber".encode(), b""], dtype=object)
    result = client.infer("strings", [transport.input("text", text, "BYTES")])
    assert result.as_numpy("upper").tolist() == [b"HELLO", b"ICOW", "\u00fcBER".encode(), b""]


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
def test_every_datatype(client, transport, test_repo, datatype):
    feeds = dtype_feeds()
    inputs = [transport.input(name, value, name[3:]) for name, value in feeds.items()]
    result = client.infer("dtypes", inputs, outputs=[transport.output(f"out_{datatype}")])
    got = result.as_numpy(f"out_{datatype}")
    ort_feeds = {**feeds, "in_BYTES": np.vectorize(bytes.decode, otypes=[object])(feeds["in_BYTES"])}
    expected = reference(test_repo / "dtypes" / "1" / "model.onnx", ort_feeds)[f"out_{datatype}"]
    if datatype == "BYTES":
        expected = np.vectorize(str.encode, otypes=[object])(expected)
    assert got.dtype == expected.dtype and got.shape == (2, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("datatype", [t for t in NUMERIC if t != "FP16"] + ["BYTES"])
def test_every_datatype_typed_contents(stub, datatype):
    """An input in InferTensorContents' typed field gives what raw contents give."""
    value = dtype_feeds()[f"in_{datatype}"]
    request = pb.ModelInferRequest(model_name=f"identity_{datatype}")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=value.shape)
    getattr(tensor.contents, DATATYPES[datatype].contents).extend(value.ravel().tolist())
    response = stub.ModelInfer(request)
    assert list(response.outputs[0].shape) == [2, 3] and response.outputs[0].datatype == datatype
    got = tensors.from_raw(response.raw_output_contents[0], DATATYPES[datatype], [2, 3], "y")
    np.testing.assert_array_equal(got, value)


def test_fp16_has_no_typed_contents(stub):
    request = pb.ModelInferRequest(model_name="identity_FP16")
    request.inputs.add(name="x", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'x'", "FP16 has no typed contents"):
        stub.ModelInfer(request)


def test_trace_and_log_settings_are_unimplemented(client):
    with expect_error(grpc.StatusCode.UNIMPLEMENTED, "tracing is not supported"):
        client.get_trace_settings()
    with expect_error(grpc.StatusCode.UNIMPLEMENTED, "tracing is not supported"):
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    with expect_error(grpc.StatusCode.UNIMPLEMENTED, "use --log-level"):
        client.get_log_settings()
    with expect_error(grpc.StatusCode.UNIMPLEMENTED, "use --log-level"):
        client.update_log_settings(settings={"log_verbose_level": 1})
