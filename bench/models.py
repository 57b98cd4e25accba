"""The model repository the benchmark serves: the example ``mlp`` and a
one-input Identity model for the large-tensor transfer."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from examples import make_models
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent

IDENTITY_WIDTH = 1024

# max_batch_size 0 and a dynamic first dim: any number of rows is one "sample",
# so a 16 MiB tensor needs no --default-max-batch-size trick.
IDENTITY_CONFIG = (
    'name: "identity"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
    f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {IDENTITY_WIDTH} ] }} ]\n'
    f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1, {IDENTITY_WIDTH} ] }} ]\n'
)


def identity(width: int = IDENTITY_WIDTH) -> onnx.ModelProto:
    """y = x on FP32 [rows, width]: the server's cost with (almost) no compute."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", width])],
    )
    model = helper.make_model(graph, producer_name="icow-bench",
                              opset_imports=[helper.make_opsetid("", make_models.OPSET)])
    model.ir_version = make_models.IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_repository(dest: Path) -> Path:
    """``dest`` with the example mlp (the same file, copied) and the identity model."""
    shutil.copytree(ROOT / "examples" / "models" / "mlp", dest / "mlp")
    make_models.write(identity(), dest, "identity")
    (dest / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    return dest
