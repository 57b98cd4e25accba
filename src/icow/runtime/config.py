"""Model configuration: Triton's config.pbtxt, completed from the ONNX graph.

A config file may give everything, part of it, or be absent. What it leaves
out comes from the model: tensor names, datatypes and dims (-1 for dynamic),
and, when every input and output starts with a dynamic dimension and the file
says nothing about batching, a batch dimension of ``default_max_batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from .._proto import model_config_pb2 as mc
from ..protocol.datatypes import BY_CONFIG, BY_ORT, Datatype

CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DEFAULT_MODEL_FILENAME = "model.onnx"


class ConfigError(ValueError):
    """The config file cannot be read, or does not fit the model."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as a request sees it."""

    name: str
    datatype: Datatype
    dims: tuple[int, ...]  # without the batch dimension; -1: any size
    reshape: tuple[int, ...] | None  # the model's own dims, when they differ

    def shape(self, max_batch_size: int) -> list[int]:
        """The full shape with the batch dimension, as metadata reports it."""
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)


def read_config(model_dir: Path) -> mc.ModelConfig:
    """The parsed config.pbtxt of ``model_dir`` (empty when there is none)."""
    path = model_dir / CONFIG_FILE
    config = mc.ModelConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as e:
            raise ConfigError(f"{path}: {e}") from None
    return config


def complete_config(config: mc.ModelConfig, name: str, session, default_max_batch_size: int) -> mc.ModelConfig:
    """A copy of ``config`` filled in and checked against the ONNX Runtime ``session``."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    if out.name and out.name != name:
        raise ConfigError(f"config names the model {out.name!r} but its directory is {name!r}")
    out.name = name
    if out.platform not in ("", PLATFORM) or out.backend not in ("", BACKEND):
        raise ConfigError(f"icow serves ONNX models only (platform {PLATFORM!r} / backend {BACKEND!r}), "
                          f"the config asks for {out.platform or out.backend!r}")
    out.platform, out.backend = PLATFORM, BACKEND
    model_inputs = _graph_tensors(session.get_inputs())
    # Non-tensor outputs (ZipMap's sequence of maps) are left out: the Open Inference
    # Protocol cannot carry them. The model keeps them (Model.non_tensor_outputs).
    model_outputs = _graph_tensors([o for o in session.get_outputs() if is_tensor_type(o.type)])
    if not out.HasField("max_batch_size") and not out.input and not out.output:
        if _all_batched(model_inputs) and _all_batched(model_outputs):
            out.max_batch_size = default_max_batch_size
    out.max_batch_size = out.max_batch_size  # present from here on, 0 or not
    _complete_tensors(out.input, model_inputs, out.max_batch_size, "input")
    _complete_tensors(out.output, model_outputs, out.max_batch_size, "output")
    return out


def tensor_specs(tensors) -> dict[str, TensorSpec]:
    """TensorSpecs of a completed config's input or output list, in order."""
    return {
        t.name: TensorSpec(
            t.name,
            BY_CONFIG[mc.DataType.Name(t.data_type)],
            tuple(t.dims),
            tuple(t.reshape.shape) if t.HasField("reshape") else None,
        )
        for t in tensors
    }


def is_tensor_type(ort_type: str) -> bool:
    """Whether an ONNX Runtime type string (``tensor(float)``, ``seq(map(...))``) is a tensor."""
    return ort_type.startswith("tensor(")


def _graph_tensors(args) -> dict[str, tuple[Datatype, list[int]]]:
    tensors = {}
    for arg in args:
        if arg.type not in BY_ORT:
            raise ConfigError(f"tensor {arg.name!r} has type {arg.type}, which the protocol cannot carry")
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
        tensors[arg.name] = (BY_ORT[arg.type], shape)
    return tensors


def _all_batched(tensors: dict[str, tuple[Datatype, list[int]]]) -> bool:
    return bool(tensors) and all(shape and shape[0] == -1 for _, shape in tensors.values())


def _complete_tensors(declared, graph: dict[str, tuple[Datatype, list[int]]], max_batch_size: int,
                      kind: str) -> None:
    """Fill ``declared`` (a repeated ModelInput/ModelOutput) from the graph, or check it."""
    if not declared:
        for name, (datatype, shape) in graph.items():
            declared.add(name=name, data_type=mc.DataType.Value(datatype.config),
                         dims=shape[1:] if max_batch_size > 0 else shape)
        return
    for tensor in declared:
        if tensor.name not in graph:
            raise ConfigError(f"config {kind} {tensor.name!r} is not in the model; "
                              f"the model's {kind}s are: {', '.join(graph)}")
        datatype, shape = graph[tensor.name]
        if tensor.data_type == mc.TYPE_INVALID:
            tensor.data_type = mc.DataType.Value(datatype.config)
        elif mc.DataType.Name(tensor.data_type) != datatype.config:
            raise ConfigError(f"config {kind} {tensor.name!r} is {mc.DataType.Name(tensor.data_type)} "
                              f"but the model has {datatype.config}")
        model_dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        rank = len(model_dims) + (1 if max_batch_size > 0 else 0)
        if shape and rank != len(shape):
            raise ConfigError(f"config {kind} {tensor.name!r} has rank {rank} (with batch dimension) "
                              f"but the model's is {len(shape)}: {shape}")
    if kind == "input":
        missing = [n for n in graph if n not in {t.name for t in declared}]
        if missing:
            raise ConfigError(f"config leaves out the model's inputs: {', '.join(missing)}")
