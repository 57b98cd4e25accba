"""An ensemble (Triton's ``platform: "ensemble"``): one served model whose request runs
a graph of steps on other models (ensemble_graph.py reads and checks the graph).

A step is a request to its composing model through that model's own ``run``: its
queue, dynamic batching (with direct requests) and statistics apply. Tensors pass
from step to step as the arrays ONNX Runtime returned, never encoded: a step's
input is the producing step's output object itself. Steps of one level of the graph
run at the same time (all but the first on a shared pool). The deadline and the
call's liveness are checked before each level and passed to every step, so a passed
deadline or a cancelled call stops the steps not yet started.

The composing models are looked up for every request (``resolve``: the repository's
rule), so an unloaded one makes the ensemble unready and a reload restores it; each
composing version is checked against the graph once, when first met.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from .._proto import model_config_pb2 as mc
from ..protocol.errors import InferenceServerError, invalid, unavailable
from ..protocol.names import shorten
from . import config as cfg
from .ensemble_graph import Composing, ConfigError, Graph, Step, check_models
from .model import OutputSpec, ResponseSlots, check_input, check_input_names, copy_into
from .stats import VersionStats

# (model name, version or label or "") -> the ready composing model; raises InferenceServerError.
Resolve = Callable[[str, str], Composing]
Timings = list[tuple[int, int, int, int]]  # per step: queue, compute input, infer, output ns
_Call = tuple[int | None, Callable[[], bool] | None, Mapping[str, Any] | None]  # deadline_ns, alive, parameters

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> ThreadPoolExecutor:
    """Threads for the steps of a level beyond its first (which runs on the caller's thread)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="icow-ensemble")
        return _pool


class Ensemble:
    """A ready ensemble version; served like a Model (run, run_into, config, stats)."""

    def __init__(self, name: str, version: int, config: mc.ModelConfig, graph: Graph, resolve: Resolve) -> None:
        self.name = name
        self.version = version
        self.config = mc.ModelConfig()
        self.config.CopyFrom(config)
        self.config.name = name
        self.config.max_batch_size = config.max_batch_size  # present, 0 or not
        self.graph = graph
        self.max_batch_size = self.config.max_batch_size
        self.inputs = cfg.tensor_specs(self.config.input)
        self.outputs = cfg.tensor_specs(self.config.output)
        self.non_tensor_outputs: dict[str, str] = {}
        self.cache = None  # ensembles keep no answers (their composing models may)
        self.instances: list = []
        self.stats = VersionStats()
        self._resolve = resolve
        self._checked: weakref.WeakSet = weakref.WeakSet()  # composing versions found to fit the graph

    def close(self) -> None:
        """Nothing of its own to release: the composing models are the repository's."""

    # -- the composing models ------------------------------------------------
    def composing(self) -> list[Composing]:
        """The model each step runs now; UNAVAILABLE naming the step when one is not ready
        or no longer fits the graph (a reload changed its config)."""
        models = []
        for step in self.graph.steps:
            try:
                models.append(self._resolve(step.model, step.version))
            except InferenceServerError as e:
                raise unavailable(f"ensemble '{self.name}' is not ready: {step}: {e.message}") from None
        new = [m for m in models if m not in self._checked]
        if new:
            try:
                check_models(self.graph, self.config, models)
            except ConfigError as e:
                raise unavailable(f"ensemble '{self.name}' is not ready: {e}") from None
            self._checked.update(new)
        return models

    # -- requests ------------------------------------------------------------
    def output_names(self, requested: Sequence[str] = (), *, non_tensor: bool = False) -> list[str]:
        if not requested:
            return list(self.outputs)
        for name in requested:
            if name not in self.outputs:
                raise invalid(f"model '{self.name}' has no output '{shorten(name)}'; "
                              f"its outputs are: {', '.join(self.outputs)}")
        if len(set(requested)) != len(requested):
            raise invalid(f"output requested twice: {', '.join(requested)}")
        return list(requested)

    def run(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = (), *, non_tensor: bool = False,
            deadline_ns: int | None = None, alive: Callable[[], bool] | None = None,
            parameters: Mapping[str, Any] | None = None, timings: Timings | None = None) -> dict[str, np.ndarray]:
        """Run every step; the ``requested`` outputs (all when empty), in the order asked for.
        ``parameters`` (the request's ``priority`` and ``timeout``) go with each step's request."""
        arrived = time.monotonic_ns()
        self.stats.begin()
        steps: Timings = []
        try:
            names = self.output_names(requested)
            rows = self._check(inputs)
            models = self.composing()
            tensors: dict[str, np.ndarray] = dict(inputs)
            for level in self.graph.levels:
                _check_live(self.name, level[0], deadline_ns, alive)
                self._run_level(level, models, tensors, (deadline_ns, alive, parameters), steps)
            result = {n: tensors[n] for n in names}
        except BaseException:
            self.stats.record_failure(time.monotonic_ns() - arrived)
            raise
        queue, input_ns, infer_ns, output_ns = (sum(t[i] for t in steps) for i in range(4))
        self.stats.record_request(rows or 1, time.monotonic_ns() - arrived, queue, input_ns, infer_ns, output_ns)
        if timings is not None:
            timings.append((queue, input_ns, infer_ns, output_ns))
        return result

    def run_into(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str],
                 allocate: Callable[[list[OutputSpec]], ResponseSlots], *, deadline_ns: int | None = None,
                 alive: Callable[[], bool] | None = None, parameters: Mapping[str, Any] | None = None) -> ResponseSlots:
        """As ``run``, the outputs copied once into a response from ``allocate``."""
        return copy_into(allocate, self.run(inputs, requested, deadline_ns=deadline_ns, alive=alive,
                                            parameters=parameters))

    def _check(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Check the request's inputs against the ensemble's config; its batch size (0: none)."""
        check_input_names(self.name, self.inputs, inputs)
        rows = {check_input(spec, inputs[name], self.max_batch_size, self.name)
                for name, spec in self.inputs.items()}
        if len(rows) > 1:
            raise invalid(f"the inputs of model '{self.name}' differ in batch size: {sorted(rows)}")
        return rows.pop()

    def _run_level(self, level: tuple[Step, ...], models: list[Composing], tensors: dict[str, np.ndarray],
                   call: _Call, steps: Timings) -> None:
        """Run the steps of one level, the first here and the others on the pool; all of
        them end before this returns, the first failure (in step order) is raised."""
        def one(step: Step) -> dict[str, np.ndarray]:
            return self._run_step(step, models[step.index], tensors, call, steps)

        if len(level) == 1:  # the common case (a chain): no pool, no futures
            _keep(level[0], one(level[0]), tensors)
            return
        others: list[Future] = [_shared_pool().submit(one, s) for s in level[1:]]
        outcomes: list[dict[str, np.ndarray] | BaseException] = []
        try:
            outcomes.append(one(level[0]))
        except Exception as e:
            outcomes.append(e)
        for future in others:
            error = future.exception()
            outcomes.append(error if error is not None else future.result())
        for step, outcome in zip(level, outcomes):
            if isinstance(outcome, BaseException):
                raise outcome
            _keep(step, outcome, tensors)

    def _run_step(self, step: Step, model: Composing, tensors: dict[str, np.ndarray], call: _Call,
                  steps: Timings) -> dict[str, np.ndarray]:
        feeds = {model_input: tensors[tensor] for model_input, tensor in step.inputs.items()}
        deadline_ns, alive, parameters = call
        try:
            return model.run(feeds, list(step.outputs), deadline_ns=deadline_ns, alive=alive, parameters=parameters,
                             timings=steps)
        except InferenceServerError as e:
            raise InferenceServerError(e.code, f"ensemble '{self.name}' {step} version {model.version} failed: "
                                       f"{e.message}") from None


def _keep(step: Step, outputs: dict[str, np.ndarray], tensors: dict[str, np.ndarray]) -> None:
    """A step's outputs, as the ensemble tensors its output_map names: the same arrays, no copy."""
    for model_output, tensor in step.outputs.items():
        tensors[tensor] = outputs[model_output]


def _check_live(name: str, step: Step, deadline_ns: int | None, alive: Callable[[], bool] | None) -> None:
    """Refuse to start ``step`` (and those after it) once the call is over."""
    if alive is not None and not alive():
        raise InferenceServerError(grpc.StatusCode.CANCELLED,
                                   f"the call was cancelled before {step} of ensemble '{name}' ran")
    if deadline_ns is not None and time.monotonic_ns() >= deadline_ns:
        raise InferenceServerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"the deadline passed before {step} of ensemble '{name}' ran")
