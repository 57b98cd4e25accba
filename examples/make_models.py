"""Build the example model repository (examples/models) and the test models.

Every model is written from code with fixed weights, so running this again
gives the same files byte for byte (a test checks that the checked-in
repository is what this script makes). Needs the ``onnx`` package.

    python examples/make_models.py [DEST]      # default: examples/models
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # what onnxruntime 1.17+ accepts

# Every tensor type the Open Inference Protocol and onnxruntime's Python API share.
ALL_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
# Protocol types numpy has no dtype for: onnxruntime's Python API runs them only
# through OrtValues or IOBinding (icow carries their bits; see protocol/datatypes.py).
BITS_TYPES: dict[str, int] = {"BF16": TensorProto.BFLOAT16}


def _model(nodes, inputs, outputs, initializers=(), name="icow") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, producer_name="icow", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def scale(factor: float) -> onnx.ModelProto:
    """y = x * factor on a fixed-size FP32 vector; versions differ by factor."""
    k = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
    return _model(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [k],
    )


def mlp(features: int = 16, hidden: int = 32, classes: int = 4) -> onnx.ModelProto:
    """A two-layer perceptron with a dynamic batch dimension."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["output"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        weights,
    )


def mixed() -> onnx.ModelProto:
    """Several inputs and outputs of different types, batch dimension dynamic."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    nodes = [
        helper.make_node("Cast", ["b"], ["b_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "b_f"], ["sum"]),
        helper.make_node("Add", ["b", "one"], ["b_next"]),
        helper.make_node("Not", ["c"], ["c_not"]),
        helper.make_node("Cast", ["a"], ["a_half"], to=TensorProto.FLOAT16),
    ]
    shape = ["batch", 4]
    return _model(
        nodes,
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("b", TensorProto.INT64, shape),
         helper.make_tensor_value_info("c", TensorProto.BOOL, shape)],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("b_next", TensorProto.INT64, shape),
         helper.make_tensor_value_info("c_not", TensorProto.BOOL, shape),
         helper.make_tensor_value_info("a_half", TensorProto.FLOAT16, shape)],
        [one],
    )


def strings() -> onnx.ModelProto:
    """Upper-cases a vector of strings (a BYTES tensor in the protocol)."""
    node = helper.make_node("StringNormalizer", ["text"], ["upper"], case_change_action="UPPER",
                                locale="C")  # present on every machine; en_US may not be
    return _model(
        [node],
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("upper", TensorProto.STRING, ["n"])],
    )


def identity(datatype: str) -> onnx.ModelProto:
    """x -> y of one type from ALL_TYPES or BITS_TYPES, shape [-1, 3]."""
    elem = {**ALL_TYPES, **BITS_TYPES}[datatype]
    return _model([helper.make_node("Identity", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", elem, ["batch", 3])],
                  [helper.make_tensor_value_info("y", elem, ["batch", 3])])


def identity_all_types() -> onnx.ModelProto:
    """in_<TYPE> -> out_<TYPE> for every type in ALL_TYPES, shape [-1, 3]."""
    nodes, inputs, outputs = [], [], []
    for name, elem in ALL_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", 3]))
    return _model(nodes, inputs, outputs)


def elementwise(op: str, constant: float, width: int = 4) -> onnx.ModelProto:
    """y = op(x, constant) (``op``: Add, Mul, ...) on FP32 rows of ``width``, batch dimension
    dynamic: a step of the ensemble tests."""
    k = numpy_helper.from_array(np.array(constant, dtype=np.float32), "k")
    return _model([helper.make_node(op, ["x", "k"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], [k])


def add(width: int = 4) -> onnx.ModelProto:
    """sum = a + b on FP32 rows of ``width``, batch dimension dynamic: two steps joined."""
    return _model([helper.make_node("Add", ["a", "b"], ["sum"])],
                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("a", "b")],
                  [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", width])])


def regroup(columns: int = 3, width: int = 4) -> onnx.ModelProto:
    """y = x reshaped to rows of ``columns``: fails at run time unless the batch's
    ``width`` * rows divide by ``columns`` (a step that fails, in the ensemble tests)."""
    shape = numpy_helper.from_array(np.array([-1, columns], dtype=np.int64), "shape")
    return _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", columns])], [shape])


CONFIGS = {
    "scale": 'name: "scale"\nplatform: "onnxruntime_onnx"\nversion_policy: { all: {} }\n',
    "strings": (
        'name: "strings"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        'input [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
        'output [ { name: "upper" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
    ),
}


def write(model: onnx.ModelProto, repo: Path, name: str, version: int = 1) -> Path:
    """Save ``model`` as ``repo/name/version/model.onnx``."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def build_examples(repo: Path) -> None:
    """Write the bundled example repository into ``repo``."""
    write(scale(2.0), repo, "scale", 1)
    write(scale(3.0), repo, "scale", 2)
    write(mlp(), repo, "mlp")
    write(mixed(), repo, "mixed")
    write(strings(), repo, "strings")
    for name, text in CONFIGS.items():
        (repo / name / "config.pbtxt").write_text(text)


if __name__ == "__main__":
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "models"
    build_examples(dest)
    print(f"wrote example models to {dest}")
