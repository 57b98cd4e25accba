"""The model repository: finding models and versions on disk, loading and
unloading them, and resolving a request's model name and version (or label, or
none: then the model's traffic split decides; see routing.py).

A (re)load is incremental: a version whose files and config did not change keeps
its loaded Model; a changed one is loaded anew and takes traffic only once ready;
one that fails to reload leaves the previous Model serving. Versions that leave
are drained and closed off the request path (drain.py).

Layout (Triton's): ``<root>/<model>/config.pbtxt`` (optional) and
``<root>/<model>/<version>/model.onnx`` with positive integer versions.
With an object store, ``<root>`` is its local cache, brought up to date before
models load (see object_store.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import grpc

from .._proto import model_config_pb2 as mc
from ..protocol.errors import InferenceServerError, invalid, not_found, unavailable
from ..protocol.names import check_name, shorten
from ..runtime import config as cfg
from ..runtime import config_fields
from ..runtime.cache import ResponseCache
from ..runtime.ensemble import Ensemble
from ..runtime.ensemble_graph import Graph, Step, check_models, is_ensemble, read_graph
from ..runtime.model import Model
from ..runtime.warmup import warm_up
from . import routing
from .deploy import Deployment, Staged, same_as_folder, same_as_objects
from .drain import Drainer
from .routing import Routing, SplitTable
from .routing_store import (
    Conflict,
    FolderRoutingStore,
    ObjectRoutingStore,
    ReadOnly,
    RoutingStore,
    StoredRouting,
    read_cached,
)
from .versions import files_stamp, policy_versions, versions_on_disk

if TYPE_CHECKING:
    from .object_store import ObjectStore

log = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


class IndexEntry(NamedTuple):
    name: str
    version: str
    state: str
    reason: str


@dataclass
class VersionState:
    version: int
    model: Model | Ensemble | None = None
    reason: str = ""  # why it is not ready, or why a reload failed while the previous load serves
    stamp: tuple = ()  # what it was loaded from (config, files): unchanged, a reload keeps the Model

    @property
    def state(self) -> str:
        return READY if self.model is not None else UNAVAILABLE


@dataclass
class LoadedModel:
    """A model as loaded: its versions, or the error that kept all of them out."""

    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    error: str = ""
    routing: Routing = field(default_factory=Routing)  # in force: the config's, or as changed since
    config_routing: Routing = field(default_factory=Routing)  # as config.pbtxt declares it
    stored_routing: StoredRouting | None = None  # as routing.json holds it when loaded (None: no such file)
    in_memory: str = ""  # why the routing in force is this replica's alone (the repository is read-only); "": it is
    _ready: dict[int, Model] | None = field(default=None, repr=False)
    _split: SplitTable | None = field(default=None, repr=False)

    def ready(self) -> dict[int, Model]:
        """The ready versions, ascending. Computed once: an entry does not change
        after it is published (a reload publishes a new one)."""
        if self._ready is None:
            self._ready = {v: s.model for v, s in sorted(self.versions.items()) if s.model is not None}
        return self._ready

    def route(self, request_id: str | None) -> Model | None:
        """The version for a call naming none: the split's pick (sticky on ``request_id``,
        random when it is empty; its heaviest target when None), else the highest ready one."""
        if self._split is None:
            self._split = SplitTable(self.routing, self.ready())
        model = self._split.primary() if request_id is None else self._split.choose(request_id)
        if model is None and self.ready():
            model = self.ready()[max(self.ready())]
        return model

    def pick(self, version: str, request_id: str | None = None) -> Model | None:
        """The one rule for which ready version answers a call naming ``version``: a
        version number or a label names one; "" leaves it to ``route``. None when no
        ready version answers (Repository.get says why)."""
        if not version:
            return self.route(request_id)
        number = self.routing.version_of(version)
        return self.ready().get(number) if number is not None else None

    def fixed_picks(self) -> dict[str, Model]:
        """Each version string whose pick is the same for every request, with its pick:
        what a table keyed by version string may hold (the native plane's). "" is one
        unless a split picks per request."""
        keys = [*map(str, self.ready()), *self.routing.labels, *([] if self.routing.split else [""])]
        return {key: model for key in keys if (model := self.pick(key)) is not None}

    def with_routing(self, routing: Routing, stored: StoredRouting | None, in_memory: str = "") -> LoadedModel:
        return LoadedModel(self.name, self.versions, self.error, routing, self.config_routing, stored, in_memory)

    def models(self) -> set[Model]:
        return set(self.ready().values())


class Repository:
    """Models of one local folder. Loads are serialized; lookups take no lock
    (a model's entry is replaced whole, which is atomic)."""

    def __init__(self, root: Path, *, default_max_batch_size: int = 32, max_models: int = 0,
                 max_queue_size: int = 0, device: int | None = None, store: ObjectStore | None = None,
                 drainer: Drainer | None = None, cache: ResponseCache | None = None,
                 routing_in_memory: bool = False) -> None:
        self.root = Path(root)
        self.default_max_batch_size = default_max_batch_size
        self.max_queue_size = max_queue_size  # per version, where its config sets none; 0: no limit
        self.device = device  # where models without instance_group run: a CUDA device id, None: the CPU
        self.max_models = max_models  # models loaded at once; 0: no limit
        self.store = store  # when set, root is its cache, synced before every load
        self.location = store.url if store is not None else str(self.root)  # as messages name it
        self._models: dict[str, LoadedModel] = {}
        self._load_lock = threading.RLock()  # reentrant: load holds it across the store's sync
        self.listeners: list[Callable[[str], None]] = []  # called with a model's name after it (un)loads
        self.drainer = drainer or Drainer()  # closes versions that left, once their requests finished
        self.cache = cache  # the response cache, for models whose config enables it; None: no cache
        self._loading: set[str] = set()  # ensembles being loaded: one that needs itself is a cycle
        # Where routing changes are written for every replica to follow (routing_store.py); None: memory only.
        self.routing_store: RoutingStore | None = None if routing_in_memory else \
            ObjectRoutingStore(store) if store is not None else FolderRoutingStore(self.root)

    # -- what is on disk --------------------------------------------------
    def model_names(self) -> list[str]:
        """Every model folder in the repository."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _model_dir(self, name: str) -> Path:
        """The folder of model ``name``: where every lookup of a name that is not loaded
        ends, so the one place a request's name is checked before it meets the disk."""
        check_name(name)
        path = self.root / name
        if "/" in name or name in ("", ".", "..") or not path.is_dir():
            raise not_found(f"no model '{shorten(name)}' in the repository {self.location}; "
                            f"it has: {', '.join(self.model_names()) or 'no models'}")
        return path

    # -- load / unload ----------------------------------------------------
    def load(self, name: str) -> LoadedModel:
        """(Re)load model ``name`` with the versions its policy selects.

        Failures are recorded in the result, not raised: a broken version is
        UNAVAILABLE with its reason, and the others serve."""
        check_name(name)  # before the store is asked for it
        with self._load_lock:  # the sync and the load after it, as one: no other load swaps files between
            failed = self.store.sync([name]).get(name, {}) if self.store is not None else {}
            return self._load_fetched(name, failed)

    def _load_fetched(self, name: str, failed: dict[int, str]) -> LoadedModel:
        """Load ``name`` from the folder; ``failed``: versions the store could not deliver."""
        model_dir = self._model_dir(name)
        with self._load_lock:
            self._check_room(name)
            previous = self._models.get(name)
            loaded = self._load(name, model_dir, previous)
            for version, reason in failed.items():  # shown as UNAVAILABLE, unless a cached copy serves
                loaded.versions.setdefault(version, VersionState(version, reason=reason))
            self._publish(name, loaded, previous)
        self._notify(name)
        return loaded

    def deploy(self, deployment: Deployment) -> LoadedModel:
        """Write ``deployment`` into the repository, each new version checked by loading it
        first (deploy.py; nothing is written when one fails), then (re)load the model."""
        name = deployment.name
        with self._load_lock:
            try:
                if self.store is not None:
                    self.store.sync([name])  # the cache as the store has it: the config a new version checks with
                self._check_room(name)  # before anything is written: a deploy that cannot load writes nothing
                existing = self._deployed_versions(name)
                if deployment.ensemble and self.store is not None:
                    raise InferenceServerError(grpc.StatusCode.FAILED_PRECONDITION, (
                        f"cannot deploy ensemble '{name}' to the object store {self.location}: an object store "
                        "keeps no empty version folder, which is all an ensemble's version is"))
                if deployment.ensemble:
                    self._check_no_files(name, existing)
                if not deployment.files and not existing and not deployment.ensemble:
                    raise not_found(f"no model '{name}' in the repository {self.location}: a deploy of a new model "
                                    "gives its files ('file:<version>/model.onnx')")
                staged = Staged(self.root, deployment)
                try:
                    staged.write(existing)
                    staged.check(self.root / name, self._check_version(name), self._check_ensemble(name))
                    staged.upload(self.store) if self.store is not None else staged.move_into(self.root / name)
                finally:
                    staged.remove()
            except OSError as e:  # the disk or the store (StoreError): nothing half-written was loaded
                raise unavailable(f"cannot deploy model '{name}' to {self.location}: {e}") from None
            log.info("model '%s': deployed %s to %s", name, ", ".join(f"version {v}" for v in staged.versions)
                     or "its config", self.location)
            return self.load(name)

    def _check_room(self, name: str) -> None:
        if self.max_models and name not in self._models and len(self._models) >= self.max_models:
            raise InferenceServerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"cannot load model '{name}': {len(self._models)} models are loaded, the limit set by "
                "--max-loaded-models; unload one first or raise the limit")

    def _deployed_versions(self, name: str) -> dict:
        """The versions the repository holds of ``name`` (maybe none), each with a check of
        whether a file of it has given bytes."""
        if self.store is not None:
            stored = self.store.models().get(name)
            if stored is None:
                return {}
            if stored.layout != "triton":
                raise InferenceServerError(grpc.StatusCode.FAILED_PRECONDITION, (
                    f"model '{name}' is one object in {self.location} (lIteCOW's layout): add versions to it "
                    "with icow import-model"))
            return {v: same_as_objects({f.relpath: (f.size, f.etag) for f in files})
                    for v, files in self.store.versions(stored)[0].items()}
        model_dir = self.root / name
        if model_dir.exists() and not model_dir.is_dir():
            raise invalid(f"'{name}' in the repository {self.location} is a file, not a model folder")
        return {v: same_as_folder(model_dir / str(v)) for v in versions_on_disk(model_dir)} \
            if model_dir.is_dir() else {}

    def _check_version(self, name: str) -> Callable[[int, Path, mc.ModelConfig], None]:
        def load(version: int, path: Path, config: mc.ModelConfig) -> None:
            Model(name, version, path, config, self.default_max_batch_size, self.max_queue_size, self.device).close()
        return load

    def _check_no_files(self, name: str, versions: Iterable[int]) -> None:
        """An ensemble deployed over a model: its versions must be empty folders already."""
        filled = [v for v in sorted(versions) if any((self.root / name / str(v)).iterdir())]
        if filled:
            raise invalid(f"model '{name}' has versions that hold files ({', '.join(map(str, filled[:4]))}); an "
                          "ensemble's versions are empty folders: deploy it under another name, or remove the model "
                          "from the repository first")

    def _check_ensemble(self, name: str) -> Callable[[mc.ModelConfig], None]:
        def check(config: mc.ModelConfig) -> None:
            """The deployed ensemble's steps against the models they would run now: INVALID_ARGUMENT
            naming the step for a fault of the config, FAILED_PRECONDITION for a step model not ready."""
            try:
                graph = self._ensemble_graph(name, config)  # loads the step models not loaded, as its load would
                self._check_no_cycle(name, graph)
                models = [self._step_model(name, step) for step in graph.steps]
                check_models(graph, config, models)
            except cfg.ConfigError as e:
                raise invalid(f"ensemble '{name}' cannot run, nothing was written: {e}") from None
        return check

    def _step_model(self, name: str, step: Step) -> Model | Ensemble:
        try:
            return self.get(step.model, step.version)
        except InferenceServerError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:  # no such model, version or label: the config's fault
                raise cfg.ConfigError(f"{step}: {e.message}") from None
            raise InferenceServerError(grpc.StatusCode.FAILED_PRECONDITION, (
                f"ensemble '{name}' {step} is not ready, nothing was written: {e.message}; load or deploy "
                f"'{step.model}' first")) from None

    def _check_no_cycle(self, name: str, graph: Graph) -> None:
        """Refuse an ensemble that runs itself through the loaded ensembles its steps run."""
        for step in graph.steps:
            seen: set[str] = set()
            todo = [step.model]
            while todo:
                model = todo.pop()
                if model == name:
                    raise cfg.ConfigError(f"{step}: '{step.model}' runs, through its steps, ensemble '{name}' "
                                          "(a cycle of ensembles)")
                if model not in seen:
                    seen.add(model)
                    todo.extend(self._steps_run_by(model))

    def _steps_run_by(self, model: str) -> set[str]:
        """The models the ready versions of ensemble ``model`` run (none for any other model)."""
        loaded = self._models.get(model)
        versions = loaded.ready().values() if loaded is not None else ()
        return {s.model for v in versions if isinstance(v, Ensemble) for s in v.graph.steps}

    def unload(self, name: str) -> None:
        """Stop serving ``name`` at once; requests already running finish on it, then its
        versions close. A model whose folder is gone (poll mode) may be unloaded too."""
        if name not in self._models:
            self._model_dir(name)
        with self._load_lock:
            previous = self._models.pop(name, None)
            if previous is not None:
                self.drainer.retire(previous.models())
                log.info("unloaded model '%s'", name)
        self._notify(name)

    def _publish(self, name: str, loaded: LoadedModel, previous: LoadedModel | None) -> None:
        """Put ``loaded`` in force in one step; versions it no longer has are drained."""
        self._models[name] = loaded
        problems = loaded.routing.problems(loaded.ready())
        if problems:
            log.warning("model '%s': %s (requests for them fail; the split uses what is ready)",
                        name, "; ".join(problems))
        if previous is not None:
            self.drainer.retire(previous.models() - loaded.models())

    def set_routing(self, name: str, *, labels: Mapping[str, int] | None = None, removed: Sequence[str] = (),
                    split: Sequence[tuple[str, int]] | None = None, expected_generation: int = 0) -> LoadedModel:
        """Set or move ``labels``, drop ``removed`` ones, replace the split (unless None),
        all in one step. Every label and split target must name a ready version: a
        change never sends traffic to a version that cannot answer.

        The change is made over the routing the repository holds now and written back
        to it (routing_store.py) before it is put in force here; ABORTED when
        ``expected_generation`` is not the generation now, or when another replica
        wrote in between. A read-only repository keeps it in this replica's memory."""
        def changed(current: LoadedModel, base: Routing) -> Routing:
            return _changed_routing(current, base, labels, removed, split, expected_generation)

        with self._load_lock:
            current = self._loaded(name)
            if self.routing_store is not None:
                updated = self._write_routing(current, changed)
            else:
                updated = current.with_routing(changed(current, current.routing), current.stored_routing,
                                               current.in_memory or _IN_MEMORY_FLAG)
            self._models[name] = updated
        routing = updated.routing
        log.info("model '%s' routing (generation %d%s): labels %s; split %s", name, routing.generation,
                 ", this replica only" if updated.in_memory else "", describe_labels(routing) or "none",
                 describe_split(routing) or "none (the highest version)")
        self._notify(name)
        return updated

    def _write_routing(self, current: LoadedModel,
                       changed: Callable[[LoadedModel, Routing], Routing]) -> LoadedModel:
        """Write the routing ``changed`` makes of the one the repository holds, in one compare-and-swap,
        and return the entry to publish (a memory-only one when the repository is read-only)."""
        assert self.routing_store is not None
        name = current.name
        try:
            with self.routing_store.transaction(name) as (stored, write):
                base = stored.in_force(current.config_routing) if stored is not None else current.routing
                routing = changed(current, base)
                new = StoredRouting(routing, current.config_routing)
                write(new)
        except ReadOnly as e:
            log.warning("model '%s': the routing change stays in this replica's memory: %s", name, e)
            return current.with_routing(changed(current, current.routing), current.stored_routing,
                                        f"kept in this replica's memory only: {e}")
        except Conflict as e:
            raise InferenceServerError(grpc.StatusCode.ABORTED, f"the routing of model '{name}' was changed by "
                                       f"another writer at the same time ({e}): read it again") from None
        except cfg.ConfigError as e:
            raise InferenceServerError(grpc.StatusCode.FAILED_PRECONDITION, f"model '{name}': {e}") from None
        except OSError as e:
            raise unavailable(f"cannot write the routing of model '{name}' to {self.location}: {e}") from None
        return current.with_routing(routing, new)

    def follow_routing(self, name: str) -> bool:
        """Put in force the routing the repository holds for ``name`` now (routing.json changed:
        another replica's change), without loading anything. Whether it changed."""
        with self._load_lock:
            current = self._models.get(name)
            if current is None or current.error:
                return False
            try:
                stored = read_cached(self.root / name)
            except cfg.ConfigError as e:
                log.error("model '%s': the routing in force stays: %s", name, e)
                return False
            routing = _routing_in_force(current.config_routing, stored, current)
            if routing == current.routing:
                return False
            self._models[name] = updated = current.with_routing(routing, stored, "")
        log.info("model '%s' follows the repository's routing (generation %d): labels %s; split %s", name,
                 routing.generation, describe_labels(routing) or "none",
                 describe_split(routing) or "none (the highest version)")
        if updated.routing.problems(updated.ready()):
            log.warning("model '%s': %s", name, "; ".join(updated.routing.problems(updated.ready())))
        self._notify(name)
        return True

    def sync_store(self) -> None:
        """With an object store, bring the whole cache up to date (poll mode: the poller
        then sees in the folder what changed in the store)."""
        if self.store is not None:
            with self._load_lock:
                self.store.sync()

    def _notify(self, name: str) -> None:
        for listener in self.listeners:
            listener(name)

    def load_all(self, names: list[str] | None = None) -> None:
        with self._load_lock:
            failed = self.store.sync(names) if self.store is not None else {}
            for name in sorted(self.model_names() if names is None else names, key=self._ensembles_last):
                try:
                    self._load_fetched(name, failed.get(name, {}))
                except InferenceServerError as e:  # over --max-loaded-models: the others still serve
                    log.error("model '%s' is not loaded: %s", name, e.message)

    def _load(self, name: str, model_dir: Path, previous: LoadedModel | None) -> LoadedModel:
        loaded = LoadedModel(name)
        try:
            config = cfg.read_config(model_dir)
            config_fields.check(config, name)  # a field icow would not act on is refused here
            loaded.config_routing = routing.from_config(config)
            loaded.stored_routing = read_cached(model_dir)
            loaded.routing = _routing_in_force(loaded.config_routing, loaded.stored_routing, previous)
            if previous is not None and loaded.routing is previous.routing:
                loaded.in_memory = previous.in_memory
            on_disk = versions_on_disk(model_dir)
            versions = sorted(set(policy_versions(on_disk, config.version_policy))
                              | (loaded.routing.pinned() & set(on_disk)))
            graph = self._ensemble_graph(name, config)
        except cfg.ConfigError as e:
            if previous is not None and previous.ready():  # a bad edit: what was loaded serves on
                log.error("model '%s': reload failed, the versions loaded before serve on: %s", name, e)
                return _kept(previous, f"reload failed, the version loaded before serves on: {e}")
            loaded.error = str(e)
            log.error("model '%s' is unavailable: %s", name, e)
            return loaded
        if not versions:
            loaded.error = (f"no version folder (a positive integer) in {model_dir}: an ensemble has one, empty "
                            "(as in Triton)" if graph is not None else
                            f"no version folder (a positive integer) with a model file in {model_dir}")
            log.error("model '%s' is unavailable: %s", name, loaded.error)
        filename = config.default_model_filename or cfg.DEFAULT_MODEL_FILENAME
        config_key = routing.without_routing(config)
        for version in versions:
            old = previous.versions.get(version) if previous is not None else None
            stamp = (config_key, files_stamp(model_dir / str(version)))
            if old is not None and old.model is not None and old.stamp == stamp:
                loaded.versions[version] = dataclasses.replace(old, reason="")  # unchanged: it serves on
                continue
            state = self._load_ensemble(name, version, config, graph) if graph is not None else \
                self._load_version(name, version, model_dir / str(version) / filename, config)
            state.stamp = stamp
            if state.model is None and old is not None and old.model is not None:
                log.error("model '%s' version %d: the version loaded before serves on", name, version)
                state = VersionState(version, old.model, f"reload failed, the version loaded before serves on: "
                                     f"{state.reason}", old.stamp)
            loaded.versions[version] = state
        _keep_until_ready(loaded, previous)
        return loaded

    def _load_version(self, name: str, version: int, path: Path, config: mc.ModelConfig) -> VersionState:
        try:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            model = Model(name, version, path, config, self.default_max_batch_size, self.max_queue_size,
                          self.device, self.cache)
        except Exception as e:  # any fault of the file: the server stays up
            reason = f"failed to load {path}: {e}"
            log.error("model '%s' version %d is unavailable: %s", name, version, reason)
            return VersionState(version, reason=reason)
        try:  # before the version is published: it takes no traffic until warmed up
            warmed = warm_up(model, path.parent.parent)
        except Exception as e:
            model.close()
            reason = f"warm-up failed: {e}"
            log.error("model '%s' version %d is unavailable: %s", name, version, reason)
            return VersionState(version, reason=reason)
        if warmed is not None:
            log.info("warmed up model '%s' version %d: %s", name, version, warmed)
        log.info("model '%s' version %d is ready (%s) on %s", name, version, path, _placement(model))
        return VersionState(version, model=model)

    # -- ensembles ----------------------------------------------------------
    def _ensembles_last(self, name: str) -> tuple[bool, str]:
        """Sort key of a startup load: ensembles after the models they run."""
        try:
            return is_ensemble(cfg.read_config(self.root / name)), name
        except (cfg.ConfigError, OSError):
            return False, name

    def _ensemble_graph(self, name: str, config: mc.ModelConfig) -> Graph | None:
        """An ensemble's checked graph, its composing models loaded first where they are
        not (as Triton does); None for any other model."""
        if not is_ensemble(config):
            return None
        graph = read_graph(config)
        self._loading.add(name)
        try:
            for step in graph.steps:
                if step.model in self._loading:
                    raise cfg.ConfigError(f"{step}: ensemble '{step.model}' runs, through its steps, ensemble "
                                          f"'{name}' (a cycle of ensembles)")
                if step.model not in self._models and step.model in self.model_names():
                    try:
                        self.load(step.model)
                    except InferenceServerError as e:  # e.g. --max-loaded-models: the check below says so
                        log.error("model '%s' (run by ensemble '%s') is not loaded: %s", step.model, name, e.message)
        finally:
            self._loading.discard(name)
        return graph

    def _load_ensemble(self, name: str, version: int, config: mc.ModelConfig, graph: Graph) -> VersionState:
        """An ensemble version, ready once every step's model is ready and fits the graph."""
        ensemble = Ensemble(name, version, config, graph, self.get)
        try:
            ensemble.composing()
        except InferenceServerError as e:
            log.error("model '%s' version %d is unavailable: %s", name, version, e.message)
            return VersionState(version, reason=e.message)
        log.info("ensemble '%s' version %d is ready: %s", name, version,
                 " -> ".join(" + ".join(map(str, level)) for level in graph.levels))
        return VersionState(version, model=ensemble)

    # -- lookups ----------------------------------------------------------
    def get(self, name: str, version: str = "", request_id: str | None = None) -> Model:
        """The ready model for a call: ``version`` is a version number or a label.

        Empty, the model's traffic split picks one for an inference (``request_id``
        its id, "" when it has none: sticky on the id, else weighted random); for
        other calls (``request_id`` None) the split's heaviest target. Without a
        split: the highest ready version. The Model returned serves the request
        to its end, whatever is loaded or routed meanwhile.

        Raises NOT_FOUND for an unknown model, version or label, UNAVAILABLE for a
        model or version that exists but is not ready."""
        loaded = self._loaded(name)
        check_name(version, "version or label")  # a 5000-digit "version" must not reach int()
        model = loaded.pick(version, request_id)
        if isinstance(model, Ensemble):
            model.composing()  # UNAVAILABLE, naming the step, while a model it runs is not ready
        if model is not None:
            return model
        if not version:
            raise unavailable(f"model '{name}' has no ready version: {self._reasons(loaded)}")
        ready = loaded.ready()
        number = loaded.routing.version_of(version)
        named = f"label '{version}' (version {number})" if number is not None and not version.isdigit() \
            else f"version {number}"
        state = loaded.versions.get(number) if number is not None else None
        if state is not None:
            raise unavailable(f"model '{name}' {named} is not ready: {state.reason}")
        listed = ", ".join(map(str, ready)) or "none"
        labels = describe_labels(loaded.routing)
        what = f"version '{version}' loaded" if version.isdigit() else \
            f"{named} loaded" if number is not None else f"version or label '{shorten(version)}'"
        raise not_found(f"model '{name}' has no {what}; ready versions: {listed}"
                        + (f"; labels: {labels}" if labels else ""))

    def composing_names(self) -> set[str]:
        """The models that the ready ensembles run."""
        return {step.model for loaded in self.loaded() for model in loaded.ready().values()
                if isinstance(model, Ensemble) for step in model.graph.steps}

    def get_loaded(self, name: str) -> LoadedModel:
        return self._loaded(name)

    def loaded(self) -> list[LoadedModel]:
        return [self._models[n] for n in sorted(self._models)]

    def _loaded(self, name: str) -> LoadedModel:
        loaded = self._models.get(name)
        if loaded is not None:
            return loaded
        self._model_dir(name)  # NOT_FOUND when not in the repository at all
        raise unavailable(f"model '{name}' is not loaded")

    @staticmethod
    def _reasons(loaded: LoadedModel) -> str:
        if loaded.error:
            return loaded.error
        return "; ".join(f"version {v}: {s.reason}" for v, s in sorted(loaded.versions.items())) or "none"

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """One entry per version of every loaded model and one per model not loaded."""
        entries = []
        for name in self.model_names():
            loaded = self._models.get(name)
            if loaded is None:
                entries.append(IndexEntry(name, "", UNAVAILABLE, "unloaded"))
            elif loaded.error:
                entries.append(IndexEntry(name, "", UNAVAILABLE, loaded.error))
            else:
                entries.extend(_index_entry(name, v, s) for v, s in sorted(loaded.versions.items()))
        return [e for e in entries if e.state == READY] if ready_only else entries


def _index_entry(name: str, version: int, state: VersionState) -> IndexEntry:
    """A version as the index shows it: an ensemble is UNAVAILABLE while a model it runs is not ready."""
    if isinstance(state.model, Ensemble):
        try:
            state.model.composing()
        except InferenceServerError as e:
            return IndexEntry(name, str(version), UNAVAILABLE, e.message)
    return IndexEntry(name, str(version), state.state, state.reason)


def _placement(model: Model) -> str:
    """Where a model's instances run, for the log: "CPU x2", "GPU 0 x1 (TensorrtExecutionProvider, ...)"."""
    groups = ", ".join(f"{'GPU ' + str(g.gpus[0]) if g.gpus else 'CPU'} x{g.count}"
                       for g in model.config.instance_group)
    return f"{groups} ({model.config.parameters['execution_providers'].string_value})"






def describe_labels(routing: Routing) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(routing.labels.items()))


def describe_split(routing: Routing) -> str:
    return ", ".join(f"{t}={w}" for t, w in routing.split)


def _routing_in_force(from_config: Routing, stored: StoredRouting | None, previous: LoadedModel | None) -> Routing:
    """What the repository says: routing.json's routing (config.pbtxt's when that changed since the file
    was written, or when there is no file). Unless neither changed since the last load: then what is in
    force stays (a reload does not undo a change kept in memory)."""
    if previous is not None and previous.config_routing == from_config and previous.stored_routing == stored:
        return previous.routing
    if stored is not None:
        return stored.in_force(from_config)
    if previous is None:
        return from_config
    return dataclasses.replace(from_config, generation=previous.routing.generation + 1)


_IN_MEMORY_FLAG = "kept in this replica's memory only: icow serve --routing-in-memory"


def _changed_routing(current: LoadedModel, base: Routing, labels: Mapping[str, int] | None, removed: Sequence[str],
                     split: Sequence[tuple[str, int]] | None, expected_generation: int) -> Routing:
    """``base`` with a SetRouting's changes, each checked: the generation, the labels removed, the
    result's form, and that it names only versions ready on this replica."""
    name = current.name
    if expected_generation and expected_generation != base.generation:
        raise InferenceServerError(
            grpc.StatusCode.ABORTED, f"the routing of model '{name}' changed since generation "
            f"{expected_generation} (it is at {base.generation}): read it again")
    unknown = [label for label in removed if label not in base.labels]
    if unknown:
        raise not_found(f"model '{name}' has no label {', '.join(repr(shorten(k)) for k in unknown)}")
    try:
        routing = base.with_changes(labels, removed, split)
    except ValueError as e:
        raise invalid(f"model '{name}': {e}") from None
    problems = routing.problems(current.ready())
    if problems:
        raise InferenceServerError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"cannot route model '{name}' so: {'; '.join(problems)}")
    return routing


def _keep_until_ready(loaded: LoadedModel, previous: LoadedModel | None) -> None:
    """A version the policy newly picks failed to load: the ones serving before it,
    which the policy now leaves out, serve on until it loads (a broken new version
    never takes a model's traffic away)."""
    if previous is None:
        return
    failed = [v for v, s in loaded.versions.items() if s.model is None and v not in previous.ready()]
    if not failed:
        return
    for version, state in previous.versions.items():
        if state.model is not None and version not in loaded.versions:
            loaded.versions[version] = dataclasses.replace(
                state, reason=f"serves on until version {', '.join(map(str, failed))} loads")


def _kept(previous: LoadedModel, reason: str) -> LoadedModel:
    """``previous`` served on after a failed reload, each ready version saying why."""
    versions = {v: dataclasses.replace(s, reason=reason) if s.model is not None else s
                for v, s in previous.versions.items()}
    return LoadedModel(previous.name, versions, previous.error, previous.routing, previous.config_routing,
                       previous.stored_routing, previous.in_memory)
