"""A model repository in an S3-compatible object store, mirrored into a local cache.

Two layouts, side by side under the repository's prefix:

- Triton's: ``<prefix>/<model>/config.pbtxt`` (optional) and
  ``<prefix>/<model>/<version>/model.onnx``, versions as key prefixes;
- lIteCOW's: one object per model, ``<prefix>/<model>.onnx`` (or without
  ``.onnx``), its object versions tagged ``model-version=<number>`` (a model
  whose versions carry no such tag serves its current object as version 1).

The cache holds them in Triton's layout, where :class:`~icow.repository.repository.Repository`
loads them. A version is downloaded into a staging folder, its size and ETag
(the MD5 of a single-part upload) checked, and only then moved into place: a
failed or partial download never replaces what is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..runtime.config import ConfigError, read_config
from .routing import ROUTING_FILE
from .versions import policy_versions

log = logging.getLogger(__name__)

SCHEME = "s3://"
VERSION_TAG = "model-version"  # lIteCOW's tag on an object version
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
_MANIFEST = ".icow-source.json"  # in a cached version folder: the objects it came from
_CONFIG_MANIFEST = ".config.pbtxt.icow-source.json"
_CACHE_MARKER = ".icow-cache"  # a cache folder icow made, and so may prune
LITECOW_LAYOUT_CONFIG = "version_policy: { all: {} }\n"  # the cached config of a lIteCOW-layout model
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")  # multipart ETags ("…-N") are no MD5


class StoreError(OSError):
    """The object store cannot be reached, listed or read, or holds something unusable."""

    code = ""  # the store's error code ("AccessDenied", "PreconditionFailed", ...) when it gave one


def is_store_url(text: str) -> bool:
    """Whether ``text`` names an object store (``s3://…``) rather than a folder."""
    return str(text).startswith(SCHEME)


@dataclass(frozen=True)
class StoreLocation:
    """A bucket and a key prefix (no slashes at either end; empty for the bucket's root)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> StoreLocation:
        """``s3://bucket`` or ``s3://bucket/prefix/…`` as a StoreLocation."""
        if not is_store_url(url):
            raise ValueError(f"{url!r} is not an s3://<bucket>[/<prefix>] URL")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket")
        return cls(bucket, prefix.strip("/"))

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)


@dataclass(frozen=True)
class StoredFile:
    """One object a cached version is made of."""

    relpath: str  # where it goes inside the version folder, e.g. "model.onnx"
    key: str
    size: int
    etag: str
    version_id: str = ""  # the object version (lIteCOW's layout); "" for the current one


@dataclass(frozen=True)
class StoredModel:
    """Where a model lives in the store: ``layout`` "triton" (``key`` is its prefix
    ending in "/") or "litecow" (``key`` is its one object)."""

    name: str
    layout: str
    key: str


def s3_client(endpoint: str | None = None) -> Any:
    """A boto3 S3 client; credentials and region from the usual AWS environment.

    Parameters
    ----------
    endpoint : str, optional
        The store's URL (e.g. ``http://127.0.0.1:8333``) when it is not AWS; boto3
        also reads ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise StoreError(f"an s3:// repository needs boto3 ({e.name} is missing): pip install 'icow[s3]'") from None
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        # Path-style URLs: S3-compatible stores (SeaweedFS, MinIO) rarely have per-bucket DNS names.
        s3={"addressing_style": "path"} if endpoint else {},
        # Checksums only where S3 requires them: not every compatible store knows the newer ones.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def default_cache(location: StoreLocation, endpoint: str | None) -> Path:
    """Where models of ``location`` are cached by default: under ``$XDG_CACHE_HOME/icow``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icow" / "s3"
    digest = hashlib.sha256(f"{endpoint or ''}|{location.url}".encode()).hexdigest()[:12]
    return base / f"{location.bucket}-{digest}"


class ObjectStore:
    """The models of one bucket and prefix, and their mirror in a local cache folder.

    Parameters
    ----------
    location : StoreLocation
        Bucket and prefix.
    cache : Path, optional
        The cache folder (made if missing); needed by :meth:`sync`.
    endpoint : str, optional
        The store's URL when it is not AWS.
    client : optional
        A boto3 S3 client to use instead of a new one.
    """

    def __init__(self, location: StoreLocation, cache: Path | None = None, *, endpoint: str | None = None,
                 client: Any = None) -> None:
        self.location = location
        self.cache = cache
        self.client = client or s3_client(endpoint)
        self._lock = threading.Lock()  # one sync at a time: they share the cache's folders
        if cache is not None:
            _prepare_cache(cache)

    @property
    def url(self) -> str:
        return self.location.url

    # -- listing ------------------------------------------------------------
    def check(self) -> None:
        """Raise StoreError unless the bucket can be listed (a wrong bucket, endpoint
        or credentials show here, at start, rather than as missing models)."""
        self._call("list_objects_v2", Bucket=self.location.bucket, Prefix=self._base(), MaxKeys=1)

    def models(self) -> dict[str, StoredModel]:
        """Every model under the prefix, in either layout, by name."""
        base = self._base()
        found: dict[str, StoredModel] = {}
        clashes = set()
        for page in self._pages("list_objects_v2", Bucket=self.location.bucket, Prefix=base, Delimiter="/"):
            candidates = [(p["Prefix"][len(base):-1], "triton", p["Prefix"]) for p in page.get("CommonPrefixes", [])]
            candidates += [(o["Key"][len(base):].removesuffix(".onnx"), "litecow", o["Key"])
                           for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            for name, layout, key in candidates:
                if not _is_model_name(name):
                    continue
                if name in found:
                    clashes.add(name)
                found[name] = StoredModel(name, layout, key)
        for name in sorted(clashes):
            log.error("model '%s' is in %s twice (a folder and an object, or name and name.onnx); "
                      "left out until one is removed", name, self.url)
            del found[name]
        return dict(sorted(found.items()))

    def versions(self, model: StoredModel) -> tuple[dict[int, list[StoredFile]], StoredFile | None]:
        """The versions of ``model`` with the objects each is made of, and its config.pbtxt."""
        versions, extra = self._model_files(model)
        return versions, extra.get(CONFIG_FILE)

    def _model_files(self, model: StoredModel) -> tuple[dict[int, list[StoredFile]], dict[str, StoredFile]]:
        """The versions of ``model``, and its config.pbtxt and routing.json (those it has)."""
        if model.layout == "litecow":
            return self._litecow_versions(model), {}
        versions: dict[int, list[StoredFile]] = {}
        extra: dict[str, StoredFile] = {}
        for page in self._pages("list_objects_v2", Bucket=self.location.bucket, Prefix=model.key):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(model.key):]
                head, _, rest = rel.partition("/")
                if rel in (CONFIG_FILE, ROUTING_FILE):
                    extra[rel] = StoredFile(rel, obj["Key"], obj["Size"], obj["ETag"])
                elif head.isdigit() and int(head) > 0 and rest and not rest.endswith("/"):
                    versions.setdefault(int(head), []).append(StoredFile(rest, obj["Key"], obj["Size"], obj["ETag"]))
        return dict(sorted(versions.items())), extra

    def _litecow_versions(self, model: StoredModel) -> dict[int, list[StoredFile]]:
        entries = [v for page in self._pages("list_object_versions", Bucket=self.location.bucket, Prefix=model.key)
                   for v in page.get("Versions", []) if v["Key"] == model.key]
        entries.sort(key=lambda v: v["LastModified"], reverse=True)  # newest first: it wins a tag twice used
        versions: dict[int, list[StoredFile]] = {}
        for entry in entries:
            tag = self.version_tag(model.key, entry["VersionId"])
            if tag is None:
                continue
            if not (tag.isdigit() and int(tag) > 0):
                log.warning("%s: object version %s is tagged %s=%r, not a version number; left out",
                            model.key, entry["VersionId"], VERSION_TAG, tag)
                continue
            versions.setdefault(int(tag), [_litecow_file(model.key, entry)])
        if not versions:  # never tagged: the current object is version 1
            current = [e for e in entries if e.get("IsLatest")]
            if current:
                versions[1] = [_litecow_file(model.key, current[0])]
        return dict(sorted(versions.items()))

    def version_tag(self, key: str, version_id: str) -> str | None:
        """The ``model-version`` tag of one object version, if it has one."""
        tags = self._call("get_object_tagging", Bucket=self.location.bucket, Key=key,
                          **_version_arg(version_id))["TagSet"]
        return next((t["Value"] for t in tags if t["Key"] == VERSION_TAG), None)

    # -- mirroring ------------------------------------------------------------
    def sync(self, names: list[str] | None = None) -> dict[str, dict[int, str]]:
        """Bring the cache up to date with the store: ``names`` only, or every model
        (and drop cached models the store no longer has).

        Returns
        -------
        dict
            Per model, the versions that could not be fetched and why; what the
            cache held for them stays. A store that cannot be listed is logged
            and the cache left as it is.
        """
        if self.cache is None:
            raise ValueError("this ObjectStore has no cache folder")
        failed: dict[str, dict[int, str]] = {}
        with self._lock:
            try:
                stored = self.models()
            except StoreError as e:
                log.error("cannot list %s, serving what the cache holds: %s", self.url, e)
                return failed
            wanted = list(stored) if names is None else names
            stale = [p.name for p in self.cache.iterdir() if p.is_dir() and p.name not in stored] \
                if names is None else [n for n in names if n not in stored]
            for name in stale:
                self._drop(name)
            for name in wanted:
                if name in stored and _is_model_name(name):
                    try:
                        failed[name] = self._sync_model(stored[name])
                    except StoreError as e:
                        log.error("cannot list the versions of model '%s' in %s, serving what the cache "
                                  "holds: %s", name, self.url, e)
        return {name: versions for name, versions in failed.items() if versions}

    def _sync_model(self, model: StoredModel) -> dict[int, str]:
        assert self.cache is not None
        versions, extra = self._model_files(model)
        if not versions and CONFIG_FILE not in extra:  # an empty "folder": some stores keep them once emptied
            self._drop(model.name)
            return {}
        model_dir = self.cache / model.name
        model_dir.mkdir(exist_ok=True)
        for leftover in model_dir.glob(".staging-*"):  # an earlier download cut short
            shutil.rmtree(leftover, ignore_errors=True)
        failed = {}
        try:
            if model.layout == "litecow":
                _write_litecow_config(model_dir)
            else:
                for filename in (CONFIG_FILE, ROUTING_FILE):
                    self._sync_file(model_dir, filename, extra.get(filename))
        except StoreError as e:
            log.error("model '%s': keeping the cached config and routing: %s", model.name, e)
        for version, files in self._wanted(model_dir, versions).items():
            target = model_dir / str(version)
            if _read_manifest(target / _MANIFEST) == _manifest(files):
                continue
            try:
                self._fetch_version(target, files)
            except StoreError as e:
                kept = "the cached copy stays" if target.is_dir() else "not cached"
                log.error("model '%s' version %d: download failed (%s): %s", model.name, version, kept, e)
                failed[version] = f"download from {self.url} failed: {e}"
            else:
                log.info("model '%s' version %d: fetched from %s", model.name, version, self.url)
        for path in model_dir.iterdir():
            if path.is_dir() and path.name.isdigit() and int(path.name) not in versions \
                    and (path / _MANIFEST).exists():
                log.info("model '%s' version %s is gone from %s; dropped from the cache", model.name,
                         path.name, self.url)
                shutil.rmtree(path)
        return failed

    @staticmethod
    def _wanted(model_dir: Path, versions: dict[int, list[StoredFile]]) -> dict[int, list[StoredFile]]:
        """The versions to fetch: those the model's version policy serves (all when
        its config cannot be read: the repository reports that error)."""
        try:
            picked = policy_versions(list(versions), read_config(model_dir).version_policy)
        except ConfigError:
            return versions
        return {v: versions[v] for v in picked if v in versions}

    def _sync_file(self, model_dir: Path, filename: str, config: StoredFile | None) -> None:
        """Bring one file of the model's folder (config.pbtxt, routing.json) up to date; gone when not stored."""
        path, manifest = model_dir / filename, model_dir / f".{filename}.icow-source.json"
        if config is None:
            path.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
            return
        if _read_manifest(manifest) == _manifest([config]) and path.exists():
            return
        temp = model_dir / f".staging-{filename}-{uuid.uuid4().hex}"
        try:
            self.download(config, temp)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        manifest.write_text(json.dumps(_manifest([config])))

    def _fetch_version(self, target: Path, files: list[StoredFile]) -> None:
        staging = target.parent / f".staging-{target.name}-{uuid.uuid4().hex}"
        try:
            for file in files:
                dest = (staging / file.relpath).resolve()
                if not dest.is_relative_to(staging.resolve()):
                    raise StoreError(f"{file.key}: the key leads outside its version folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.download(file, dest)
            (staging / _MANIFEST).write_text(json.dumps(_manifest(files)))
            # Swap in the complete, checked folder; the old one (if any) goes only now.
            trash = target.parent / f".staging-old-{uuid.uuid4().hex}"
            if target.exists():
                target.rename(trash)
            staging.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def download(self, file: StoredFile, dest: Path) -> None:
        """Write the object ``file`` names to ``dest``, checking its size and ETag.

        The request carries the listed ETag (If-Match), so an object replaced
        since the listing is refused rather than mixed in."""
        response = self._call("get_object", Bucket=self.location.bucket, Key=file.key, IfMatch=file.etag,
                              **_version_arg(file.version_id))
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with open(dest, "wb") as out:
                for chunk in response["Body"].iter_chunks(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    size += len(chunk)
        except Exception as e:  # the connection cut or the body short: botocore says which
            raise StoreError(f"{file.key}: download cut short after {size} bytes: {type(e).__name__}: {e}") from e
        if size != file.size:
            raise StoreError(f"{file.key}: got {size} bytes, the store lists {file.size}")
        etag = file.etag.strip('"')
        if _MD5_ETAG.match(etag) and md5.hexdigest() != etag:
            raise StoreError(f"{file.key}: the content's MD5 {md5.hexdigest()} is not its ETag {etag}")

    def _drop(self, name: str) -> None:
        assert self.cache is not None
        if not _is_model_name(name):  # a request's name: never "..", never a path
            return
        path = self.cache / name
        if path.is_dir():  # the cache is icow's (_prepare_cache): what is in it came from the store
            log.info("model '%s' is gone from %s; dropped from the cache", name, self.url)
            shutil.rmtree(path)

    # -- single objects (icow import-model, export-model) ----------------------
    def stat(self, key: str) -> StoredFile:
        """The current object ``key`` (its size and ETag), to :meth:`download` it."""
        head = self._call("head_object", Bucket=self.location.bucket, Key=key)
        return StoredFile(key.rpartition("/")[2], key, head["ContentLength"], head["ETag"])

    def tag(self, key: str, version_id: str, tags: dict[str, str]) -> None:
        """Set the tags of one object version."""
        self._call("put_object_tagging", Bucket=self.location.bucket, Key=key, **_version_arg(version_id),
                   Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})

    def get_bytes(self, key: str) -> tuple[bytes | None, str | None]:
        """A small object's content and ETag; (None, None) when there is no such object."""
        try:
            response = self._call("get_object", Bucket=self.location.bucket, Key=key)
        except StoreError as e:
            if e.code in ("NoSuchKey", "404"):
                return None, None
            raise
        try:
            return response["Body"].read(), response["ETag"]
        except Exception as e:  # the connection cut: botocore says how
            raise StoreError(f"{key}: read cut short: {type(e).__name__}: {e}") from e

    def put_bytes_if(self, key: str, data: bytes, etag: str | None) -> str:
        """Write ``data`` as ``key`` only if the object still has ``etag`` (None: only if there is none).

        Returns "" when written, else the store's refusal: "PreconditionFailed" (it changed
        meanwhile), "ConditionalRequestConflict", "AccessDenied" (no write permission)...
        Raises StoreError when the store cannot be reached."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            self._call("put_object", Bucket=self.location.bucket, Key=key, Body=data,
                       ContentType="application/json", **condition)
        except StoreError as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "AccessDenied",
                          "NotImplemented", "MethodNotAllowed"):
                return e.code
            raise
        return ""

    def versioning_enabled(self) -> bool:
        return self._call("get_bucket_versioning", Bucket=self.location.bucket).get("Status") == "Enabled"

    def put(self, key: str, path: Path, tags: dict[str, str] | None = None) -> dict:
        """Upload the file at ``path`` as ``key``, with object ``tags``."""
        extra = {"Tagging": "&".join(f"{k}={v}" for k, v in tags.items())} if tags else {}
        with open(path, "rb") as body:
            return self._call("put_object", Bucket=self.location.bucket, Key=key, Body=body, **extra)

    # -- plumbing --------------------------------------------------------------
    def _base(self) -> str:
        return self.location.prefix + "/" if self.location.prefix else ""

    def _call(self, operation: str, **kwargs: Any) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as e:
            error = e.response.get("Error", {})
            where = f"{self.location.bucket}/{kwargs.get('Key', kwargs.get('Prefix', ''))}"
            failure = StoreError(f"{operation} on {where}: {error.get('Code', '?')}: {error.get('Message', e)}")
            failure.code = str(error.get("Code", ""))
            raise failure from e
        except BotoCoreError as e:
            raise StoreError(f"{operation} on {self.url}: {e}") from e

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield from self.client.get_paginator(operation).paginate(**kwargs)
        except ClientError as e:
            error = e.response.get("Error", {})
            raise StoreError(f"{operation} on {self.url}: {error.get('Code', '?')}: "
                             f"{error.get('Message', e)}") from e
        except BotoCoreError as e:
            raise StoreError(f"{operation} on {self.url}: {e}") from e


def _is_model_name(name: str) -> bool:
    """One path segment, not hidden: safe to join to the cache folder."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _litecow_file(key: str, entry: dict) -> StoredFile:
    return StoredFile(MODEL_FILE, key, entry["Size"], entry["ETag"], entry["VersionId"])


def _version_arg(version_id: str) -> dict[str, str]:
    # "null" is the version id S3 lists for objects of a bucket without versioning.
    return {"VersionId": version_id} if version_id and version_id != "null" else {}


def _manifest(files: list[StoredFile]) -> list[dict]:
    return sorted((asdict(f) for f in files), key=lambda f: f["relpath"])


def _read_manifest(path: Path) -> list[dict] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_litecow_config(model_dir: Path) -> None:
    """lIteCOW served whichever tagged version a request named: so every version is loaded."""
    path, manifest = model_dir / CONFIG_FILE, model_dir / _CONFIG_MANIFEST
    if path.exists() and _read_manifest(manifest) == [LITECOW_LAYOUT_CONFIG]:
        return
    path.write_text(LITECOW_LAYOUT_CONFIG)
    manifest.write_text(json.dumps([LITECOW_LAYOUT_CONFIG]))


def _prepare_cache(cache: Path) -> None:
    """Make the cache folder, or check that an existing one is icow's: the sync
    deletes what the store no longer has, and must never do that elsewhere."""
    if cache.exists() and any(cache.iterdir()) and not (cache / _CACHE_MARKER).exists():
        raise StoreError(f"model cache {cache} is a folder with other files in it, not an icow cache; "
                         "give an empty or new folder")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / _CACHE_MARKER).touch()
