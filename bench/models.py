"""The model repository the benchmark serves, built from code with fixed weights:

- ``identity``: y = x on FP32 [rows, cols], both dims dynamic, ``max_batch_size: 0``,
  so the same model takes 1×16 and 12 MiB. The server's cost with no compute.
- ``mlp256``: 256→1024→1024→16 perceptron (ReLU between), first dim dynamic:
  enough compute (≈ 1.3 M multiply-adds per row) for transport and compute to overlap.
- ``mlp1024`` and ``mlp1024_batched``: one 1024→4096→4096→1024 perceptron file
  (≈ 25 M multiply-adds and 100 MB of weights per row), served without and with
  dynamic batching, for issue 3's batching comparison (``mlp1024-*`` workloads).
- ``convnet`` and ``convnet_batched``: a small ResNet-like network on 3×64×64 images
  (a stem convolution, three residual blocks, global pooling, a 10-way classifier),
  without and with dynamic batching: the GPU comparison of issue 7.
- ``mlp``: the example model (16→32→4), copied, for the optional ``mlp-*`` workloads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from examples import make_models
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent

MLP256_LAYERS = (256, 1024, 1024, 16)
MLP1024_LAYERS = (1024, 4096, 4096, 1024)
CONVNET_INPUT = (3, 64, 64)  # one image, channels first
CONVNET_CLASSES = 10

# max_batch_size 0 and dynamic dims: any [rows, cols] is one "sample", so a 12 MiB
# tensor needs no --default-max-batch-size trick.
IDENTITY_CONFIG = (
    'name: "identity"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
    'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
    'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
)
MLP256_CONFIG = (
    'name: "mlp256"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
    f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {MLP256_LAYERS[0]} ] }} ]\n'
    f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1, {MLP256_LAYERS[-1]} ] }} ]\n'
)

# The same file twice: batch dimension 16, and with dynamic batching or without.
MLP1024_CONFIG = (
    'backend: "onnxruntime"\nmax_batch_size: 16\n'
    f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {MLP1024_LAYERS[0]} ] }} ]\n'
    f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {MLP1024_LAYERS[-1]} ] }} ]\n'
)
BATCHING_CONFIG = "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"
CONVNET_CONFIG = (
    'backend: "onnxruntime"\nmax_batch_size: 16\n'
    f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {", ".join(map(str, CONVNET_INPUT))} ] }} ]\n'
    f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {CONVNET_CLASSES} ] }} ]\n'
)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, producer_name="icow-bench",
                              opset_imports=[helper.make_opsetid("", make_models.OPSET)])
    model.ir_version = make_models.IR_VERSION
    onnx.checker.check_model(model)
    return model


def identity() -> onnx.ModelProto:
    """y = x on FP32 [rows, cols]. The output's dims are the input's symbols, so
    icow knows the output shape before the run and binds it into the response."""
    return _finish(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", "cols"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
    ))


def perceptron(layers: tuple[int, ...], name: str) -> onnx.ModelProto:
    """Dense layers (MatMul + Add) with ReLU between them; weights fixed by seed
    and scaled by 1/sqrt(fan-in) so activations stay near 1 through the layers."""
    rng = np.random.default_rng(256)
    nodes, weights, x = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(layers, layers[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 2
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            x = f"h{i}"
    return _finish(helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", layers[-1]])],
        initializer=weights,
    ))


def convnet(width: int = 32, blocks: int = 3) -> onnx.ModelProto:
    """A ResNet-like classifier: conv(3→width) + ReLU, ``blocks`` residual blocks of two
    3×3 convolutions, global average pooling, a dense layer to CONVNET_CLASSES.
    He-initialised by seed, so that activations neither vanish nor explode."""
    rng = np.random.default_rng(3)
    weights: list = []

    def conv(x: str, out: str, c_in: int, nodes: list) -> str:
        name = f"w{len(weights)}"
        w = rng.standard_normal((width, c_in, 3, 3)) * np.sqrt(2 / (c_in * 9))
        weights.append(numpy_helper.from_array(w.astype(np.float32), name))
        nodes.append(helper.make_node("Conv", [x, name], [out], pads=[1, 1, 1, 1]))
        return out

    nodes: list = []
    x = conv("x", "stem", CONVNET_INPUT[0], nodes)
    nodes.append(helper.make_node("Relu", [x], ["h0"]))
    x = "h0"
    for i in range(blocks):
        conv(x, f"b{i}c1", width, nodes)
        nodes.append(helper.make_node("Relu", [f"b{i}c1"], [f"b{i}r1"]))
        conv(f"b{i}r1", f"b{i}c2", width, nodes)
        nodes += [helper.make_node("Add", [f"b{i}c2", x], [f"b{i}s"]),
                  helper.make_node("Relu", [f"b{i}s"], [f"h{i + 1}"])]
        x = f"h{i + 1}"
    w = (rng.standard_normal((width, CONVNET_CLASSES)) / np.sqrt(width)).astype(np.float32)
    weights.append(numpy_helper.from_array(w, "dense"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("MatMul", ["flat", "dense"], ["y"])]
    return _finish(helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *CONVNET_INPUT])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CONVNET_CLASSES])],
        initializer=weights,
    ))


def _twice(dest: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    """``name`` with ``config``, and ``name``_batched: the same file, dynamic batching on."""
    path = make_models.write(model, dest, name)
    (dest / name / "config.pbtxt").write_text(config)
    (dest / f"{name}_batched" / "1").mkdir(parents=True)
    (dest / f"{name}_batched" / "1" / "model.onnx").symlink_to(path)
    (dest / f"{name}_batched" / "config.pbtxt").write_text(config + BATCHING_CONFIG)


def build_repository(dest: Path) -> Path:
    """``dest`` with ``identity``, ``mlp256``, ``mlp1024``, ``convnet`` and the last two's
    ``_batched`` twins (each with its config.pbtxt), and the example ``mlp``."""
    shutil.copytree(ROOT / "examples" / "models" / "mlp", dest / "mlp")
    for name, model, config in (("identity", identity(), IDENTITY_CONFIG),
                                ("mlp256", perceptron(MLP256_LAYERS, "mlp256"), MLP256_CONFIG)):
        make_models.write(model, dest, name)
        (dest / name / "config.pbtxt").write_text(config)
    _twice(dest, "mlp1024", perceptron(MLP1024_LAYERS, "mlp1024"), MLP1024_CONFIG)
    _twice(dest, "convnet", convnet(), CONVNET_CONFIG)
    return dest
