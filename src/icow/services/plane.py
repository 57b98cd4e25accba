"""The native gRPC data plane (docs/native-plane.md): ``icow serve --data-plane native``;
and its fast path on the caller's thread for the grpcio plane (``DirectPath``).

``icow._plane`` is a grpc++ server on the public port, built only where the gRPC
C++ libraries were found at build time. ModelInfer requests that it can serve
exactly as the full path would are parsed, checked, bound to ONNX Runtime and
answered in C++ (batched there too), with the GIL held only around the bind and
run calls. Every other call (other methods, shared memory, strings, errors, token
checks that fail) goes through, bytes unchanged, to icow's grpcio server on a
private Unix socket (the backend), so both planes answer alike.

This module publishes the model table the fast path reads: an entry per ready
version, keyed by name and version, label or "" (the default version) as
LoadedModel.fixed_picks resolves them, made again on every repository change.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

from ..repository.repository import Repository
from ..runtime.ensemble import Ensemble
from ..runtime.model import Model
from ..runtime.stats import LATENCY_BUCKETS_US
from .auth import Token

log = logging.getLogger(__name__)

try:
    from .. import _plane
except ImportError as e:  # built without the gRPC C++ libraries, or they are missing at run time
    _plane = None
    UNAVAILABLE_REASON: str | None = f"icow._plane cannot be imported ({e})"
else:
    UNAVAILABLE_REASON = None

_UNKNOWN = -1


def available() -> bool:
    """True where ``icow._plane`` was built and loads."""
    return _plane is not None


def grpc_version() -> str:
    return _plane.GRPC_VERSION if _plane is not None else ""


def cap_buffer_pool(limit: int) -> None:
    """Keep at most ``limit`` bytes of the plane's idle request/response blocks (ext/plane/buffers.hpp)."""
    if _plane is not None:
        _plane.set_buffer_pool_limit(limit)


def buffer_pool(used: bool):
    """The pool for icow.services.memory to trim (icow._plane itself), or None where no plane uses it."""
    return _plane if used and _plane is not None else None


class ModelTable:
    """The entries of the fast path, made once per model version. ``batching_steps``: the
    batching models that ensembles run are in the table too (the native plane, whose C++
    queues take the ensembles' steps with the models' calls)."""

    def __init__(self, repository: Repository, *, batching_steps: bool = False) -> None:
        self.repository = repository
        self.batching_steps = batching_steps
        self._entries: weakref.WeakKeyDictionary[Model, object] = weakref.WeakKeyDictionary()

    def entries(self) -> dict[str, object]:
        """Table key (name, newline, version or label or "") -> ModelEntry."""
        table: dict[str, object] = {}
        ensembles: dict[str, Ensemble] = {}
        # Elsewhere a batching model that an ensemble runs stays on the Python path, where its queue
        # is the one its ensemble steps wait in: direct requests and steps then batch together.
        steps = set() if self.batching_steps else self.repository.composing_names()
        for loaded in self.repository.loaded():  # the repository's rule, for every fixed key
            for key, model in loaded.fixed_picks().items():
                if isinstance(model, Ensemble):
                    ensembles[f"{loaded.name}\n{key}"] = model
                    continue
                if loaded.name in steps and getattr(model, "batching", None):
                    continue
                entry = self._entry(model)
                if entry is not None:
                    table[f"{loaded.name}\n{key}"] = entry
        for key, ensemble in ensembles.items():  # once every model's entry is known
            if runs_on_fast_path(ensemble, table):
                entry = self._entry(ensemble)
                if entry is not None:
                    table[key] = entry
        return table

    def _entry(self, model: Model | Ensemble):
        if model not in self._entries:
            self._entries[model] = ensemble_entry(model) if isinstance(model, Ensemble) else model_entry(model)
        return self._entries[model]


def model_entry(model: Model):
    """The fast path's entry for ``model``, or None where only the full path serves it
    as it must: strings, config reshapes, outputs that cannot be bound before the run,
    onnxruntime without the calls beneath its IOBinding wrapper, the response cache
    (kept by the full path only: there a request is looked up before it runs), priority
    levels or request timeouts (the full path's queue orders and bounds by them)."""
    specs = (*model.inputs.values(), *model.outputs.values())
    if (model.cache is not None or not model.bind_outputs or model.queue.levels or model.queue.any_override
            or any(s.datatype.name == "BYTES" or s.reshape is not None for s in specs)
            or not all(i.binder.fast for i in model.instances)):
        return None
    symbols: dict[str, int] = {}

    def graph(dims: list) -> list[int]:
        """>= 0 fixed, -1 unknown, -2-k the k-th symbol."""
        return [d if isinstance(d, int) and d >= 0 else -2 - symbols.setdefault(d, len(symbols))
                if isinstance(d, str) else _UNKNOWN for d in dims]

    inputs = [_spec(s, s.shape(model.max_batch_size), graph(model.input_dims[s.name]))
              for s in model.inputs.values()]
    outputs = [_spec(s, [], graph(model.output_dims[s.name])) for s in model.outputs.values()]
    instances = [(i.binder.c_session, i.binder.new_binding, i.binder.cpu, i.binder.run_options)
                 for i in model.instances]
    stats, batching = model.stats, model.batching
    entry = _plane.ModelEntry(model.name, model.version, model.max_batch_size, inputs, outputs, instances,
                              stats.tally(lambda: _plane.Tally(LATENCY_BUCKETS_US)), stats.record_failure,
                              model.queue.max_size, model.queue.timeout_ns,
                              batching=(batching.max_batch_size, sorted(batching.preferred), batching.max_delay_ns)
                              if batching else None)
    model.on_unbindable.append(entry.disable)
    stats.pending_sources.append(weakref.ref(entry))  # weak: the entry holds the stats' methods
    return entry


def runs_on_fast_path(ensemble: Ensemble, table: dict[str, object]) -> bool:
    """Whether every step's model is in the table, and none is an ensemble itself (a step
    of a batching model is planned only where the table has those: the native plane)."""
    for step in ensemble.graph.steps:
        entry = table.get(f"{step.model}\n{step.version}")
        if entry is None or entry.is_ensemble:
            return False
    return True


def ensemble_entry(ensemble: Ensemble):
    """The fast path's entry for ``ensemble`` (ext/plane/ensemble.hpp), or None where its
    tensors are strings or reshaped. Its graph goes as slots: the ensemble's inputs
    first, then each step's outputs; the steps in dependency order."""
    specs = (*ensemble.inputs.values(), *ensemble.outputs.values())
    if any(s.datatype.name == "BYTES" or s.reshape is not None for s in specs):
        return None
    slots = {name: i for i, name in enumerate(ensemble.inputs)}
    steps = []
    for step in (s for level in ensemble.graph.levels for s in level):
        inputs = [(name, slots[tensor]) for name, tensor in step.inputs.items()]
        outputs = [(name, slots.setdefault(tensor, len(slots))) for name, tensor in step.outputs.items()]
        steps.append((step.model, step.version, str(step), inputs, outputs))
    graph = (steps, len(slots), [slots[name] for name in ensemble.outputs])
    shapes = [s.shape(ensemble.max_batch_size) for s in ensemble.inputs.values()]
    inputs = [_spec(s, shape, [_UNKNOWN] * len(shape)) for s, shape in zip(ensemble.inputs.values(), shapes)]
    outputs = [_spec(s, [], []) for s in ensemble.outputs.values()]  # sized through the graph
    stats = ensemble.stats
    entry = _plane.ModelEntry(ensemble.name, ensemble.version, ensemble.max_batch_size, inputs, outputs, [],
                              stats.tally(lambda: _plane.Tally(LATENCY_BUCKETS_US)), stats.record_failure,
                              ensemble=graph)
    stats.pending_sources.append(weakref.ref(entry))
    return entry


def _spec(s, shape: list[int], graph: list[int]) -> tuple:
    """A tensor as ModelEntry takes it: (name, datatype, itemsize, shape, graph dims, numpy type)."""
    return (s.name, s.datatype.name, s.datatype.numpy.itemsize, shape, graph, s.datatype.bind)


class NativePlane:
    """The plane's server on ``address``, passing what it does not serve to ``backend``."""

    def __init__(self, repository: Repository, address: str, backend: str, *, workers: int,
                 max_message_bytes: int, max_concurrent: int, tls: tuple[bytes, bytes, bytes | None] | None,
                 tokens: Sequence[Token] = ()) -> None:
        if _plane is None:
            raise RuntimeError(UNAVAILABLE_REASON)
        self.table = ModelTable(repository, batching_steps=True)
        self.server = _plane.Server(address, backend, workers=workers, max_message_bytes=max_message_bytes,
                                    max_concurrent=max_concurrent, tls=tls)
        self.server.set_tokens([(t.digest, None if t.models is None else sorted(t.models)) for t in tokens])
        self.port = self.server.port
        self._sharers: list = []  # the HTTP and stream lanes' Directs, on the same entries
        repository.listeners.append(lambda name: self.refresh())

    def refresh(self) -> None:
        """Publish the table anew (on every repository change)."""
        entries = self.table.entries()
        self.server.publish(entries)
        for direct in self._sharers:
            direct.publish(entries)

    def http_lane(self, max_message_bytes: int):
        """``serve_http`` of a Direct on the plane's own entries: HTTP and gRPC requests
        take the same instances and wait in one queue (a model's instance count and
        max_queue_size hold across both; a freed instance goes to whichever came first;
        a batching model's requests batch together)."""
        return self._sharer(max_message_bytes).serve_http

    def stream_lane(self, max_message_bytes: int):
        """``serve`` of a Direct on the plane's own entries, for ModelStreamInfer's requests:
        the plane passes a stream to grpcio whole, and its requests come back here, to the
        fast path and the queues of ModelInfer."""
        return self._sharer(max_message_bytes).serve

    def _sharer(self, max_message_bytes: int):
        direct = _plane.Direct(max_message_bytes)
        direct.share_queues(self.server)  # requests to batching models wait in the plane's C++ queues
        self._sharers.append(direct)
        direct.publish(self.table.entries())
        return direct

    def serve_fast(self, on: bool) -> None:
        """Let the fast path serve ModelInfer (off: everything goes to the backend)."""
        self.server.fast = on

    @property
    def counts(self) -> dict[str, int]:
        return {"served_fast": self.server.served_fast, "handed_on": self.server.handed_on,
                "in_flight": self.server.in_flight}

    def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds. Blocks."""
        self.server.stop(grace)


class DirectPath:
    """The fast path on grpcio's handler thread (``--data-plane grpcio``): ModelInfer
    bytes parsed, checked, bound and run in one call into C++, with the native
    plane's table and checks. What it cannot serve as the full path would, it
    leaves to the full path (``serve`` returns None)."""

    def __init__(self, repository: Repository, max_message_bytes: int) -> None:
        if _plane is None:
            raise RuntimeError(UNAVAILABLE_REASON)
        self.table = ModelTable(repository)
        self._direct = _plane.Direct(max_message_bytes)
        self.serve = self._direct.serve
        self.serve_http = self._direct.serve_http  # icow.http's fast lane, in the same line
        repository.listeners.append(lambda name: self.refresh())

    def refresh(self) -> None:
        """Publish the table anew (on every repository change)."""
        self._direct.publish(self.table.entries())

    @property
    def counts(self) -> dict[str, int]:
        """ModelInfer calls answered in C++, and left to the full path (refusals count as answered)."""
        return {"served_fast": self._direct.served_fast, "handed_on": self._direct.handed_on}
