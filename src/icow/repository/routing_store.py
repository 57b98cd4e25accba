"""Routing kept in the repository: ``<model>/routing.json``, beside config.pbtxt.

A change made through the rollout service (``icow models promote|split``) is written
here, so that every replica serving the repository follows it (poll mode: within
one poll interval; explicit mode: on its next load) and a replica that starts later
starts with it. The file holds the routing in force, its generation, and the
config.pbtxt routing it was made over::

    {"generation": 4, "labels": {"stable": 3, "canary": 4}, "split": [["stable", 90], ["canary", 10]],
     "config": {"labels": {"stable": 3}, "split": [["stable", 100]]}}

When config.pbtxt's own labels or split change later, they win (as before), with
the next generation. A write is a compare-and-swap on what was read: in a folder,
under an flock of the model's folder, the file re-read and replaced by a rename; in an object store, a
conditional PutObject (If-Match on the ETag read, If-None-Match: * for a first
write), which S3 and SeaweedFS refuse with 412 when another writer got there
first. Either way the loser gets ABORTED and nothing half-applied.

A repository icow may not write to (a read-only folder or volume, a store that
refuses PutObject with AccessDenied) keeps changes in the replica's memory, as
before, and the rollout service's answer says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..runtime.config import ConfigError
from .routing import ROUTING_FILE, Routing, check_routing

if TYPE_CHECKING:
    from .object_store import ObjectStore

__all__ = ["ROUTING_FILE", "Conflict", "ReadOnly", "StoredRouting", "FolderRoutingStore", "ObjectRoutingStore"]
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_READ_ONLY_CODES = {"AccessDenied", "NotImplemented", "MethodNotAllowed"}


class ReadOnly(Exception):
    """The repository cannot be written to: the routing stays in this replica's memory."""


class Conflict(Exception):
    """Another writer changed the routing file between this one's read and write."""


@dataclass(frozen=True)
class StoredRouting:
    """The content of a routing.json: the routing in force and the config routing it was made over."""

    routing: Routing
    config: Routing  # labels and split of config.pbtxt when it was written (generation 1)

    def in_force(self, config: Routing) -> Routing:
        """The routing to serve under ``config``: this one, unless config.pbtxt's routing
        changed since it was written (then the config's, one generation on)."""
        if _same(self.config, config):
            return self.routing
        return Routing(config.labels, config.split, self.routing.generation + 1)

    def to_json(self) -> bytes:
        return (json.dumps({"generation": self.routing.generation, **_fields(self.routing),
                            "config": _fields(self.config)}, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> StoredRouting:
        """Parse a routing.json. Raises ConfigError naming ``where``."""
        try:
            doc = json.loads(data)
            generation = doc["generation"]
            if not isinstance(generation, int) or generation < 1:
                raise ValueError(f"generation must be a positive integer, not {generation!r}")
            routing = check_routing(doc.get("labels", {}), doc.get("split", []), generation)
            config = doc.get("config", {})
            return cls(routing, check_routing(config.get("labels", {}), config.get("split", []), 1))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{where}: not a routing file icow wrote: {type(e).__name__}: {e}") from None


def _fields(routing: Routing) -> dict:
    return {"labels": dict(sorted(routing.labels.items())), "split": [list(s) for s in routing.split]}


def _same(a: Routing, b: Routing) -> bool:
    return dict(a.labels) == dict(b.labels) and tuple(a.split) == tuple(b.split)


def read_cached(model_dir: Path) -> StoredRouting | None:
    """The routing.json of a model folder (the repository's, or the store's cached copy); None when there is
    none. Raises ConfigError for one that does not parse."""
    path = model_dir / ROUTING_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return StoredRouting.from_json(data, str(path))


def routing_stamp(model_dir: Path) -> bytes | None:
    """routing.json's bytes (what the poller compares); None when absent or unreadable."""
    try:
        return (model_dir / ROUTING_FILE).read_bytes()
    except OSError:
        return None


class RoutingStore(Protocol):
    """Where the routing files of a repository are read fresh and written."""

    def transaction(self, name: str) -> AbstractContextManager[tuple[StoredRouting | None, Writer]]:
        """The stored routing of model ``name`` as it is now, and a writer that replaces it
        only if it is still so (else Conflict). Raises ReadOnly, OSError."""
        ...


class Writer(Protocol):
    def __call__(self, stored: StoredRouting) -> None: ...


class FolderRoutingStore:
    """routing.json files in the repository's folders, written under an flock of the model's folder and
    replaced by a rename (replicas sharing the folder on one host, or on a file system whose locks work
    across hosts)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def transaction(self, name: str) -> Iterator[tuple[StoredRouting | None, Writer]]:
        model_dir = self.root / name
        lock = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)  # the folder itself: no lock file left behind
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the read and the write below, as one
            yield read_cached(model_dir), lambda stored: _replace(model_dir / ROUTING_FILE, stored.to_json())
        finally:
            os.close(lock)  # releases the flock


def _replace(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)  # readers see the old file or the new one, never half of one
    except OSError as e:
        if e.errno in _READ_ONLY_ERRNOS:
            raise ReadOnly(f"cannot write {path}: {os.strerror(e.errno)}") from None
        raise
    finally:
        temp.unlink(missing_ok=True)


class ObjectRoutingStore:
    """routing.json objects in the store, replaced by conditional PutObject (If-Match / If-None-Match)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @contextmanager
    def transaction(self, name: str) -> Iterator[tuple[StoredRouting | None, Writer]]:
        stored_model = self.store.models().get(name)
        if stored_model is not None and stored_model.layout != "triton":  # a folder beside it would clash
            raise ReadOnly(f"model '{name}' is one object in {self.store.url} (lIteCOW's layout), with no folder "
                           "for a routing file")
        key = self.store.location.key(name, ROUTING_FILE)
        data, etag = self.store.get_bytes(key)
        stored = StoredRouting.from_json(data, f"{self.store.url}/{name}/{ROUTING_FILE}") if data is not None \
            else None

        def write(new: StoredRouting) -> None:
            code = self.store.put_bytes_if(key, new.to_json(), etag)
            if code in _READ_ONLY_CODES:
                raise ReadOnly(f"{self.store.url} refuses writes ({code})")
            if code:
                raise Conflict(f"{self.store.url}/{name}/{ROUTING_FILE} changed meanwhile ({code})")

        yield stored, write
