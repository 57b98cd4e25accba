"""One loaded version of a model: its ONNX Runtime session, config and run."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from . import config as cfg
from ._proto import model_config_pb2 as mc
from .datatypes import from_numpy
from .errors import InferenceServerError, invalid
from .stats import VersionStats


class Model:
    """A ready model version. ``run`` is safe to call from many threads."""

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

    def run(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = (), *,
            non_tensor: bool = False) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the config, run the model, return the ``requested``
        outputs (all when empty) in the order asked for.

        With ``non_tensor``, outputs that are not tensors may be asked for (and
        "all" includes them): they come back as ONNX Runtime gives them (a list
        of dicts for a sequence of maps)."""
        start = time.perf_counter_ns()
        try:
            names = self.output_names(requested, non_tensor=non_tensor)
            feeds, batch = self._feeds(inputs)
            fed = time.perf_counter_ns()
            results = self._session_run(names, feeds)
            ran = time.perf_counter_ns()
            outputs = {n: self._shape_output(n, r, batch) if n in self.outputs else r
                       for n, r in zip(names, results)}
        except InferenceServerError:
            self.stats.record_failure(time.perf_counter_ns() - start)
            raise
        done = time.perf_counter_ns()
        self.stats.record_success(batch or 1, done - start, fed - start, ran - fed, done - ran)
        return outputs

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

    def _session_run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(names, feeds)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
            raise invalid(f"model '{self.name}' version {self.version} rejected the inputs: {e}") from None
        except Exception as e:  # a fault inside the runtime, not in the request
            raise InferenceServerError(
                grpc.StatusCode.INTERNAL, f"model '{self.name}' version {self.version} failed to run: {e}"
            ) from e


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
