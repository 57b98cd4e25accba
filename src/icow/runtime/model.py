"""One loaded version of a model: its ONNX Runtime session, config and run."""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import grpc
import numpy as np
import onnxruntime as ort

from .._proto import model_config_pb2 as mc
from .._wire import address_of
from ..protocol.datatypes import DATATYPES, from_numpy
from ..protocol.errors import InferenceServerError, invalid
from ..protocol.names import shorten
from ..protocol.tensors import from_raw, to_raw
from . import bf16, custom_ops, execution, providers, request_policy
from . import config as cfg
from .binding import Binder
from .cache import CachedOutput, Entry, ResponseCache, new_owner, request_key
from .scheduler import BatchScheduler, DirectScheduler, Job
from .stats import VersionStats, failure_reason

log = logging.getLogger(__name__)

PROVIDERS_PARAMETER = "execution_providers"  # in ModelConfig's parameters: what the sessions use

# (name, datatype, shape, byte size) of one output in a response.
OutputSpec = tuple[str, str, tuple[int, ...], int]


class ResponseSlots(Protocol):
    """A response under construction with a place for each output's bytes."""

    def address(self, index: int) -> int: ...
    def write(self, index: int, data) -> None: ...
    def mark_written(self, index: int) -> None: ...


class Instance:
    """One ONNX Runtime session of a version; runs one request or batch at a time.

    On a GPU, inputs and outputs are still bound in host memory (the request and
    the response): ONNX Runtime copies each input to the device once, into memory
    from its CUDA arena (reused, not allocated per request), and each output back
    once, straight into the response."""

    def __init__(self, path: Path, options: ort.SessionOptions, device: int | None, config: mc.ModelConfig) -> None:
        self.session, self.device = providers.create_session(path, options, device, config)
        self.binder = Binder(self.session)


class Work(NamedTuple):
    """What a scheduled request asks of the model."""

    feeds: dict[str, np.ndarray]
    names: list[str]  # outputs, in the order the response lists them
    allocate: Callable[[list[OutputSpec]], ResponseSlots] | None  # None: arrays are the result


class Lookup(NamedTuple):
    """A request looked up in the response cache."""

    key: bytes
    entry: Entry | None  # None: a miss
    start_ns: int  # when the lookup began (its key's hashing included)


class Model:
    """A ready model version. ``run`` and ``run_into`` are safe from many threads;
    its scheduler decides which instance runs a request, and batches them."""

    def __init__(self, name: str, version: int, path: Path, config: mc.ModelConfig,
                 default_max_batch_size: int, default_queue_size: int = 0, default_device: int | None = None,
                 cache: ResponseCache | None = None) -> None:
        self.name = name
        self.version = version
        self.path = path
        plan = execution.instances(config, execution.available_cpus(), default_device)
        options = _session_options(plan, config)
        self.instances = [Instance(path, options, device, config) for device in plan.devices]
        self.session = self.instances[0].session
        self.config = cfg.complete_config(config, name, self.session, default_max_batch_size)
        _describe_placement(self.config, self.instances)
        self.max_batch_size = self.config.max_batch_size
        self.inputs = cfg.tensor_specs(self.config.input)
        self.outputs = cfg.tensor_specs(self.config.output)
        # Outputs that are not tensors (e.g. ZipMap's seq(map(int64,tensor(float)))), by
        # their ONNX Runtime type: only a protocol that can carry them asks for them.
        self.non_tensor_outputs = {o.name: o.type for o in self.session.get_outputs()
                                   if not cfg.is_tensor_type(o.type)}
        self.stats = VersionStats()
        # What IOBinding needs to know output shapes before the run.
        self.input_dims = {a.name: list(a.shape or []) for a in self.session.get_inputs()}
        self.output_dims = {a.name: list(a.shape or []) for a in self.session.get_outputs()}
        self.bind_outputs = all(s.datatype.name != "BYTES" and s.reshape is None
                                 for s in (*self.inputs.values(), *self.outputs.values()))
        self.has_bf16 = any(s.datatype.name == "BF16" for s in (*self.inputs.values(), *self.outputs.values()))
        self._shape_cache: dict[tuple, dict[str, tuple] | None] = {}
        self.batching = execution.batching(self.config)
        self.queue = execution.queue_policy(self.config, default_queue_size)
        self.scheduler = (BatchScheduler(name, self.instances, self.queue, self._execute, self.batching)
                          if self.batching else DirectScheduler(name, self.instances, self.queue, self._execute))
        self.on_unbindable: list[Callable[[], None]] = []  # told when outputs can no longer be bound
        self.cache = _response_cache(self.config, cache, name, version)  # None: answers are not kept
        self.cache_owner = new_owner()  # this loaded version's part of the cache
        weakref.finalize(self, self.scheduler.close)  # its threads end with the model

    def close(self) -> None:
        """Stop taking requests and release what the version holds (its scheduler's
        threads, its answers in the response cache). Called once the version is out of the
        repository and its in-flight requests (``stats.pending``) have finished."""
        self.scheduler.close()
        if self.cache is not None:
            self.cache.drop(self.cache_owner)

    def run(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = (), *,
            non_tensor: bool = False, deadline_ns: int | None = None,
            alive: Callable[[], bool] | None = None, parameters: Mapping[str, Any] | None = None,
            timings: list | None = None) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the config, run the model, return the ``requested``
        outputs (all when empty) in the order asked for.

        With ``non_tensor``, outputs that are not tensors may be asked for (and
        "all" includes them): they come back as ONNX Runtime gives them (a list
        of dicts for a sequence of maps). ``deadline_ns`` (time.monotonic_ns) and
        ``alive`` (False once the caller has gone) end a wait in the queue. ``parameters``:
        the request's, of which ``priority`` and ``timeout`` may order and bound its wait
        (request_policy.py). ``timings``, when given, gets the request's (queue, compute input,
        infer, output) ns appended (an ensemble's step: the ensemble's statistics add them up)."""
        return self._submit(inputs, requested, None, non_tensor, deadline_ns, alive, parameters, timings)

    def run_into(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str],
                 allocate: Callable[[list[OutputSpec]], ResponseSlots], *, deadline_ns: int | None = None,
                 alive: Callable[[], bool] | None = None,
                 parameters: Mapping[str, Any] | None = None) -> ResponseSlots:
        """As ``run``, but the outputs go into a response from ``allocate``: written
        there by ONNX Runtime when their shapes are known before the run, else
        copied there once."""
        return self._submit(inputs, requested, allocate, False, deadline_ns, alive, parameters)

    def run_unrecorded(self, instance: Instance, inputs: Mapping[str, np.ndarray],
                       allocate: Callable[[list[OutputSpec]], ResponseSlots]) -> None:
        """Check ``inputs`` and run them on ``instance`` for all outputs, as a request
        would run, but outside the scheduler and the statistics: warm-up (warmup.py),
        before the version serves, so that no request can want the instance meanwhile."""
        feeds, batch = self._feeds(inputs)
        job = Job(Work(feeds, self.output_names(), allocate), batch or 1, None, None, None)
        self._run_one(instance, job)

    def _submit(self, inputs, requested, allocate, non_tensor, deadline_ns, alive, parameters, timings=None):
        """Check the request, queue it, wait for its result; account for it."""
        arrived = time.monotonic_ns()
        self.stats.begin()
        try:
            scheduling = request_policy.scheduling(parameters, self.queue)
            names = self.output_names(requested, non_tensor=non_tensor)
            cached = self._cached(inputs, names)
            if cached is not None and cached.entry is not None:  # a hit: no run
                result = _from_cache(cached.entry, allocate)
                done = time.monotonic_ns()
                self.stats.record_cache_hit(done - arrived, done - cached.start_ns)
                return result
            feeds, batch = self._feeds(inputs)
            key = (tuple(names), *((n, a.shape[1:]) for n, a in feeds.items())) if self.batching else None
            job = Job(Work(feeds, names, allocate if cached is None else None), batch or 1, key, deadline_ns, alive,
                      scheduling)
            result = self.scheduler.run(job)
            if cached is not None:  # a miss: keep the answer, then write it into the response
                result = self._keep(cached.key, result, allocate, time.monotonic_ns() - cached.start_ns)
        except BaseException as e:
            self.stats.record_failure(time.monotonic_ns() - arrived, reason=failure_reason(e))
            raise
        input_ns, infer_ns, output_ns = job.timings
        queue_ns, input_ns = job.started_ns - job.queued_ns, job.queued_ns - arrived + input_ns
        self.stats.record_request(batch or 1, time.monotonic_ns() - arrived, queue_ns, input_ns, infer_ns,
                                  output_ns, job.ran_alone)
        if timings is not None:
            timings.append((queue_ns, input_ns, infer_ns, output_ns))
        return result

    # -- the response cache ------------------------------------------------
    def _cached(self, inputs: Mapping[str, np.ndarray], names: list[str]) -> Lookup | None:
        """The request's lookup in the response cache; None where the cache does not apply:
        no cache, or outputs that are not tensors (they have no raw bytes)."""
        if self.cache is None or any(n in self.non_tensor_outputs for n in names):
            return None
        start = time.monotonic_ns()
        key = request_key(self.name, self.version, self.cache_owner, inputs, names)
        return Lookup(key, self.cache.get(key), start)

    def _keep(self, key: bytes, results: dict[str, np.ndarray],
              allocate: Callable[[list[OutputSpec]], ResponseSlots] | None,
              lookup_ns: int) -> ResponseSlots | dict[str, np.ndarray]:
        """Put a miss's answer in the cache (its miss time: the lookup and this); the response."""
        start = time.monotonic_ns()
        outputs = [_cached_output(name, array) for name, array in results.items()]
        self.cache.put(key, self.cache_owner, outputs)
        self.stats.record_cache_miss(lookup_ns + time.monotonic_ns() - start)
        return results if allocate is None else _respond(allocate, outputs)

    # -- running on an instance (the scheduler calls these) -----------------
    def _execute(self, instance: Instance, jobs: list[Job]) -> None:
        """Run ``jobs`` on ``instance``, alone or as one batch; set each one's result or error."""
        if len(jobs) > 1:
            try:
                self._run_batch(instance, jobs)
                return
            except InferenceServerError as e:  # find who caused it: each alone fails only if it must
                log.info("model '%s' version %d: a batch of %d requests failed (%s); running them one by one",
                         self.name, self.version, len(jobs), e.message)
        for job in jobs:
            try:
                job.result = self._run_one(instance, job)
            except Exception as e:
                job.error = e

    def _run_one(self, instance: Instance, job: Job) -> ResponseSlots | dict[str, np.ndarray]:
        start = time.monotonic_ns()
        feeds, names, allocate = job.payload
        batch = job.rows if self.max_batch_size > 0 else 0
        shapes = self._output_shapes(feeds, names) if allocate is not None else None
        if shapes is not None:
            response = allocate([self._spec(n, shapes[n]) for n in names])
            fed = time.monotonic_ns()
            if self._run_bound(instance, feeds, names, shapes, response):
                self._timed([job], start, fed, time.monotonic_ns())
                return response
        fed = time.monotonic_ns()
        results = {n: self._shape_output(n, r, batch) if n in self.outputs else r
                   for n, r in zip(names, self._session_run(instance, names, feeds))}
        ran = time.monotonic_ns()
        if shapes is not None:  # the bound run failed where a plain one works
            log.warning("model '%s' version %d: its declared output shapes are wrong; "
                        "outputs will be copied", self.name, self.version)
            self.bind_outputs = False
            self._shape_cache.clear()
            for listener in self.on_unbindable:
                listener()
        result = copy_into(allocate, results) if allocate is not None else results
        self._timed([job], start, fed, ran)
        return result

    def _run_batch(self, instance: Instance, jobs: list[Job]) -> None:
        """One run over the jobs' inputs stacked along the batch dimension (the one
        copy batching adds on the way in); each job gets its own rows back."""
        start = time.monotonic_ns()
        _, names, _ = jobs[0].payload
        feeds = {name: np.concatenate([job.payload.feeds[name] for job in jobs])
                 for name in jobs[0].payload.feeds}
        fed = time.monotonic_ns()
        outputs = self._session_run(instance, names, feeds)
        ran = time.monotonic_ns()
        rows = sum(job.rows for job in jobs)
        if any(np.shape(r)[:1] != (rows,) for r in outputs):
            raise InferenceServerError(grpc.StatusCode.INTERNAL, "an output does not have one row per input row")
        first = 0
        for job in jobs:
            last = first + job.rows
            results = {n: self._shape_output(n, r[first:last], job.rows) if n in self.outputs else r[first:last]
                       for n, r in zip(names, outputs)}
            allocate = job.payload.allocate
            job.result = copy_into(allocate, results) if allocate is not None else results
            first = last
        self._timed(jobs, start, fed, ran)

    def _timed(self, jobs: list[Job], start: int, fed: int, ran: int) -> None:
        """Account one execution: its phases go to every job in it, and to batch_stats
        (for a job that ran alone, with its request's own record, under one lock)."""
        timings = (fed - start, ran - fed, time.monotonic_ns() - ran)
        for job in jobs:
            job.timings = timings
        if len(jobs) == 1:
            jobs[0].ran_alone = True
        else:
            self.stats.record_execution(sum(job.rows for job in jobs), *timings)

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
                raise invalid(f"model '{self.name}' has no output '{shorten(name)}'; "
                              f"its outputs are: {', '.join(self.outputs)}")
        if len(set(requested)) != len(requested):
            raise invalid(f"output requested twice: {', '.join(requested)}")
        return list(requested)

    def _feeds(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        check_input_names(self.name, self.inputs, inputs)
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
        check_input(spec, array, self.max_batch_size, self.name)

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
    def _session_run(self, instance: Instance, names: list[str], feeds: dict[str, np.ndarray]) -> list:
        try:
            if self.has_bf16:  # numpy has no bfloat16: session.run would refuse it
                return bf16.run(instance.session, names, feeds)
            return instance.session.run(names, feeds)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as e:
            raise invalid(f"model '{self.name}' version {self.version} rejected the inputs: {e}") from None
        except Exception as e:  # a fault inside the runtime, not in the request
            raise InferenceServerError(
                grpc.StatusCode.INTERNAL, f"model '{self.name}' version {self.version} failed to run: {e}"
            ) from e

    def _output_shapes(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, tuple] | None:
        """Output shapes known before the run, for the inputs' shapes; None when
        one is unknown (or binding does not apply). Remembered per input shapes."""
        if not self.bind_outputs:
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
        for name, dims in self.input_dims.items():
            for dim, size in zip(dims, feeds[name].shape):
                if isinstance(dim, str) and symbols.setdefault(dim, size) != size:
                    return None
        shapes = {}
        for name in names:
            shape = tuple(d if isinstance(d, int) and d >= 0 else symbols.get(d, -1) if isinstance(d, str) else -1
                          for d in self.output_dims[name])
            if any(d <= 0 for d in shape):  # unknown, or empty: let ONNX Runtime decide
                return None
            shapes[name] = shape
        return shapes

    def _spec(self, name: str, shape: tuple[int, ...]) -> OutputSpec:
        datatype = self.outputs[name].datatype
        return name, datatype.name, shape, math.prod(shape) * datatype.numpy.itemsize

    def _run_bound(self, instance: Instance, feeds: dict[str, np.ndarray], names: list[str],
                   shapes: dict[str, tuple], response: ResponseSlots) -> bool:
        """Run with inputs bound where they lie and outputs bound into ``response``."""
        binding = instance.binder.bind(
            [(name, self.inputs[name].datatype.bind, a.shape, address_of(a)) for name, a in feeds.items()],
            [(name, self.outputs[name].datatype.bind, shapes[name], response.address(i))
             for i, name in enumerate(names)])
        try:
            instance.binder.run(binding)
        except Exception:  # run again unbound: that gives the error, or shows the dims were wrong
            return False
        for i in range(len(names)):
            response.mark_written(i)
        return True


def check_input_names(model: str, expected: Mapping[str, object], inputs: Mapping[str, object]) -> None:
    """Refuse a request whose inputs are not exactly the model's (INVALID_ARGUMENT naming them)."""
    for name in inputs:
        if name not in expected:
            raise invalid(f"model '{model}' has no input '{shorten(name)}'; its inputs are: {', '.join(expected)}")
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise invalid(f"model '{model}' needs input(s) {', '.join(missing)}, which the request lacks")


def check_input(spec: cfg.TensorSpec, array: np.ndarray, max_batch_size: int, model: str) -> int:
    """Refuse an input whose datatype or shape the config does not allow; its batch size (0: none)."""
    got = from_numpy(array.dtype).name
    if got != spec.datatype.name:
        raise invalid(f"input '{spec.name}': expected datatype {spec.datatype.name}, got {got}")
    expected = spec.shape(max_batch_size)
    shape = list(array.shape)
    if len(shape) != len(expected) or any(w != -1 and g != w for g, w in zip(shape, expected)):
        raise invalid(f"input '{spec.name}': expected shape {expected}, got {shape}")
    if max_batch_size > 0 and not 1 <= shape[0] <= max_batch_size:
        raise invalid(f"input '{spec.name}': batch size {shape[0]} is outside 1..{max_batch_size} "
                      f"(max_batch_size of model '{model}')")
    return shape[0] if max_batch_size > 0 else 0


def copy_into(allocate: Callable[[list[OutputSpec]], ResponseSlots],
               results: dict[str, np.ndarray]) -> ResponseSlots:
    """Outputs computed elsewhere, copied once into a new response."""
    datas = {}
    specs = []
    for name, array in results.items():
        datatype = from_numpy(array.dtype)
        data = to_raw(array, datatype) if datatype.name == "BYTES" else np.ascontiguousarray(array)
        if datatype.name == "BF16":  # written as plain 2-byte elements: its bits
            data = data.view(np.uint16)
        datas[name] = data
        specs.append((name, datatype.name, array.shape, memoryview(data).nbytes))
    response = allocate(specs)
    for i, data in enumerate(datas.values()):
        response.write(i, data)
    return response


def _cached_output(name: str, array: np.ndarray) -> CachedOutput:
    datatype = from_numpy(array.dtype)
    return name, datatype.name, tuple(array.shape), to_raw(array, datatype)


def _respond(allocate: Callable[[list[OutputSpec]], ResponseSlots], outputs: Sequence[CachedOutput]) -> ResponseSlots:
    """A response holding ``outputs`` (a cached answer), copied in once."""
    response = allocate([(name, datatype, shape, len(data)) for name, datatype, shape, data in outputs])
    for i, (*_, data) in enumerate(outputs):
        response.write(i, data)
    return response


def _from_cache(entry: Entry, allocate: Callable[[list[OutputSpec]], ResponseSlots] | None):
    """A cached answer as ``run`` (arrays) or ``run_into`` (a response) gives it."""
    if allocate is not None:
        return _respond(allocate, entry.outputs)
    return {name: from_raw(data, DATATYPES[datatype], shape, f"output '{name}'")
            for name, datatype, shape, data in entry.outputs}


def _response_cache(config: mc.ModelConfig, cache: ResponseCache | None, name: str,
                    version: int) -> ResponseCache | None:
    """The server's cache where the config enables it. Enabled on a server without one, the
    model loads and runs uncached, as in Triton, and says so."""
    if not config.response_cache.enable:
        return None
    if cache is None:
        log.warning("model '%s' version %d: its config enables response_cache, but the server has no "
                    "response cache (start it with --cache-size-mb N); its answers are not cached",
                    name, version)
    return cache


def _describe_placement(config: mc.ModelConfig, instances: list[Instance]) -> None:
    """Write where the instances really run into the config that ModelConfig returns:
    instance_group per device, and the providers the sessions use (from the sessions)."""
    del config.instance_group[:]
    devices = [i.device for i in instances]
    for device in dict.fromkeys(devices):
        group = config.instance_group.add(count=devices.count(device))
        if device is None:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
        else:
            group.kind = mc.ModelInstanceGroup.KIND_GPU
            group.gpus.append(device)
    used = dict.fromkeys(p for i in instances for p in i.session.get_providers())
    config.parameters[PROVIDERS_PARAMETER].string_value = ",".join(used)


def _session_options(plan: execution.Instances, config: mc.ModelConfig) -> ort.SessionOptions:
    """Thread counts as planned (execution.instances). Stated explicitly because
    with the default (0) ONNX Runtime pins its threads to CPUs of its own choice,
    outside a taskset/cgroup mask the server was started with. The custom operator
    libraries the config asks for (custom_ops.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = plan.intra_op_threads
    if plan.inter_op_threads:
        options.inter_op_num_threads = plan.inter_op_threads
    custom_ops.register(options, config)
    return options


def _decode_strings(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX Runtime takes str elements; the protocol carries bytes (UTF-8 text)."""
    out = np.empty(array.size, dtype=object)
    try:
        out[:] = [b.decode() if isinstance(b, bytes) else str(b) for b in array.ravel()]
    except UnicodeDecodeError as e:
        raise invalid(f"input '{name}': a BYTES element is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return out.reshape(array.shape)
