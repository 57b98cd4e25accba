"""lIteCOW's ICOW service, served on the v2 port: the real litecow 0.1.0 client from
PyPI (in its own virtualenv) and a client generated from proto/litecow.proto
(for DictionaryArray), every output compared with in-process ONNX Runtime."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime.datasets
import pytest
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2
from onnx import TensorProto, helper

import make_models
from conftest import ROOT, start_server
from helpers import expect_error, infer_input, reference
from icow._proto import litecow_pb2 as ours
from icow.protocol.errors import InferenceServerError
from icow.repository.object_store import StoreLocation
from icow.services.litecow import ACCEPT_METADATA, DICTIONARY_ARRAY, model_name
from litecow_client import call

NOT_FOUND, INVALID = "NOT_FOUND", "INVALID_ARGUMENT"


# -- models ------------------------------------------------------------------------

def _model(nodes, inputs, outputs, opsets=(("", 17),)) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "t", inputs, outputs),
                              opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def difference() -> onnx.ModelProto:
    """diff = a - b: which input is which matters."""
    return _model([helper.make_node("Sub", ["a", "b"], ["diff"])],
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("a", "b")],
                  [helper.make_tensor_value_info("diff", TensorProto.FLOAT, [3])])


def odd_outputs() -> onnx.ModelProto:
    """One FP32 output lIteCOW can carry, one BOOL and one FP16 output it cannot."""
    return _model([helper.make_node("Add", ["x", "x"], ["double"]),
                   helper.make_node("Cast", ["x"], ["flag"], to=TensorProto.BOOL),
                   helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                  [helper.make_tensor_value_info("double", TensorProto.FLOAT, ["n"]),
                   helper.make_tensor_value_info("flag", TensorProto.BOOL, ["n"]),
                   helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["n"])])


def string_zipmap() -> onnx.ModelProto:
    """A classifier's tail: class scores [n, 3] to a sequence of maps keyed by label
    (ZipMap with string labels), and the best class index."""
    return _model([helper.make_node("ZipMap", ["scores"], ["by_label"], domain="ai.onnx.ml",
                                    classlabels_strings=["cat", "dog", "eel"]),
                   helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=0)],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])],
                  [helper.make_value_info("by_label", helper.make_sequence_type_proto(helper.make_map_type_proto(
                      TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))),
                   helper.make_tensor_value_info("best", TensorProto.INT64, ["n"])],
                  opsets=(("", 17), ("ai.onnx.ml", 1)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("litecow") / "models"
    shutil.copytree(ROOT / "examples" / "models" / "scale", repo / "scale")
    shutil.copytree(ROOT / "examples" / "models" / "mlp", repo / "mlp")
    for datatype in ("FP32", "FP64", "INT32", "INT64"):
        make_models.write(make_models.identity(datatype), repo, f"identity_{datatype}")
    make_models.write(difference(), repo, "difference")
    make_models.write(odd_outputs(), repo, "odd_outputs")
    make_models.write(string_zipmap(), repo, "string_zipmap")
    iris = repo / "logreg_iris" / "1" / "model.onnx"
    iris.parent.mkdir(parents=True)
    shutil.copyfile(onnxruntime.datasets.get_example("logreg_iris.onnx"), iris)
    return repo


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


def model_path(repo: Path, name: str, version: int = 1) -> Path:
    return repo / name / str(version) / "model.onnx"


# -- the wire format ------------------------------------------------------------------

def _descriptor_of_litecow_010(litecow_python: Path) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto inside litecow 0.1.0's generated litecow_pb2.py: read
    as data (that module itself needs protobuf 3.20)."""
    where = subprocess.run([str(litecow_python), "-c", "import litecow, os; print(os.path.dirname(litecow.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    tree = ast.parse((Path(where) / "common" / "litecow_pb2.py").read_text())
    serialized = next(k.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                      for k in node.keywords if k.arg == "serialized_pb")
    return descriptor_pb2.FileDescriptorProto.FromString(serialized)


def test_proto_is_wire_compatible_with_litecow_010(litecow_python):
    """Every message and field of litecow 0.1.0 is in ours with the same number, type
    and label; the service and its method path are the same; ours adds only
    DictionaryArray's messages and Array's field 6."""
    theirs = _descriptor_of_litecow_010(litecow_python)
    mine = descriptor_pb2.FileDescriptorProto()
    ours.DESCRIPTOR.CopyToProto(mine)
    assert theirs.package == mine.package == ""

    def fields(message):
        return {f.name: (f.number, f.type, f.label, f.type_name, f.oneof_index if f.HasField("oneof_index") else None)
                for f in message.field}

    my_messages = {m.name: m for m in mine.message_type}
    for message in theirs.message_type:
        my_fields = fields(my_messages[message.name])
        for name, spec in fields(message).items():
            assert my_fields.pop(name) == spec, f"{message.name}.{name}"
        assert my_fields == ({"dict_array": (6, 11, 1, ".DictionaryArray", 0)} if message.name == "Array"
                             else {}), message.name
        assert [n.name for n in message.nested_type] == [n.name for n in my_messages[message.name].nested_type]
    assert set(my_messages) - {m.name for m in theirs.message_type} == set(LATER_MESSAGES)
    assert [(s.name, [(m.name, m.input_type, m.output_type) for m in s.method]) for s in theirs.service] == \
        [(s.name, [(m.name, m.input_type, m.output_type) for m in s.method]) for s in mine.service] == \
        [("ICOW", [("get_inference", ".InferenceRequest", ".NamedArrays")])]


# lIteCOW's later protocol (its repository's main branch): DictionaryArray as field 6
# of Array, and the messages under it: (field name, number, type, type name, oneof).
LATER_MESSAGES = {
    "DictionaryArray": {("values", 1, "TYPE_MESSAGE", ".Dictionary", None)},
    "Dictionary": {("pairs", 1, "TYPE_MESSAGE", ".Pair", None)},
    "Pair": {("key", 1, "TYPE_MESSAGE", ".Key", None), ("value", 2, "TYPE_MESSAGE", ".Value", None)},
    "Key": {("str", 1, "TYPE_STRING", "", "key"), ("int", 2, "TYPE_INT32", "", "key"),
            ("float", 3, "TYPE_FLOAT", "", "key")},
    "Value": {("str", 1, "TYPE_STRING", "", "val"), ("int", 2, "TYPE_INT32", "", "val"),
              ("float", 3, "TYPE_FLOAT", "", "val")},
}


def test_dictionary_messages_are_lItecows_later_ones():
    for name, expected in LATER_MESSAGES.items():
        message = ours.DESCRIPTOR.message_types_by_name[name]
        got = {(f.name, f.number, descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
                f".{f.message_type.full_name}" if f.message_type else "",
                f.containing_oneof.name if f.containing_oneof else None) for f in message.fields}
        assert got == expected, name


# -- the litecow 0.1.0 client ------------------------------------------------------------

def test_named_inputs(server, repo, litecow):
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    (result,) = litecow(server.url, [call("s3://models/mlp", {"input": x})])
    assert list(result.outputs) == ["output"] and result.outputs["output"].dtype == np.float32
    np.testing.assert_array_equal(result.outputs["output"], reference(model_path(repo, "mlp"), {"input": x})["output"])


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_every_litecow_type_round_trips(server, litecow, dtype):
    x = (np.arange(6).reshape(2, 3) * 7 - 20).astype(dtype)
    if dtype.startswith("float"):
        x = x / 3  # fractions that need every bit of the type
    datatype = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64"}[dtype]
    (result,) = litecow(server.url, [call(f"s3://models/identity_{datatype}", {"x": x.astype(dtype)})])
    y = result.outputs["y"]
    assert y.dtype == np.dtype(dtype) and y.shape == (2, 3)
    np.testing.assert_array_equal(y, x.astype(dtype))


def test_positional_inputs_follow_the_models_input_order(server, litecow):
    a, b = np.array([5, 6, 7], np.float32), np.array([1, 2, 3], np.float32)
    x = np.arange(4, dtype=np.float32)
    list_input, single_array = litecow(server.url, [call("s3://models/difference", [a, b]),
                                                    call("s3://models/scale", x)])
    np.testing.assert_array_equal(list_input.outputs["diff"], a - b)
    np.testing.assert_array_equal(single_array.outputs["y"], x * 3)


def test_model_version_picks_the_version(server, litecow):
    x = np.arange(4, dtype=np.float32)
    one, two, newest, unknown = litecow(server.url, [
        call("s3://models/scale", {"x": x}, model_version="1"),
        call("s3://models/scale", {"x": x}, model_version="2"),
        call("s3://models/scale", {"x": x}),
        call("s3://models/scale", {"x": x}, model_version="7"),
    ])
    np.testing.assert_array_equal(one.outputs["y"], x * 2)
    np.testing.assert_array_equal(two.outputs["y"], x * 3)
    np.testing.assert_array_equal(newest.outputs["y"], x * 3)
    assert unknown.code == NOT_FOUND and "model 'scale' has no version '7'" in unknown.details
    assert "ready versions: 1, 2" in unknown.details


def test_output_filter_and_types_litecow_cannot_carry(server, litecow):
    x = np.array([0.0, 1.5, -2.0], np.float32)
    filtered, everything, unknown = litecow(server.url, [
        call("s3://models/odd_outputs", {"x": x}, outputs=["double"]),
        call("s3://models/odd_outputs", {"x": x}),
        call("s3://models/odd_outputs", {"x": x}, outputs=["triple"]),
    ])
    assert list(filtered.outputs) == ["double"]
    np.testing.assert_array_equal(filtered.outputs["double"], x * 2)
    assert everything.code == INVALID
    assert "output 'flag' of model 'odd_outputs' is BOOL" in everything.details
    assert "float32, float64, int32 and int64" in everything.details
    assert unknown.code == INVALID and "has no output 'triple'" in unknown.details


def test_errors_are_clear(server, litecow):
    x = np.arange(4, dtype=np.float32)
    results = litecow(server.url, [
        call("s3://models/nope", {"x": x}),
        call("s3://models/scale", {"x": x}, model_version="v1"),
        call("http://models/scale", {"x": x}),
        call("s3://models/scale", {"x": x.astype(np.float64)}),
        call("s3://models/scale", {"x": x[:3]}),
        call("s3://models/scale", {"wrong": x}),
        call("s3://models/difference", [x[:3]]),
        call("s3://models/", {"x": x}),
    ])
    expected = [
        (NOT_FOUND, "no model 'nope' in the repository"),
        (NOT_FOUND, "model 'scale' has no version or label 'v1'"),
        (INVALID, "is not an s3://<bucket>/<model> URL"),
        (INVALID, "input 'x': expected datatype FP32, got FP64"),
        (INVALID, "input 'x': expected shape [4], got [3]"),
        (INVALID, "model 'scale' has no input 'wrong'"),
        (INVALID, "model 'difference' takes 2 input(s) (a, b), the request has 1 positional input(s)"),
        (NOT_FOUND, "names no model"),
    ]
    for result, (code, fragment) in zip(results, expected):
        assert result.code == code and fragment in result.details, result
    (still,) = litecow(server.url, [call("s3://models/scale", {"x": x})])
    np.testing.assert_array_equal(still.outputs["y"], x * 3)


def test_malformed_request_is_invalid_argument(server):
    with grpc.insecure_channel(server.url) as channel:
        get = channel.unary_unary("/ICOW/get_inference")  # raw bytes in and out
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "malformed InferenceRequest"):
            get(b"\x0a\xff\xff\xff")  # field 1, a length that runs past the end


def test_more_dimensions_than_a_tensor_may_have(server):
    """Found by the live fuzzer: numpy's reshape to 65 dimensions raised ValueError (INTERNAL)."""
    request = ours.InferenceRequest(model_key="s3://models/scale")
    array = request.named_inputs.name_to_array["x"]
    array.shape.extend([1] * 65)
    array.float_array.values.append(1.0)
    with grpc.insecure_channel(server.url) as channel:
        get = channel.unary_unary("/ICOW/get_inference")
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'x'", "65 dimensions"):
            get(request.SerializeToString())


@pytest.mark.parametrize("shape", [[2**31, 2**31, 0], [0, 2**32 - 1, 2**32 - 1]])
def test_a_shape_numpy_cannot_make_is_refused(server, shape):
    """Found by the live fuzzer (seed 342): dims whose product passes numpy's limit, with a 0
    among them (no values needed), made reshape raise ValueError (INTERNAL)."""
    request = ours.InferenceRequest(model_key="s3://models/scale")
    request.named_inputs.name_to_array["x"].shape.extend(shape)
    request.named_inputs.name_to_array["x"].float_array.SetInParent()
    with grpc.insecure_channel(server.url) as channel:
        get = channel.unary_unary("/ICOW/get_inference")
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'x'", "shape"):
            get(request.SerializeToString())


def test_dictionary_output_is_an_error_for_the_010_client(server, repo, litecow):
    x = np.array([[5.1, 3.5], [1.4, 0.2], [6.0, 3.0]], np.float32)
    everything, label_only = litecow(server.url, [
        call("s3://models/logreg_iris", {"float_input": x}),
        call("s3://models/logreg_iris", {"float_input": x}, outputs=["label"]),
    ])
    assert everything.code == INVALID and everything.exception is None
    assert "output 'probabilities' of model 'logreg_iris' is a dictionary output" in everything.details
    assert "DictionaryArray" in everything.details and "outputs=[...]" in everything.details
    expected = reference(model_path(repo, "logreg_iris"), {"float_input": x})["label"]
    np.testing.assert_array_equal(label_only.outputs["label"], expected)


# -- DictionaryArray, with a client generated from our proto ----------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Python stubs made from proto/litecow.proto here, as any client would make them."""
    out = tmp_path_factory.mktemp("litecow_stubs")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "litecow.proto"], check=True)
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("litecow_pb2"), importlib.import_module("litecow_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def to_python(array):
    """A generated Array as numpy, or as a list of dicts for a DictionaryArray."""
    field = array.WhichOneof("array")
    if field != "dict_array":
        dtype = {"float_array": np.float32, "double_array": np.float64, "int32_array": np.int32,
                 "int64_array": np.int64}[field]
        return np.array(getattr(array, field).values, dtype=dtype).reshape(list(array.shape))
    return [{getattr(p.key, p.key.WhichOneof("key")): getattr(p.value, p.value.WhichOneof("val")) for p in d.pairs}
            for d in array.dict_array.values]


def infer(server, generated, model_key, inputs, outputs=(), accept=True):
    pb, pb_grpc = generated
    request = pb.InferenceRequest(model_key=model_key, outputs=list(outputs), named_inputs=pb.NamedArrays(
        name_to_array={n: pb.Array(shape=a.shape, float_array=pb.FloatArray(values=a.ravel()))
                       for n, a in inputs.items()}))
    with grpc.insecure_channel(server.url) as channel:
        response = pb_grpc.ICOWStub(channel).get_inference(
            request, metadata=[(ACCEPT_METADATA, DICTIONARY_ARRAY)] if accept else [])
    return {name: to_python(array) for name, array in response.name_to_array.items()}, response


def test_zipmap_with_int64_keys(server, repo, generated):
    x = np.array([[5.1, 3.5], [1.4, 0.2], [6.0, 3.0]], np.float32)
    outputs, response = infer(server, generated, "s3://models/logreg_iris.onnx", {"float_input": x})
    expected = reference(model_path(repo, "logreg_iris"), {"float_input": x})
    np.testing.assert_array_equal(outputs["label"], expected["label"])
    assert list(response.name_to_array["probabilities"].shape) == [3]
    assert response.name_to_array["probabilities"].dict_array.values[0].pairs[0].key.WhichOneof("key") == "int"
    assert [list(d) for d in outputs["probabilities"]] == [list(d) for d in expected["probabilities"]]
    for got, want in zip(outputs["probabilities"], expected["probabilities"]):
        assert got == {k: float(np.float32(v)) for k, v in want.items()}  # lIteCOW's Value is a float


def test_zipmap_with_string_keys_and_the_filter(server, repo, generated):
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    outputs, _ = infer(server, generated, "s3://models/string_zipmap", {"scores": scores}, outputs=["by_label"])
    assert list(outputs) == ["by_label"]
    expected = reference(model_path(repo, "string_zipmap"), {"scores": scores})["by_label"]
    assert [list(d) for d in outputs["by_label"]] == [["cat", "dog", "eel"]] * 2
    assert [{k: float(v) for k, v in d.items()} for d in outputs["by_label"]] == \
        [{k: float(np.float32(v)) for k, v in d.items()} for d in expected]


def test_dictionary_output_needs_the_metadata(server, generated):
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "output 'by_label'", ACCEPT_METADATA):
        infer(server, generated, "s3://models/string_zipmap", {"scores": np.zeros((1, 3), np.float32)},
              accept=False)


def test_v2_serves_the_tensor_outputs_only(server):
    client = tc.InferenceServerClient(server.url)
    meta = client.get_model_metadata("logreg_iris")
    assert [t.name for t in meta.outputs] == ["label"]
    x = infer_input("float_input", np.zeros((3, 2), np.float32), "FP32")
    assert client.infer("logreg_iris", [x]).as_numpy("label").shape == (3,)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "output 'probabilities'",
                      "seq(map(int64,tensor(float)))", "cannot carry"):
        client.infer("logreg_iris", [x], outputs=[tc.InferRequestedOutput("probabilities")])


# -- model_key ---------------------------------------------------------------------------

@pytest.mark.parametrize("key, store, name", [
    ("s3://models/tinyyolov2", None, "tinyyolov2"),
    ("s3://any-bucket/facenet.onnx", None, "facenet"),
    ("mlp", None, "mlp"),
    ("s3://models/mlp", StoreLocation("models"), "mlp"),
    ("s3://models/team/mlp.onnx", StoreLocation("models", "team"), "mlp"),
    ("s3://models/mlp", StoreLocation("models", "team"), "mlp"),
])
def test_model_key_names_a_model(key, store, name):
    assert model_name(key, store) == name


@pytest.mark.parametrize("key, store, code, fragment", [
    ("s3://other/mlp", StoreLocation("models", "team"), grpc.StatusCode.NOT_FOUND,
     "names bucket 'other', but this server's repository is s3://models/team"),
    ("s3://models/a/b", None, grpc.StatusCode.NOT_FOUND, "names no model"),
    ("gs://models/mlp", None, grpc.StatusCode.INVALID_ARGUMENT, "not an s3://"),
    ("s3://[models/mlp", None, grpc.StatusCode.INVALID_ARGUMENT, "not an s3://"),  # the live fuzzer's find
])
def test_model_key_errors(key, store, code, fragment):
    with pytest.raises(InferenceServerError) as error:
        model_name(key, store)
    assert error.value.code == code and fragment in error.value.message
