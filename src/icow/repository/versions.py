"""Version folders: which are on disk, which a version policy picks, and when a
version's files changed. Shared by the repository, its poller and the object store."""

from __future__ import annotations

from pathlib import Path

from .._proto import model_config_pb2 as mc
from ..runtime.config import ConfigError


def parse_version(text: str) -> int | None:
    """A version string as a number; None when it is not a positive integer."""
    return int(text) if text.isdigit() and int(text) > 0 else None


def versions_on_disk(model_dir: Path) -> list[int]:
    """The version folders of a model, ascending."""
    return sorted(v for p in model_dir.iterdir() if p.is_dir() and (v := parse_version(p.name)))


def policy_versions(available: list[int], policy: mc.ModelVersionPolicy) -> list[int]:
    """The versions to load: ``policy`` applied to the sorted ``available`` ones.

    Default policy: the latest one. A version that ``specific`` names but that
    is not available is kept, so that it shows as UNAVAILABLE with its reason."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        return sorted(set(policy.specific.versions))
    count = policy.latest.num_versions if choice == "latest" else 1
    if count < 1:
        raise ConfigError("version_policy latest needs num_versions >= 1")
    return available[-count:]


def files_stamp(version_dir: Path) -> tuple:
    """Size, mtime and inode of every file of a version folder: a change of any
    (an edit, or a file replaced by a rename) means the version must load again."""
    try:
        files = sorted(p for p in version_dir.rglob("*") if p.is_file())
        return tuple((str(p.relative_to(version_dir)), st.st_size, st.st_mtime_ns, st.st_ino)
                     for p in files for st in (p.stat(),))
    except OSError:  # changing under our feet: different from anything loaded
        return (("?", -1, -1, -1),)
