"""An ensemble's graph: Triton's ``ensemble_scheduling`` read from a config and checked.

Two checks, each refusing with a message that names the step. ``read_graph`` needs
the config alone: every tensor produced once (an ensemble input, or one step's
output), every step input produced, no cycle, every produced tensor used (by a step
or as an ensemble output), every ensemble output produced. ``check_models`` needs
the composing models' configs: each map names inputs and outputs the model has (all
of its inputs), and the datatypes and shapes that meet agree (-1 matches any size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._proto import model_config_pb2 as mc
from .config import ConfigError, TensorSpec, tensor_specs

PLATFORM = "ensemble"
# In the ensemble's parameters: "<model>=<label>,..." gives the version label a step of
# that model runs (model_version is a number in Triton's proto; a label is a string).
STEP_LABELS = "step_version_labels"


class Composing(Protocol):
    """What the checks read of a composing model (a Model, or a nested ensemble)."""

    name: str
    version: int
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclass(frozen=True)
class Step:
    """One step: which model runs, and which ensemble tensors it takes and gives."""

    index: int
    model: str
    version: str  # "": the composing model's own choice (model_version -1); a number; or a label
    inputs: Mapping[str, str]  # the model's input -> the ensemble tensor fed to it
    outputs: Mapping[str, str]  # the model's output -> the ensemble tensor it becomes

    def __str__(self) -> str:
        return f"step {self.index} (model '{self.model}')"


@dataclass(frozen=True)
class Graph:
    steps: tuple[Step, ...]
    # Steps in dependency order, grouped: the steps of a level need only tensors of earlier
    # levels (or the ensemble's inputs), so they may run at the same time.
    levels: tuple[tuple[Step, ...], ...]


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == PLATFORM


def read_graph(config: mc.ModelConfig) -> Graph:
    """The checked graph of an ensemble's config; ConfigError naming the step otherwise."""
    _check_tensors_declared(config)
    steps = _steps(config)
    producers = _producers(config, steps)
    inputs = {t.name for t in config.input}
    for step in steps:
        for model_input, tensor in step.inputs.items():
            if tensor not in producers:
                raise ConfigError(f"{step}: its input '{model_input}' is fed tensor '{tensor}', which neither an "
                                  "ensemble input nor any step's output_map produces")
    used = {t for s in steps for t in s.inputs.values()} | {t.name for t in config.output}
    for tensor, producer in producers.items():
        if tensor not in used:
            where = "ensemble input" if producer is None else f"output of {producer}"
            raise ConfigError(f"tensor '{tensor}' ({where}) is never used: no step takes it and it is no "
                              "ensemble output")
    for output in config.output:
        if output.name not in producers or output.name in inputs:
            raise ConfigError(f"ensemble output '{output.name}' is produced by no step's output_map")
    return Graph(tuple(steps), _levels(steps, producers))


def check_models(graph: Graph, config: mc.ModelConfig, models: Sequence[Composing]) -> None:
    """Check each step's maps against its composing model (``models[i]`` runs step i)."""
    mbs = config.max_batch_size
    known: dict[str, tuple[str, list[int], str]] = {
        s.name: (s.datatype.name, s.shape(mbs), "ensemble input") for s in tensor_specs(config.input).values()}
    for level in graph.levels:
        for step in level:
            model = models[step.index]
            _check_step(step, model, known)
            for model_output, tensor in step.outputs.items():
                spec = model.outputs[model_output]
                known[tensor] = (spec.datatype.name, spec.shape(model.max_batch_size),
                                 f"output '{model_output}' of {step}")
    for spec in tensor_specs(config.output).values():
        datatype, shape, source = known[spec.name]
        _agree(f"ensemble output '{spec.name}'", spec.datatype.name, spec.shape(mbs), source, datatype, shape)


def _check_tensors_declared(config: mc.ModelConfig) -> None:
    if not config.ensemble_scheduling.step:
        raise ConfigError("an ensemble's config needs ensemble_scheduling with at least one step")
    if not config.input or not config.output:
        raise ConfigError("an ensemble's config declares its inputs and outputs (input, output)")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            if t.data_type == mc.TYPE_INVALID or not t.dims:
                raise ConfigError(f"ensemble {kind} '{t.name}' needs data_type and dims")
            if t.HasField("reshape"):
                raise ConfigError(f"ensemble {kind} '{t.name}': reshape applies to composing models only")


def _steps(config: mc.ModelConfig) -> list[Step]:
    labels = _step_labels(config)
    steps = []
    for index, s in enumerate(config.ensemble_scheduling.step):
        if not s.model_name:
            raise ConfigError(f"step {index} names no model_name")
        if s.model_version < -1 or s.model_version == 0:
            raise ConfigError(f"step {index} (model '{s.model_name}'): model_version {s.model_version} is "
                              "neither -1 (the model's own choice) nor a version number")
        version = labels.get(s.model_name, str(s.model_version) if s.model_version > 0 else "")
        step = Step(index, s.model_name, version, dict(s.input_map), dict(s.output_map))
        if not step.inputs or not step.outputs:
            raise ConfigError(f"{step} needs an input_map and an output_map")
        steps.append(step)
    unknown = set(labels) - {s.model for s in steps}
    if unknown:
        raise ConfigError(f"parameter '{STEP_LABELS}' names model(s) no step runs: {', '.join(sorted(unknown))}")
    return steps


def _step_labels(config: mc.ModelConfig) -> dict[str, str]:
    """``step_version_labels`` as {model: label}."""
    if STEP_LABELS not in config.parameters:
        return {}
    labels = {}
    for item in filter(None, (p.strip() for p in config.parameters[STEP_LABELS].string_value.split(","))):
        model, sep, label = (p.strip() for p in item.partition("="))
        if not sep or not model or not label:
            raise ConfigError(f"parameter '{STEP_LABELS}': {item!r} is not <model>=<label>")
        labels[model] = label
    return labels


def _producers(config: mc.ModelConfig, steps: list[Step]) -> dict[str, Step | None]:
    """Each tensor and the step that produces it (None: an ensemble input); a tensor made twice is refused."""
    producers: dict[str, Step | None] = {t.name: None for t in config.input}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in producers:
                first = producers[tensor]
                raise ConfigError(f"{step}: tensor '{tensor}' is produced twice (it is also "
                                  f"{'an ensemble input' if first is None else 'an output of ' + str(first)})")
            producers[tensor] = step
    return producers


def _levels(steps: list[Step], producers: dict[str, Step | None]) -> tuple[tuple[Step, ...], ...]:
    """Steps grouped by dependency depth; a cycle is refused, naming its steps."""
    depth: dict[int, int] = {}
    remaining = list(steps)
    while remaining:
        placed = []
        for step in remaining:
            before = [producers[t] for t in step.inputs.values()]
            if all(p is None or p.index in depth for p in before):
                placed.append((step, 1 + max((depth[p.index] for p in before if p is not None), default=-1)))
        if not placed:
            raise ConfigError(f"the steps form a cycle: {', '.join(map(str, remaining))} each wait for another")
        for step, level in placed:
            depth[step.index] = level
        remaining = [s for s in remaining if s.index not in depth]
    return tuple(tuple(s for s in steps if depth[s.index] == d) for d in range(max(depth.values()) + 1))


def _check_step(step: Step, model: Composing, known: dict[str, tuple[str, list[int], str]]) -> None:
    for model_input, tensor in step.inputs.items():
        spec = model.inputs.get(model_input)
        if spec is None:
            raise ConfigError(f"{step}: input_map names input '{model_input}', which model '{model.name}' does not "
                              f"have; its inputs are: {', '.join(model.inputs)}")
        datatype, shape, source = known[tensor]
        _agree(f"{step}: input '{model_input}'", spec.datatype.name, spec.shape(model.max_batch_size),
               f"tensor '{tensor}' ({source})", datatype, shape)
    missing = [n for n in model.inputs if n not in step.inputs]
    if missing:
        raise ConfigError(f"{step}: input_map leaves out input(s) {', '.join(missing)} of model '{model.name}'")
    for model_output in step.outputs:
        if model_output not in model.outputs:
            raise ConfigError(f"{step}: output_map names output '{model_output}', which model '{model.name}' does "
                              f"not have; its outputs are: {', '.join(model.outputs)}")


def _agree(what: str, datatype: str, shape: list[int], source: str, got_type: str, got_shape: list[int]) -> None:
    """Refuse tensors that cannot meet: another datatype, rank, or a fixed size that differs."""
    if datatype != got_type:
        raise ConfigError(f"{what} is {datatype} but {source} is {got_type}")
    if len(shape) != len(got_shape) or any(a != b and -1 not in (a, b) for a, b in zip(shape, got_shape)):
        raise ConfigError(f"{what} has shape {shape} but {source} has shape {got_shape} (-1: any size, "
                          "with the batch dimension where max_batch_size > 0)")
