"""One loaded version of a model: its ONNX Runtime session, config and run."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
import onnxruntime as ort

from . import config as cfg
from ._proto import model_config_pb2 as mc
from ._wire import address_of
from .datatypes import from_numpy
from .errors import InferenceServerError, invalid
from .ort_binding import Binder
from .stats import VersionStats
from .tensors import to_raw

log = logging.getLogger("icow.model")

# (name, datatype, shape, byte size) of one output in a response.
OutputSpec = tuple[str, str, tuple[int, ...], int]


class ResponseSlots(Protocol):
    """A response under construction with a place for each output's bytes."""

    def address(self, index: int) -> int: ...
    def write(self, index: int, data) -> None: ...
    def mark_written(self, index: int) -> None: ...


class Model:
    """A ready model version. ``run`` and ``run_into`` are safe from many threads."""

    def __init__(self, name: str, version: int, path: Path, config: mc.ModelConfig,
                 default_max_batch_size: int) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.session = ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])
        self.config = cfg.complete_config(config, name, self.session, default_max_batch_size)
        self.max_batch_size = self.config.max_batch_size
        self.inputs = cfg.tensor_specs(self.config.input)
        self.outputs = cfg.tensor_specs(self.config.output)
        # Outputs that are not tensors (e.g. ZipMap's seq(map(int64,tensor(float)))), by
        # their ONNX Runtime type: only a protocol that can carry them asks for them.
        self.non_tensor_outputs = {o.name: o.type for o in self.session.get_outputs()
                                   if not cfg.is_tensor_type(o.type)}
        self.stats = VersionStats()
        # What IOBinding needs to know output shapes before the run.
        self._input_dims = {a.name: list(a.shape or []) for a in self.session.get_inputs()}
        self._output_dims = {a.name: list(a.shape or []) for a in self.session.get_outputs()}
        self._bind_outputs = all(s.datatype.name != "BYTES" and s.reshape is None
                                 for s in (*self.inputs.values(), *self.outputs.values()))
        self._binder = Binder(self.session)
        self._shape_cache: dict[tuple, dict[str, tuple] | None] = {}

    def close(self) -> None:
        """Stop taking requests and release what the version holds (its scheduler's
        threads, its sessions). Called once the version is out of the repository and
        its in-flight requests (``stats.pending``) have finished."""

    def run(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = (), *,
            non_tensor: bool = False) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the config, run the model, return the ``requested``
        outputs (all when empty) in the order asked for.

        With ``non_tensor``, outputs that are not tensors may be asked for (and
        "all" includes them): they come back as ONNX Runtime gives them (a list
        of dicts for a sequence of maps)."""
        with self.stats.measure() as m:
            names = self.output_names(requested, non_tensor=non_tensor)
            feeds, batch = self._feeds(inputs)
            m.fed(batch)
            results = self._session_run(names, feeds)
            m.ran()
            return {n: self._shape_output(n, r, batch) if n in self.outputs else r
                    for n, r in zip(names, results)}

    def run_into(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str],
                 allocate: Callable[[list[OutputSpec]], ResponseSlots]) -> ResponseSlots:
        """As ``run``, but the outputs go into a response from ``allocate``: written
        there by ONNX Runtime when their shapes are known before the run, else
        copied there once."""
        with self.stats.measure() as m:
            names = self.output_names(requested)
            feeds, batch = self._feeds(inputs)
            m.fed(batch)
            shapes = self._output_shapes(feeds, names)
            if shapes is not None:
                response = allocate([self._spec(n, shapes[n]) for n in names])
                if self._run_bound(feeds, names, shapes, response):
                    m.ran()
                    return response
            results = {n: self._shape_output(n, r, batch)
                       for n, r in zip(names, self._session_run(names, feeds))}
            m.ran()
            if shapes is not None:  # the bound run failed where a plain one works
                log.warning("model '%s' version %d: its declared output shapes are wrong; "
                            "outputs will be copied", self.name, self.version)
                self._bind_outputs = False
                self._shape_cache.clear()
            return _copy_into(allocate, results)

    # -- checks ------------------------------------------------------------
    def output_names(self, requested: Sequence[str] = (), *, non_tensor: bool = False) -> list[str]:
        """The outputs a request gets: ``requested`` checked, or all of them when empty."""
        if not requested:
            return list(self.outputs) + (list(self.non_tensor_outputs) if non_tensor else [])
        for name in requested:
            if name in self.non_tensor_outputs and not non_tensor:
                raise invalid(f"output '{name}' of model '{self.name}' is a {self.non_tensor_outputs[name]}, "
                              "not a tensor: this protocol cannot carry it")
            if name not in self.outputs and name not in self.non_tensor_outputs:
                raise invalid(f"model '{self.name}' has no output '{name}'; "
                              f"its outputs are: {', '.join(self.outputs)}")
        if len(set(requested)) != len(requested):
            raise invalid(f"output requested twice: {', '.join(requested)}")
        return list(requested)

    def _feeds(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        for name in inputs:
            if name not in self.inputs:
                raise invalid(f"model '{self.name}' has no input '{name}'; "
                              f"its inputs are: {', '.join(self.inputs)}")
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise invalid(f"model '{self.name}' needs input(s) {', '.join(missing)}, which the request lacks")
        batch = 0
        feeds = {}
        for name, spec in self.inputs.items():
            array = inputs[name]
            self._check(spec, array)
            if self.max_batch_size > 0:
                if batch and array.shape[0] != batch:
                    raise invalid(f"input '{name}': batch size {array.shape[0]} differs from the "
                                  f"other inputs' {batch}")
                batch = array.shape[0]
            feeds[name] = self._model_array(spec, array)
        return feeds, batch

    def _check(self, spec: cfg.TensorSpec, array: np.ndarray) -> None:
        got = from_numpy(array.dtype).name
        if got != spec.datatype.name:
            raise invalid(f"input '{spec.name}': expected datatype {spec.datatype.name}, got {got}")
        expected = spec.shape(self.max_batch_size)
        shape = list(array.shape)
        if len(shape) != len(expected) or any(w != -1 and g != w for g, w in zip(shape, expected)):
            raise invalid(f"input '{spec.name}': expected shape {expected}, got {shape}")
        if self.max_batch_size > 0 and not 1 <= shape[0] <= self.max_batch_size:
            raise invalid(f"input '{spec.name}': batch size {shape[0]} is outside 1..{self.max_batch_size} "
                          f"(max_batch_size of model '{self.name}')")

    def _model_array(self, spec: cfg.TensorSpec, array: np.ndarray) -> np.ndarray:
        if spec.reshape is not None:
            lead = [array.shape[0]] if self.max_batch_size > 0 else []
            array = array.reshape(lead + list(spec.reshape))
        if spec.datatype.name == "BYTES":
            array = _decode_strings(spec.name, array)
        return array

    def _shape_output(self, name: str, result: np.ndarray, batch: int) -> np.ndarray:
        spec = self.outputs[name]
        if spec.reshape is not None:
            lead = [batch] if self.max_batch_size > 0 else []
            result = result.reshape(lead + list(spec.dims))
        return result

    # -- running -----------------------------------------------------------
    def _session_run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(names, feeds)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
            raise invalid(f"model '{self.name}' version {self.version} rejected the inputs: {e}") from None
        except Exception as e:  # a fault inside the runtime, not in the request
            raise InferenceServerError(
                grpc.StatusCode.INTERNAL, f"model '{self.name}' version {self.version} failed to run: {e}"
            ) from e

    def _output_shapes(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, tuple] | None:
        """Output shapes known before the run, for the inputs' shapes; None when
        one is unknown (or binding does not apply). Remembered per input shapes."""
        if not self._bind_outputs:
            return None
        key = (*(a.shape for a in feeds.values()), *names)
        try:
            return self._shape_cache[key]
        except KeyError:
            pass
        if len(self._shape_cache) >= 256:  # bound the memory a stream of new shapes can take
            self._shape_cache.clear()
        shapes = self._shape_cache[key] = self._derive_output_shapes(feeds, names)
        return shapes

    def _derive_output_shapes(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, tuple] | None:
        """The graph's output dims, its symbolic dims bound by the inputs' shapes."""
        if any(a.size == 0 for a in feeds.values()):
            return None
        symbols: dict[str, int] = {}
        for name, dims in self._input_dims.items():
            for dim, size in zip(dims, feeds[name].shape):
                if isinstance(dim, str) and symbols.setdefault(dim, size) != size:
                    return None
        shapes = {}
        for name in names:
            shape = tuple(d if isinstance(d, int) and d >= 0 else symbols.get(d, -1) if isinstance(d, str) else -1
                          for d in self._output_dims[name])
            if any(d <= 0 for d in shape):  # unknown, or empty: let ONNX Runtime decide
                return None
            shapes[name] = shape
        return shapes

    def _spec(self, name: str, shape: tuple[int, ...]) -> OutputSpec:
        datatype = self.outputs[name].datatype
        return name, datatype.name, shape, math.prod(shape) * datatype.numpy.itemsize

    def _run_bound(self, feeds: dict[str, np.ndarray], names: list[str], shapes: dict[str, tuple],
                   response: ResponseSlots) -> bool:
        """Run with inputs bound where they lie and outputs bound into ``response``."""
        binding = self._binder.bind(
            [(name, a.dtype.type, a.shape, address_of(a)) for name, a in feeds.items()],
            [(name, self.outputs[name].datatype.numpy.type, shapes[name], response.address(i))
             for i, name in enumerate(names)])
        try:
            self._binder.run(binding)
        except Exception:  # run again unbound: that gives the error, or shows the dims were wrong
            return False
        for i in range(len(names)):
            response.mark_written(i)
        return True


def _copy_into(allocate: Callable[[list[OutputSpec]], ResponseSlots],
               results: dict[str, np.ndarray]) -> ResponseSlots:
    """Outputs computed elsewhere, copied once into a new response."""
    datas = {}
    specs = []
    for name, array in results.items():
        datatype = from_numpy(array.dtype)
        data = to_raw(array, datatype) if datatype.name == "BYTES" else np.ascontiguousarray(array)
        datas[name] = data
        specs.append((name, datatype.name, array.shape, memoryview(data).nbytes))
    response = allocate(specs)
    for i, data in enumerate(datas.values()):
        response.write(i, data)
    return response


def _session_options() -> ort.SessionOptions:
    """One intra-op thread per CPU this process may use. Stated explicitly because
    with the default (0) ONNX Runtime pins its threads to CPUs of its own choice,
    outside a taskset/cgroup mask the server was started with."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return options


def _decode_strings(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX Runtime takes str elements; the protocol carries bytes (UTF-8 text)."""
    out = np.empty(array.size, dtype=object)
    try:
        out[:] = [b.decode() if isinstance(b, bytes) else str(b) for b in array.ravel()]
    except UnicodeDecodeError as e:
        raise invalid(f"input '{name}': a BYTES element is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return out.reshape(array.shape)
