"""KServe v2 REST URLs (and Triton's extensions to them) to endpoint names."""

from __future__ import annotations

from typing import NamedTuple

from .status import HttpError


class Route(NamedTuple):
    endpoint: str  # the gRPC method it mirrors, e.g. "ModelInfer"
    model: str = ""
    version: str = ""
    region: str = ""  # shared memory
    kind: str = ""  # shared memory: system or cuda

    @property
    def about_a_model(self) -> bool:
        return self.endpoint in _MODEL_ENDPOINTS and bool(self.model)


_MODEL_ENDPOINTS = {"ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ModelInfer",
                    "RepositoryModelLoad", "RepositoryModelUnload"}
_SERVER = {("GET", ""): "ServerMetadata", ("GET", "health/live"): "ServerLive",
           ("GET", "health/ready"): "ServerReady", ("GET", "models/stats"): "ModelStatistics",
           ("POST", "repository/index"): "RepositoryIndex", ("GET", "trace/setting"): "TraceSetting",
           ("POST", "trace/setting"): "TraceSetting", ("GET", "logging"): "LogSettings",
           ("POST", "logging"): "LogSettings"}
_MODEL = {("GET", ""): "ModelMetadata", ("GET", "ready"): "ModelReady", ("GET", "config"): "ModelConfig",
          ("GET", "stats"): "ModelStatistics", ("POST", "infer"): "ModelInfer"}
_SHM = {"system": "SystemSharedMemory", "cuda": "CudaSharedMemory"}
_SHM_ACTIONS = {("GET", "status"): "Status", ("POST", "register"): "Register", ("POST", "unregister"): "Unregister"}


def match(method: str, path: str) -> Route:
    """The route of ``path`` (percent-decoded); 404 or 405 when there is none."""
    parts = path.strip("/").split("/")
    if parts[0] != "v2":
        raise _not_found(path)
    rest = parts[1:]
    if rest[:1] == ["models"] and len(rest) >= 2 and rest[1] != "stats":
        return _model_route(method, path, rest[1:])
    if rest[:2] == ["repository", "models"] and len(rest) == 4 and rest[3] in ("load", "unload"):
        _allow(method, "POST", path)
        return Route("RepositoryModel" + rest[3].capitalize(), model=rest[2])
    if rest[:1] in (["systemsharedmemory"], ["cudasharedmemory"]):
        return _shm_route(method, path, rest)
    endpoint = _SERVER.get((method, "/".join(rest)))
    if endpoint is None:
        _allow_any(method, path, {m for m, p in _SERVER if p == "/".join(rest)})
    return Route(endpoint)


def _model_route(method: str, path: str, rest: list[str]) -> Route:
    model, rest = rest[0], rest[1:]
    version = ""
    if rest[:1] == ["versions"]:
        if len(rest) < 2:
            raise _not_found(path)
        version, rest = rest[1], rest[2:]
    if len(rest) > 1:
        raise _not_found(path)
    action = rest[0] if rest else ""
    endpoint = _MODEL.get((method, action))
    if endpoint is None:
        _allow_any(method, path, {m for m, a in _MODEL if a == action})
    return Route(endpoint, model=model, version=version)


def _shm_route(method: str, path: str, rest: list[str]) -> Route:
    kind = "system" if rest[0] == "systemsharedmemory" else "cuda"
    region = ""
    if rest[1:2] == ["region"] and len(rest) == 4:
        region, action = rest[2], rest[3]
    elif len(rest) == 2:
        action = rest[1]
    else:
        raise _not_found(path)
    if action == "register" and not region:
        raise _not_found(path)
    suffix = _SHM_ACTIONS.get((method, action))
    if suffix is None:
        _allow_any(method, path, {m for m, a in _SHM_ACTIONS if a == action})
    return Route(_SHM[kind] + suffix, region=region, kind=kind)


def _allow(method: str, allowed: str, path: str) -> None:
    _allow_any(method, path, {allowed}) if method != allowed else None


def _allow_any(method: str, path: str, allowed: set[str]) -> None:
    if not allowed:
        raise _not_found(path)
    raise HttpError(405, f"{method} is not allowed on {path[:128]}; use {' or '.join(sorted(allowed))}",
                    ((b"allow", ", ".join(sorted(allowed)).encode()),))


def _not_found(path: str) -> HttpError:
    return HttpError(404, f"no endpoint at {path[:128]}: see the KServe v2 REST API (/v2/...)")
