"""``icow import-model`` and ``icow export-model``: put an ONNX file into a model
repository (a folder or an object store) as a new version, and take one out.

lIteCOW's workflow was to upload a model to the store and tag its object version;
``import-model`` does that for a model kept in lIteCOW's layout, and writes
Triton's layout (``<model>/<version>/model.onnx``) for every other model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

from ..runtime.config import ConfigError, read_config
from .object_store import MODEL_FILE, SCHEME, VERSION_TAG, ObjectStore, StoreError, StoreLocation, is_store_url
from .versions import versions_on_disk

DEFAULT_REPOSITORY = "models"


class ModelImportError(Exception):
    """What keeps a model from being imported or exported, said for a person."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``import-model`` and ``export-model`` to the ``icow`` command line."""
    repository_help = f"a folder or s3://BUCKET[/PREFIX] (default: ./{DEFAULT_REPOSITORY})"
    imp = commands.add_parser(
        "import-model", help="add an ONNX model file to a repository as a new version",
        description="Check a file with onnx.checker and write it into a model repository as a new "
                    "version (never over an existing one), then print where it went.")
    imp.add_argument("name", metavar="NAME", help="the model's name in the repository")
    imp.add_argument("--source", required=True, metavar="FILE_OR_URL",
                     help="a file, or an http(s)://, file:// or s3://BUCKET/KEY URL")
    imp.add_argument("--version", type=_version, metavar="V", help="the version number (default: the next one)")
    imp.add_argument("--repository", default=DEFAULT_REPOSITORY, metavar="DIR_OR_S3", help=repository_help)
    imp.add_argument("--s3-endpoint", metavar="URL", help="the object store's URL when it is not AWS")
    exp = commands.add_parser(
        "export-model", help="copy a model version's ONNX file out of a repository",
        description="Write the ONNX file of one version of a model to a file or an s3:// URL.")
    exp.add_argument("name", metavar="NAME", help="the model's name in the repository")
    exp.add_argument("--dest", required=True, metavar="FILE_OR_S3", help="a new file, or s3://BUCKET/KEY")
    exp.add_argument("--version", type=_version, metavar="V", help="the version number (default: the newest)")
    exp.add_argument("--repository", default=DEFAULT_REPOSITORY, metavar="DIR_OR_S3", help=repository_help)
    exp.add_argument("--s3-endpoint", metavar="URL", help="the object store's URL when it is not AWS")


def run(args: argparse.Namespace) -> int:
    """Run ``import-model`` or ``export-model`` as parsed; the exit status."""
    try:
        if args.command == "import-model":
            where = import_model(args.source, args.name, args.repository, version=args.version,
                                 endpoint=args.s3_endpoint)
            print(f"imported {args.source} as model '{args.name}': {where}")
        else:
            where = export_model(args.name, args.dest, args.repository, version=args.version,
                                 endpoint=args.s3_endpoint)
            print(f"exported model '{args.name}' {where}")
    except (ModelImportError, StoreError) as e:
        print(f"icow {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def import_model(source: str, name: str, repository: str, *, version: int | None = None,
                 endpoint: str | None = None) -> str:
    """Check ``source`` as an ONNX model and add it to ``repository`` as ``name``.

    Parameters
    ----------
    source : str
        A file path, or an ``http(s)://``, ``file://`` or ``s3://bucket/key`` URL.
    name : str
        The model's name.
    repository : str
        A folder, or ``s3://bucket[/prefix]``.
    version : int, optional
        The version number; the one after the newest by default. An existing
        version is never overwritten.
    endpoint : str, optional
        The object store's URL (for an s3:// source or repository) when not AWS.

    Returns
    -------
    str
        Where the model went, e.g. ``version 3 at models/m/3/model.onnx``.
    """
    _check_name(name)
    with tempfile.TemporaryDirectory(prefix="icow-import-") as tmp:
        path = _fetch(source, Path(tmp), endpoint)
        _check_onnx(path, source)
        if is_store_url(repository):
            return _import_to_store(path, name, StoreLocation.parse(repository), version, endpoint)
        return _import_to_folder(path, name, Path(repository), version)


def export_model(name: str, dest: str, repository: str, *, version: int | None = None,
                 endpoint: str | None = None) -> str:
    """Copy the ONNX file of ``name`` (``version``, or the newest) to ``dest``.

    Parameters
    ----------
    name : str
        The model's name.
    dest : str
        A file that does not exist yet, or ``s3://bucket/key``.
    repository : str
        A folder, or ``s3://bucket[/prefix]``.
    version : int, optional
        The version; the newest by default.
    endpoint : str, optional
        The object store's URL when not AWS.

    Returns
    -------
    str
        Which version went where.
    """
    _check_name(name)
    if not is_store_url(dest) and Path(dest).exists():
        raise ModelImportError(f"{dest} exists; give a new file")
    with tempfile.TemporaryDirectory(prefix="icow-export-") as tmp:
        if is_store_url(repository):
            chosen, path = _export_from_store(name, StoreLocation.parse(repository), version, endpoint, Path(tmp))
        else:
            chosen, path = _export_from_folder(name, Path(repository), version)
        if is_store_url(dest):
            location = StoreLocation.parse(dest)
            if not location.prefix:
                raise ModelImportError(f"{dest} names no object key: give s3://BUCKET/KEY")
            ObjectStore(StoreLocation(location.bucket), endpoint=endpoint).put(location.prefix, path)
        else:
            _copy_new(path, Path(dest))
    return f"version {chosen} to {dest}"


# -- sources --------------------------------------------------------------------

def _fetch(source: str, tmp: Path, endpoint: str | None) -> Path:
    """A local path holding ``source``'s bytes."""
    if is_store_url(source):
        location = StoreLocation.parse(source)
        if not location.prefix:
            raise ModelImportError(f"{source} names no object key: give s3://BUCKET/KEY")
        store = ObjectStore(StoreLocation(location.bucket), endpoint=endpoint)
        dest = tmp / MODEL_FILE
        store.download(store.stat(location.prefix), dest)
        return dest
    if source.startswith(("http://", "https://")):
        dest = tmp / MODEL_FILE
        try:
            with urllib.request.urlopen(source, timeout=60) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
                expected = response.headers.get("Content-Length")
        except OSError as e:  # URLError and HTTPError are OSErrors
            raise ModelImportError(f"cannot download {source}: {e}") from None
        if expected is not None and dest.stat().st_size != int(expected):
            raise ModelImportError(f"download of {source} cut short: {dest.stat().st_size} of {expected} bytes")
        return dest
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise ModelImportError(f"source {source} is not a file")
    return path


def _check_onnx(path: Path, source: str) -> None:
    try:
        import onnx
    except ImportError:
        raise ModelImportError("checking the model needs the onnx package: pip install 'icow[tools]'") from None
    try:
        onnx.checker.check_model(str(path))  # by path: models over 2 GiB and external data too
    except Exception as e:  # onnx raises ValidationError, and others for unreadable files
        raise ModelImportError(f"{source} is not a valid ONNX model: {e}") from None


# -- folders ----------------------------------------------------------------------

def _import_to_folder(path: Path, name: str, repository: Path, version: int | None) -> str:
    model_dir = repository / name
    existing = _folder_versions(model_dir)
    version = version or (max(existing, default=0) + 1)
    target = model_dir / str(version)
    if target.exists():
        raise ModelImportError(f"model '{name}' already has version {version} ({target}); give another --version")
    filename = _model_filename(model_dir)
    staging = model_dir / f".import-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(path, staging / filename)
        staging.rename(target)  # whole or not at all; fails if the version appeared meanwhile
    except OSError as e:
        raise ModelImportError(f"cannot write version {version} of model '{name}' to {target}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"version {version} at {target / filename}"


def _export_from_folder(name: str, repository: Path, version: int | None) -> tuple[int, Path]:
    model_dir = repository / name
    versions = _folder_versions(model_dir)
    if not versions:
        raise ModelImportError(f"no model '{name}' with versions in {repository}")
    version = version or max(versions)
    path = model_dir / str(version) / _model_filename(model_dir)
    if version not in versions or not path.is_file():
        raise ModelImportError(f"model '{name}' has no version {version} in {repository}; "
                               f"it has: {', '.join(map(str, versions))}")
    return version, path


def _folder_versions(model_dir: Path) -> list[int]:
    return versions_on_disk(model_dir) if model_dir.is_dir() else []


def _model_filename(model_dir: Path) -> str:
    try:
        return read_config(model_dir).default_model_filename or MODEL_FILE
    except ConfigError:
        return MODEL_FILE


# -- object stores ------------------------------------------------------------------

def _import_to_store(path: Path, name: str, location: StoreLocation, version: int | None,
                     endpoint: str | None) -> str:
    store = ObjectStore(location, endpoint=endpoint)
    model = store.models().get(name)
    versions = store.versions(model)[0] if model is not None else {}
    version = version or (max(versions, default=0) + 1)
    if version in versions:
        raise ModelImportError(f"model '{name}' already has version {version} in {location.url}; "
                               "give another --version")
    if model is None or model.layout == "triton":
        key = location.key(name, str(version), MODEL_FILE)
        store.put(key, path)
        return f"version {version} at {SCHEME}{location.bucket}/{key}"
    # lIteCOW's layout: a new object version of the model's one object, tagged.
    if not store.versioning_enabled():
        raise ModelImportError(f"model '{name}' is one object ({model.key}) in a bucket without versioning: "
                               "uploading would replace its current version; enable versioning on "
                               f"{location.bucket} first")
    for number, (file,) in versions.items():
        if store.version_tag(file.key, file.version_id) is None:  # untagged, served as version 1: keep it so
            store.tag(file.key, file.version_id, {VERSION_TAG: str(number)})
    response = store.put(model.key, path, tags={VERSION_TAG: str(version)})
    return (f"version {version} at {SCHEME}{location.bucket}/{model.key} (object version "
            f"{response.get('VersionId', '?')}, tagged {VERSION_TAG}={version})")


def _export_from_store(name: str, location: StoreLocation, version: int | None, endpoint: str | None,
                       tmp: Path) -> tuple[int, Path]:
    store = ObjectStore(location, endpoint=endpoint)
    model = store.models().get(name)
    if model is None:
        raise ModelImportError(f"no model '{name}' in {location.url}")
    versions, config = store.versions(model)
    if not versions:
        raise ModelImportError(f"model '{name}' has no versions in {location.url}")
    version = version or max(versions)
    if version not in versions:
        raise ModelImportError(f"model '{name}' has no version {version} in {location.url}; "
                               f"it has: {', '.join(map(str, versions))}")
    filename = MODEL_FILE
    if config is not None:
        store.download(config, tmp / config.relpath)
        filename = _model_filename(tmp)
    file = next((f for f in versions[version] if f.relpath == filename), None)
    if file is None:
        raise ModelImportError(f"model '{name}' version {version} in {location.url} has no {filename}")
    dest = tmp / "export.onnx"
    store.download(file, dest)
    return version, dest


# -- small things ---------------------------------------------------------------------

def _copy_new(path: Path, dest: Path) -> None:
    """Copy to ``dest`` through a temporary name beside it: all or nothing."""
    temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}")
    try:
        shutil.copyfile(path, temp)
        temp.rename(dest)
    except OSError as e:
        raise ModelImportError(f"cannot write {dest}: {e}") from None
    finally:
        temp.unlink(missing_ok=True)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name.endswith(".onnx"):
        raise ModelImportError(f"{name!r} is not a model name: one path segment, not starting with '.', "
                               "without '.onnx'")


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (a positive integer)")
    return int(text)
