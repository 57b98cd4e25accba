"""Every endpoint but inference: the same calls on the gRPC front end's
InferenceService, their answers as JSON. One implementation behind both
transports, so that HTTP and gRPC answer alike (and refuse alike)."""

from __future__ import annotations

import base64
from typing import Any

import grpc

from .._proto import inference_pb2 as pb
from ..protocol.errors import InferenceServerError, invalid
from ..protocol.names import shorten
from ..repository.deploy import FILE_PREFIX
from ..services.oip import InferenceService
from .jsonmsg import to_json
from .status import HttpError


class _Context:
    """The little of grpc.ServicerContext the service's non-streaming methods use."""

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise InferenceServerError(code, message)


_CONTEXT = _Context()


def call(service: InferenceService, method: str, request: Any) -> Any:
    return getattr(service, method)(request, _CONTEXT)


# -- health and metadata ------------------------------------------------------------

def server_metadata(service: InferenceService) -> dict:
    return to_json(call(service, "ServerMetadata", pb.ServerMetadataRequest()))


def model_ready(service: InferenceService, model: str, version: str) -> dict:
    answer = call(service, "ModelReady", pb.ModelReadyRequest(name=model, version=version))
    if not answer.ready:
        raise HttpError(503, f"model '{model}'" + (f" version {version}" if version else "") + " is not ready")
    return {"name": model, "ready": True}


def model_metadata(service: InferenceService, model: str, version: str) -> dict:
    return to_json(call(service, "ModelMetadata", pb.ModelMetadataRequest(name=model, version=version)))


def model_config(service: InferenceService, model: str, version: str) -> dict:
    return to_json(call(service, "ModelConfig", pb.ModelConfigRequest(name=model, version=version)).config)


def model_stats(service: InferenceService, model: str, version: str) -> dict:
    return to_json(call(service, "ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version)))


# -- repository -----------------------------------------------------------------------

def repository_index(service: InferenceService, body: dict) -> list:
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise invalid("'ready' must be true or false")
    answer = call(service, "RepositoryIndex", pb.RepositoryIndexRequest(ready=ready))
    return [to_json(m) for m in answer.models]


def load(service: InferenceService, model: str, body: dict) -> None:
    request = pb.RepositoryModelLoadRequest(model_name=model)
    for key, value in _parameters(body).items():
        if key.startswith(FILE_PREFIX):  # Triton's REST form: the file's bytes in base64
            request.parameters[key].bytes_param = _base64(key, value)
        else:
            request.parameters[key].CopyFrom(_repository_parameter(key, value))
    call(service, "RepositoryModelLoad", request)


def _base64(key: str, value: Any) -> bytes:
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise invalid(f"parameter '{shorten(key)}' must be a string: the file's contents in base64") from None


def unload(service: InferenceService, model: str, body: dict) -> None:
    request = pb.RepositoryModelUnloadRequest(model_name=model)
    for key, value in _parameters(body).items():
        request.parameters[key].CopyFrom(_repository_parameter(key, value))
    call(service, "RepositoryModelUnload", request)


def _parameters(body: dict) -> dict:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid("'parameters' must be an object")
    return parameters


def _repository_parameter(key: str, value: Any) -> pb.ModelRepositoryParameter:
    if isinstance(value, bool):
        return pb.ModelRepositoryParameter(bool_param=value)
    if isinstance(value, int) and -2**63 <= value < 2**63:
        return pb.ModelRepositoryParameter(int64_param=value)
    if isinstance(value, str):
        return pb.ModelRepositoryParameter(string_param=value)
    raise invalid(f"parameter '{key}' must be a string, an integer or a boolean")


# -- shared memory --------------------------------------------------------------------

def shm_status(service: InferenceService, kind: str, region: str) -> list:
    method = "SystemSharedMemoryStatus" if kind == "system" else "CudaSharedMemoryStatus"
    request = getattr(pb, method + "Request")(name=region)
    return [to_json(r) for r in call(service, method, request).regions.values()]


def shm_register(service: InferenceService, kind: str, region: str, body: dict) -> None:
    if kind == "system":
        request = pb.SystemSharedMemoryRegisterRequest(
            name=region, key=_get(body, "key", str), offset=_get(body, "offset", int, 0),
            byte_size=_get(body, "byte_size", int))
        call(service, "SystemSharedMemoryRegister", request)
        return
    handle = _get(body, "raw_handle", dict)
    try:
        raw = base64.b64decode(_get(handle, "b64", str), validate=True)
    except ValueError:
        raise invalid("raw_handle.b64 must be base64") from None
    request = pb.CudaSharedMemoryRegisterRequest(name=region, raw_handle=raw,
                                                 device_id=_get(body, "device_id", int, 0),
                                                 byte_size=_get(body, "byte_size", int))
    call(service, "CudaSharedMemoryRegister", request)


def shm_unregister(service: InferenceService, kind: str, region: str) -> None:
    method = "SystemSharedMemoryUnregister" if kind == "system" else "CudaSharedMemoryUnregister"
    call(service, method, getattr(pb, method + "Request")(name=region))


def _get(body: dict, key: str, kind: type, default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        raise invalid(f"'{key}' is missing")
    if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or not 0 <= value < 2**64)):
        raise invalid(f"'{key}' must be {'a string' if kind is str else 'an object' if kind is dict else 'a count'}")
    return value
