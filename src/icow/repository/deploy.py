"""Deploy over the wire (Triton's repository extension): RepositoryModelLoad's
``config`` parameter (a model config in JSON) and ``file:<version>/<file>``
parameters (the files' bytes) become version folders and config.pbtxt of the
repository, local or in the object store, so that they survive a restart.

Nothing reaches the repository before it is checked: names and paths first, then
the files are written to a hidden staging folder beside the models and every new
version is loaded there (ONNX Runtime, the config completed against the graph).
Only then are they moved into place (a folder) or uploaded (a store), and the
model loads as any other: its version policy and labels govern it.

An ensemble (``platform: "ensemble"``) comes as its config alone, as in Triton: its
versions are empty folders (version 1, or those a ``specific`` policy names), and its
graph is checked against the models its steps run instead of loading a file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format, text_format

from .._proto import model_config_pb2 as mc
from ..protocol.errors import InferenceServerError, invalid
from ..protocol.names import check_name, shorten
from ..runtime import config as cfg
from ..runtime import config_fields
from ..runtime.ensemble_graph import is_ensemble, read_graph
from . import routing
from .versions import policy_versions, versions_on_disk

if TYPE_CHECKING:
    from .object_store import ObjectStore

FILE_PREFIX = "file:"
# "file:<version>/<file name>": a positive version and one plain file name, nothing else.
_FILE_KEY = re.compile(r"^([1-9][0-9]{0,17})/([A-Za-z0-9_][A-Za-z0-9_.+-]{0,254})$")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
MAX_ENSEMBLE_VERSIONS = 100  # empty folders one deploy may create: a policy listing a million is refused

# Loads one version as the repository would: (version, model file, config); raises on any fault.
CheckVersion = Callable[[int, Path, mc.ModelConfig], None]
# Checks an ensemble's config against the models its steps run; raises InferenceServerError.
CheckEnsemble = Callable[[mc.ModelConfig], None]


@dataclass(frozen=True)
class Deployment:
    """What a load request brings: the config (None: keep the repository's) and the
    files of each version (file name to bytes)."""

    name: str
    config: mc.ModelConfig | None = None
    files: dict[int, dict[str, bytes]] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return (self.config.default_model_filename if self.config is not None else "") or cfg.DEFAULT_MODEL_FILENAME

    @property
    def ensemble(self) -> bool:
        return self.config is not None and is_ensemble(self.config)


def parse(name: str, config_json: str | None, files: Mapping[str, bytes]) -> Deployment:
    """A Deployment from a load request's parameters; INVALID_ARGUMENT for a hostile
    model name or file name, a config that is not a ModelConfig in JSON, or one that
    names another model. As Triton's: files need a config (it is the model's config)."""
    check_model_name(name)
    if files and config_json is None:
        raise invalid(f"model '{shorten(name)}': 'file:' parameters need the 'config' parameter too (as in "
                      "Triton): the JSON model config the files are served with ('{}': all from the ONNX graph)")
    config = _parse_config(name, config_json) if config_json is not None else None
    versions: dict[int, dict[str, bytes]] = {}
    for key, data in files.items():
        match = _FILE_KEY.match(key.removeprefix(FILE_PREFIX))
        if not key.startswith(FILE_PREFIX) or match is None:
            raise invalid(f"load parameter '{shorten(key)}' is not 'file:<version>/<file name>' (a positive "
                          "version number, one file name of letters, digits, '_', '.', '+', '-'; no folders)")
        versions.setdefault(int(match[1]), {})[match[2]] = data
    deployment = Deployment(name, config, versions)
    if deployment.ensemble and files:
        raise invalid(f"model '{name}' is an ensemble (platform \"ensemble\"): an ensemble's versions hold no files "
                      f"(as in Triton); send its config alone, without {', '.join(sorted(map(shorten, files))[:4])}")
    for version, named in versions.items():
        if deployment.filename not in named:
            raise invalid(f"model '{name}' version {version}: no 'file:{version}/{deployment.filename}' parameter, "
                          f"the model file (config default_model_filename)")
    return deployment


def check_model_name(name: str) -> None:
    """A model name that is one plain folder name: never a path, never hidden."""
    check_name(name)
    if (not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise invalid(f"'{shorten(name)}' is not a model name a deploy may create: one folder name, not "
                      "starting with '.', without '/', '\\' or control characters")


def _parse_config(name: str, text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as e:
        raise invalid(f"model '{name}': the 'config' parameter is not a model config in JSON: {e}") from None
    if config.name and config.name != name:
        raise invalid(f"the 'config' parameter names the model '{shorten(config.name)}', the request '{name}'")
    try:
        config_fields.check(config, name)  # a field icow would not act on: refused before anything is written
        routing.from_config(config)
        policy_versions([1], config.version_policy)
        if is_ensemble(config):
            read_graph(config)  # what the config alone shows (a cycle, a tensor no step makes), naming the step
            ensemble_versions(config, [])
    except cfg.ConfigError as e:
        raise invalid(f"model '{name}': {e}") from None
    return config


def ensemble_versions(config: mc.ModelConfig, existing: Collection[int]) -> list[int]:
    """The empty version folders a deployed ensemble adds: those its ``specific`` policy
    names, else version 1 for a new one (one that has versions keeps them)."""
    policy = config.version_policy
    wanted = set(policy.specific.versions) if policy.WhichOneof("policy_choice") == "specific" else \
        set() if existing else {1}
    if any(v < 1 for v in wanted) or len(wanted) > MAX_ENSEMBLE_VERSIONS:
        raise cfg.ConfigError(f"an ensemble's version_policy specific names positive versions, at most "
                              f"{MAX_ENSEMBLE_VERSIONS}: they become its empty version folders")
    return sorted(wanted - set(existing))


class Staged:
    """A deployment written to a hidden folder beside the models, checked there."""

    def __init__(self, root: Path, deployment: Deployment) -> None:
        self.deployment = deployment
        self.folder = root / f".deploy-{uuid.uuid4().hex}"
        self.versions: list[int] = []  # the versions that are new (identical ones already there are left out)

    def write(self, existing: Mapping[int, Callable[[str, bytes], bool]]) -> None:
        """Write the config and each version not yet there. ``existing``: per version
        the repository holds, whether a file of it has these bytes (then the version is
        the same deploy again, and skipped); a different one is ALREADY_EXISTS."""
        self.folder.mkdir(parents=True)
        d = self.deployment
        if d.config is not None:
            (self.folder / cfg.CONFIG_FILE).write_text(text_format.MessageToString(d.config))
        if d.ensemble and d.config is not None:
            for version in ensemble_versions(d.config, existing):
                (self.folder / str(version)).mkdir()
                self.versions.append(version)
        for version, files in sorted(d.files.items()):
            same = existing.get(version)
            if same is not None:
                if all(same(n, data) for n, data in files.items()):
                    continue
                raise InferenceServerError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"model '{d.name}' already has a version {version} with other files: a deploy never "
                    "replaces a version; give another version number")
            for filename, data in files.items():
                path = self.folder / str(version) / filename
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
            self.versions.append(version)

    def check(self, model_dir: Path, load: CheckVersion, check_ensemble: CheckEnsemble) -> None:
        """Load every new version with the config it will be served with (the new one,
        else the repository's); with no new version (a config, or files it already
        has), the versions the config's policy picks. An ensemble has no file to load:
        its graph is checked against the models it runs, once for all its versions."""
        config = self.deployment.config if self.deployment.config is not None else cfg.read_config(model_dir)
        if is_ensemble(config):
            check_ensemble(config)
            return
        filename = config.default_model_filename or cfg.DEFAULT_MODEL_FILENAME
        targets = [(v, self.folder / str(v) / filename) for v in self.versions]
        if not self.versions and model_dir.is_dir():
            on_disk = versions_on_disk(model_dir)
            targets = [(v, model_dir / str(v) / filename) for v in policy_versions(on_disk, config.version_policy)
                       if v in on_disk]
        for version, path in targets:
            try:
                load(version, path, config)
            except Exception as e:  # the file or the config: the client's, said in full
                raise invalid(f"model '{self.deployment.name}' version {version} does not load, nothing was "
                              f"written: {e}") from None

    def move_into(self, model_dir: Path) -> None:
        """Put the checked versions and config in place: versions first, each whole."""
        model_dir.mkdir(exist_ok=True)
        for version in self.versions:
            (self.folder / str(version)).rename(model_dir / str(version))
        if self.deployment.config is not None:
            (self.folder / cfg.CONFIG_FILE).replace(model_dir / cfg.CONFIG_FILE)

    def upload(self, store: ObjectStore) -> None:
        """Put the checked versions and config into the store: versions first."""
        name = self.deployment.name
        for version in self.versions:
            for path in sorted((self.folder / str(version)).iterdir()):
                store.put(store.location.key(name, str(version), path.name), path)
        if self.deployment.config is not None:
            store.put(store.location.key(name, cfg.CONFIG_FILE), self.folder / cfg.CONFIG_FILE)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def same_as_folder(version_dir: Path) -> Callable[[str, bytes], bool]:
    """Whether a file of ``version_dir`` holds exactly these bytes."""
    def same(filename: str, data: bytes) -> bool:
        path = version_dir / filename
        return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    return same


def same_as_objects(etags: Mapping[str, tuple[int, str]]) -> Callable[[str, bytes], bool]:
    """Whether an object of a stored version (file name to size and ETag) holds these
    bytes; a multipart ETag (no MD5) never matches."""
    def same(filename: str, data: bytes) -> bool:
        size, etag = etags.get(filename, (-1, ""))
        etag = etag.strip('"')
        return size == len(data) and bool(_MD5_ETAG.match(etag)) and \
            hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
    return same
