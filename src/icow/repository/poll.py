"""``--model-control-mode poll``: watch the repository's folders and follow them.

Every ``interval`` seconds each model folder is stamped (config.pbtxt's bytes, and
the size, mtime and inode of every file of every version folder). A model whose
stamp changed is loaded again once the stamp has held still for one interval, so a
file still being copied is not read half-written. The repository reloads only what
changed (repository.py): a new version is ready before it takes traffic, a failed
reload leaves the previous one serving, a removed version drains, then closes.
A model folder that disappears is unloaded; a new one is loaded. With an object
store, each poll first brings the local cache up to date with the store.

A model's routing.json (routing_store.py: labels and split another replica set) is
followed at the poll that sees it change, without waiting for it to hold still (it
is replaced whole, by a rename or one PutObject) and without loading anything.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from ..protocol.errors import InferenceServerError
from ..runtime import config as cfg
from .repository import Repository
from .routing_store import routing_stamp
from .versions import files_stamp, parse_version

log = logging.getLogger(__name__)


def model_stamp(model_dir: Path) -> tuple:
    """What a model's load depends on, cheaply: a change means it must load again."""
    try:
        config = hashlib.sha256((model_dir / cfg.CONFIG_FILE).read_bytes()).hexdigest()
    except FileNotFoundError:
        config = ""
    except OSError:
        config = "?"
    try:
        versions = sorted((p.name, files_stamp(p)) for p in model_dir.iterdir()
                          if p.is_dir() and parse_version(p.name))
    except OSError:
        versions = [("?", ())]
    return config, tuple(versions)


class RepositoryPoller:
    """A thread that keeps ``repository`` in step with its folder."""

    def __init__(self, repository: Repository, interval: float) -> None:
        self.repository = repository
        self.interval = interval
        self._stamps: dict[str, tuple] = {}  # as last loaded
        self._seen: dict[str, tuple] = {}  # changed, seen at the previous poll: loads if it holds still
        self._routings: dict[str, bytes | None] = {}  # each model's routing.json as last followed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="icow-poll", daemon=True)

    def start(self) -> None:
        """Take the stamps of what the startup loading loaded, then poll."""
        self._stamps = self._scan()
        self._routings = {name: routing_stamp(self.repository.root / name) for name in self._stamps}
        self._thread.start()
        log.info("polling %s every %g s for changes", self.repository.location, self.interval)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("polling the repository failed")

    def _scan(self) -> dict[str, tuple]:
        try:
            self.repository.sync_store()
            names = self.repository.model_names()
        except OSError as e:
            log.error("cannot list the repository %s: %s", self.repository.location, e)
            return dict(self._stamps)
        return {name: model_stamp(self.repository.root / name) for name in names}

    def poll(self) -> list[str]:
        """One look at the repository; the models loaded or unloaded."""
        now = self._scan()
        acted = []
        for name in sorted(set(self._stamps) - set(now)):
            log.info("model '%s' left the repository: unloading it", name)
            self._unload(name)
            acted.append(name)
        for name, stamp in sorted(now.items()):
            if self._stamps.get(name) == stamp:
                self._seen.pop(name, None)
            elif self._seen.get(name) != stamp:
                self._seen[name] = stamp  # changed: wait one interval for it to hold still
            else:
                self._seen.pop(name)
                self._stamps[name] = stamp
                log.info("model '%s' changed in the repository: loading it again", name)
                self._load(name)
                acted.append(name)
        for name in now:
            self._follow_routing(name)
        return acted

    def _follow_routing(self, name: str) -> None:
        stamp = routing_stamp(self.repository.root / name)
        if self._routings.get(name, b"") == stamp:
            return
        self._routings[name] = stamp
        try:
            self.repository.follow_routing(name)
        except Exception:  # one model's routing must not stop the others'
            log.exception("model '%s': following its routing.json failed", name)

    def _load(self, name: str) -> None:
        try:
            self.repository.load(name)  # failures are recorded in the index and logged there
        except InferenceServerError as e:
            log.error("model '%s' is not loaded: %s", name, e.message)

    def _unload(self, name: str) -> None:
        self._stamps.pop(name, None)
        self._seen.pop(name, None)
        self._routings.pop(name, None)
        try:
            self.repository.unload(name)
        except InferenceServerError as e:
            log.error("model '%s' could not be unloaded: %s", name, e.message)
