"""Bad requests get a clear status and harm nothing else."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from helpers import expect_error, infer_input
from icow._proto import inference_pb2 as pb
from icow._proto import inference_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def client(server) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(server.url)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.url) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(autouse=True)
def still_serving(client):
    """After every bad request, a good one still gets the right answer."""
    yield
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(client.infer("scale", [infer_input("x", x, "FP32")]).as_numpy("y"), x * 3)


def scale_request(**fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="scale", **fields)
    return request


def fp32_input(name="x", shape=(4,), datatype="FP32") -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))


def test_unknown_input_name(client):
    with expect_error(INVALID, "no input 'z'", "inputs are: x"):
        client.infer("scale", [infer_input("z", np.zeros(4, np.float32), "FP32")])


def test_missing_input(client):
    a = infer_input("a", np.zeros((1, 4), np.float32), "FP32")
    with expect_error(INVALID, "needs input(s) b, c"):
        client.infer("mixed", [a])


def test_wrong_datatype(client):
    with expect_error(INVALID, "input 'x'", "expected datatype FP32, got FP64"):
        client.infer("scale", [infer_input("x", np.zeros(4, np.float64), "FP64")])


def test_wrong_rank(client):
    with expect_error(INVALID, "input 'x'", "expected shape [4], got [1, 4]"):
        client.infer("scale", [infer_input("x", np.zeros((1, 4), np.float32), "FP32")])


def test_static_dim_mismatch(client):
    with expect_error(INVALID, "input 'input'", "expected shape [-1, 16], got [2, 15]"):
        client.infer("mlp", [infer_input("input", np.zeros((2, 15), np.float32), "FP32")])


def test_batch_over_max_batch_size(client):
    with expect_error(INVALID, "batch size 33", "max_batch_size"):
        client.infer("mlp", [infer_input("input", np.zeros((33, 16), np.float32), "FP32")])


def test_lying_byte_size(stub):
    request = scale_request(inputs=[fp32_input()], raw_input_contents=[b"\0" * 15])
    with expect_error(INVALID, "input 'x'", "needs 16 bytes, got 15"):
        stub.ModelInfer(request)


def test_raw_contents_count(stub):
    request = scale_request(inputs=[fp32_input()], raw_input_contents=[b"\0" * 16, b"\0" * 16])
    with expect_error(INVALID, "2 entries for 1 inputs"):
        stub.ModelInfer(request)


def test_mixed_raw_and_typed(stub):
    a = fp32_input("a", (1, 4))
    b = fp32_input("b", (1, 4), "INT64")
    b.contents.int64_contents.extend([1, 2, 3, 4])
    request = pb.ModelInferRequest(model_name="mixed", inputs=[a, b], raw_input_contents=[b"\0" * 16, b""])
    with expect_error(INVALID, "input 'b'", "typed contents", "raw_input_contents"):
        stub.ModelInfer(request)


def test_typed_contents_count(stub):
    x = fp32_input()
    x.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    with expect_error(INVALID, "input 'x'", "needs 4 elements, got 3 in fp32_contents"):
        stub.ModelInfer(scale_request(inputs=[x]))


def test_typed_contents_are_served(stub):
    x = fp32_input()
    x.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = stub.ModelInfer(scale_request(inputs=[x], model_version="1"))
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [2.0, 4.0, 6.0, 8.0]


def test_unknown_datatype(stub):
    with expect_error(INVALID, "input 'x'", "unknown datatype 'FP8'"):
        stub.ModelInfer(scale_request(inputs=[fp32_input(datatype="FP8")], raw_input_contents=[b"\0" * 4]))


def test_negative_dimension(stub):
    with expect_error(INVALID, "input 'x'", "negative dimension"):
        stub.ModelInfer(scale_request(inputs=[fp32_input(shape=(-4,))], raw_input_contents=[b""]))


def test_bytes_element_overrun(stub):
    text = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    request = pb.ModelInferRequest(model_name="strings", inputs=[text],
                                   raw_input_contents=[b"\xff\x00\x00\x00abc"])
    with expect_error(INVALID, "input 'text'", "declares 255 bytes but only 3 remain"):
        stub.ModelInfer(request)


def test_bytes_not_utf8(client):
    text = np.array([b"\xff\xfe"], dtype=object)
    with expect_error(INVALID, "input 'text'", "not UTF-8"):
        client.infer("strings", [infer_input("text", text, "BYTES")])


def test_unknown_output(client):
    with expect_error(INVALID, "no output 'nope'", "outputs are: y"):
        client.infer("scale", [infer_input("x", np.zeros(4, np.float32), "FP32")],
                     outputs=[tc.InferRequestedOutput("nope")])


def test_unknown_model(client):
    with expect_error(grpc.StatusCode.NOT_FOUND, "no model 'nope'", "mlp"):
        client.infer("nope", [infer_input("x", np.zeros(4, np.float32), "FP32")])


def test_version_not_loaded(client):
    with expect_error(grpc.StatusCode.NOT_FOUND, "no version '7'", "ready versions: 1, 2"):
        client.infer("scale", [infer_input("x", np.zeros(4, np.float32), "FP32")], model_version="7")


def test_broken_model_unavailable(client):
    with expect_error(grpc.StatusCode.UNAVAILABLE, "model 'broken'", "failed to load"):
        client.infer("broken", [infer_input("x", np.zeros(4, np.float32), "FP32")])


def test_malformed_message(channel):
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with expect_error(INVALID, "malformed ModelInferRequest"):
        call(b"\x0a\xff\xff\xff\xff\x0f garbage")


def test_load_refused_without_explicit_control(client):
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, "--model-control-mode explicit"):
        client.load_model("mlp")


# Found by the live fuzzer (tests/fuzz/live.py): each was INTERNAL before.
@pytest.mark.parametrize("method", ["ModelMetadata", "ModelConfig", "ServerReady", "RepositoryModelLoad",
                                    "SystemSharedMemoryRegister", "/grpc.health.v1.Health/Check",
                                    "/icow.rollout.ModelRollout/GetRouting"])
def test_unparsable_request_of_any_method(channel, server, method):
    """grpcio's own parsing answered INTERNAL ("Exception deserializing request!") with a
    traceback in the log: the server takes the parsing over, on every method."""
    path = method if method.startswith("/") else f"/inference.GRPCInferenceService/{method}"
    with expect_error(INVALID, f"malformed {path.rsplit('/', 1)[-1]} request"):
        channel.unary_unary(path)(b"\x0a\xff", timeout=10)  # field 1, a length past the end
    assert "Exception deserializing" not in server.log()


def test_unparsable_request_in_a_stream(channel, server):
    """The same for a method with a request stream (reflection)."""
    call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    with expect_error(INVALID, "malformed ServerReflectionInfo request"):
        list(call(iter([b"\x0a\xff"]), timeout=10))
    assert "Exception deserializing" not in server.log()


@pytest.mark.parametrize("kind", ["raw", "typed", "BYTES"])
def test_more_dimensions_than_a_tensor_may_have(stub, kind):
    """numpy arrays have at most 64 dimensions: reshaping to more raised ValueError (INTERNAL)."""
    shape = [1] * 65
    if kind == "BYTES":
        text = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=shape)
        request = pb.ModelInferRequest(model_name="strings", inputs=[text], raw_input_contents=[b"\1\0\0\0a"])
    elif kind == "typed":
        tensor = fp32_input(shape=shape)
        tensor.contents.fp32_contents.append(1.0)
        request = scale_request(inputs=[tensor])
    else:
        request = scale_request(inputs=[fp32_input(shape=shape)], raw_input_contents=[b"\0" * 4])
    with expect_error(INVALID, "shape has 65 dimensions, more than the 64"):
        stub.ModelInfer(request)


@pytest.mark.parametrize("shape", [[2**31 - 1], [2**62, 4]])
def test_bytes_shape_far_larger_than_its_contents(stub, shape):
    """The protobuf codec made a list of 2**31 - 1 entries before reading the contents:
    gigabytes allocated and freed (a call of many seconds), or INTERNAL where that failed;
    a count past 2**63 was a TypeError (INTERNAL) in the call that splits the contents."""
    text = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=shape)
    request = pb.ModelInferRequest(model_name="strings", inputs=[text], raw_input_contents=[b"\1\0\0\0a"])
    with expect_error(INVALID, "input 'text'"):
        stub.ModelInfer(request, timeout=10)
