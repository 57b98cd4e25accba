"""The model repository: finding models and versions on disk, loading and
unloading them, and resolving a request's model name and version.

Layout (Triton's): ``<root>/<model>/config.pbtxt`` (optional) and
``<root>/<model>/<version>/model.onnx`` with positive integer versions.
With an object store, ``<root>`` is its local cache, brought up to date before
models load (see object_store.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import grpc

from . import config as cfg
from ._proto import model_config_pb2 as mc
from .errors import InferenceServerError, not_found, unavailable
from .model import Model

if TYPE_CHECKING:
    from .object_store import ObjectStore

log = logging.getLogger("icow.repository")

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
    model: Model | None = None
    reason: str = ""  # why it is not ready

    @property
    def state(self) -> str:
        return READY if self.model is not None else UNAVAILABLE


@dataclass
class LoadedModel:
    """A model as loaded: its versions, or the error that kept all of them out."""

    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    error: str = ""
    _ready: dict[int, Model] | None = field(default=None, repr=False)

    def ready(self) -> dict[int, Model]:
        """The ready versions, ascending. Computed once: an entry does not change
        after it is published (a reload publishes a new one)."""
        if self._ready is None:
            self._ready = {v: s.model for v, s in sorted(self.versions.items()) if s.model is not None}
        return self._ready


class Repository:
    """Models of one local folder. Loads are serialized; lookups take no lock
    (a model's entry is replaced whole, which is atomic)."""

    def __init__(self, root: Path, *, default_max_batch_size: int = 32, max_models: int = 0,
                 max_queue_size: int = 0, device: int | None = None, store: ObjectStore | None = None) -> None:
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

    # -- what is on disk --------------------------------------------------
    def model_names(self) -> list[str]:
        """Every model folder in the repository."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _model_dir(self, name: str) -> Path:
        path = self.root / name
        if "/" in name or name in ("", ".", "..") or not path.is_dir():
            raise not_found(f"no model '{name}' in the repository {self.location}; "
                            f"it has: {', '.join(self.model_names()) or 'no models'}")
        return path

    # -- load / unload ----------------------------------------------------
    def load(self, name: str) -> LoadedModel:
        """(Re)load model ``name`` with the versions its policy selects.

        Failures are recorded in the result, not raised: a broken version is
        UNAVAILABLE with its reason, and the others serve."""
        with self._load_lock:  # the sync and the load after it, as one: no other load swaps files between
            failed = self.store.sync([name]).get(name, {}) if self.store is not None else {}
            return self._load_fetched(name, failed)

    def _load_fetched(self, name: str, failed: dict[int, str]) -> LoadedModel:
        """Load ``name`` from the folder; ``failed``: versions the store could not deliver."""
        model_dir = self._model_dir(name)
        with self._load_lock:
            if self.max_models and name not in self._models and len(self._models) >= self.max_models:
                raise InferenceServerError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"cannot load model '{name}': {len(self._models)} models are loaded, the limit set by "
                    "--max-loaded-models; unload one first or raise the limit")
            loaded = self._load(name, model_dir)
            for version, reason in failed.items():  # shown as UNAVAILABLE, unless a cached copy serves
                loaded.versions.setdefault(version, VersionState(version, reason=reason))
            self._models[name] = loaded
        self._notify(name)
        return loaded

    def unload(self, name: str) -> None:
        """Stop serving ``name``; requests already running finish on it."""
        self._model_dir(name)
        with self._load_lock:
            if self._models.pop(name, None) is not None:
                log.info("unloaded model '%s'", name)
        self._notify(name)

    def _notify(self, name: str) -> None:
        for listener in self.listeners:
            listener(name)

    def load_all(self, names: list[str] | None = None) -> None:
        with self._load_lock:
            failed = self.store.sync(names) if self.store is not None else {}
            for name in self.model_names() if names is None else names:
                try:
                    self._load_fetched(name, failed.get(name, {}))
                except InferenceServerError as e:  # over --max-loaded-models: the others still serve
                    log.error("model '%s' is not loaded: %s", name, e.message)

    def _load(self, name: str, model_dir: Path) -> LoadedModel:
        loaded = LoadedModel(name)
        try:
            config = cfg.read_config(model_dir)
            versions = select_versions(model_dir, config.version_policy)
        except cfg.ConfigError as e:
            loaded.error = str(e)
            log.error("model '%s' is unavailable: %s", name, e)
            return loaded
        if not versions:
            loaded.error = f"no version folder (a positive integer) with a model file in {model_dir}"
            log.error("model '%s' is unavailable: %s", name, loaded.error)
        filename = config.default_model_filename or cfg.DEFAULT_MODEL_FILENAME
        for version in versions:
            loaded.versions[version] = self._load_version(name, version, model_dir / str(version) / filename,
                                                          config)
        return loaded

    def _load_version(self, name: str, version: int, path: Path, config: mc.ModelConfig) -> VersionState:
        try:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            model = Model(name, version, path, config, self.default_max_batch_size, self.max_queue_size,
                          self.device)
        except Exception as e:  # any fault of the file: the server stays up
            reason = f"failed to load {path}: {e}"
            log.error("model '%s' version %d is unavailable: %s", name, version, reason)
            return VersionState(version, reason=reason)
        log.info("model '%s' version %d is ready (%s) on %s", name, version, path, _placement(model))
        return VersionState(version, model=model)

    # -- lookups ----------------------------------------------------------
    def get(self, name: str, version: str = "") -> Model:
        """The ready model for a request: ``version`` empty picks the highest ready one.

        Raises NOT_FOUND for an unknown model or version, UNAVAILABLE for a model
        or version that exists but is not ready."""
        loaded = self._loaded(name)
        ready = loaded.ready()
        if not version:
            if not ready:
                raise unavailable(f"model '{name}' has no ready version: {self._reasons(loaded)}")
            return ready[max(ready)]
        number = parse_version(version)
        if number in ready:
            return ready[number]
        state = loaded.versions.get(number) if number is not None else None
        if state is not None:
            raise unavailable(f"model '{name}' version {number} is not ready: {state.reason}")
        listed = ", ".join(map(str, ready)) or "none"
        raise not_found(f"model '{name}' has no version '{version}' loaded; ready versions: {listed}")

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
                entries.extend(IndexEntry(name, str(v), s.state, s.reason)
                               for v, s in sorted(loaded.versions.items()))
        return [e for e in entries if e.state == READY] if ready_only else entries


def _placement(model: Model) -> str:
    """Where a model's instances run, for the log: "CPU x2", "GPU 0 x1 (TensorrtExecutionProvider, ...)"."""
    groups = ", ".join(f"{'GPU ' + str(g.gpus[0]) if g.gpus else 'CPU'} x{g.count}"
                       for g in model.config.instance_group)
    return f"{groups} ({model.config.parameters['execution_providers'].string_value})"


def parse_version(text: str) -> int | None:
    """A version string as a number; None when it is not a positive integer."""
    return int(text) if text.isdigit() and int(text) > 0 else None


def select_versions(model_dir: Path, policy: mc.ModelVersionPolicy) -> list[int]:
    """The versions to load: the policy applied to the version folders on disk.

    Default policy: the latest one. A version that ``specific`` names but that
    is not on disk is kept, so that it shows as UNAVAILABLE with its reason."""
    on_disk = sorted(v for p in model_dir.iterdir() if p.is_dir() and (v := parse_version(p.name)))
    return policy_versions(on_disk, policy)


def policy_versions(available: list[int], policy: mc.ModelVersionPolicy) -> list[int]:
    """The versions ``policy`` picks from the sorted ``available`` ones (see select_versions)."""
    on_disk = available
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return on_disk
    if choice == "specific":
        return sorted(set(policy.specific.versions))
    count = policy.latest.num_versions if choice == "latest" else 1
    if count < 1:
        raise cfg.ConfigError("version_policy latest needs num_versions >= 1")
    return on_disk[-count:]
