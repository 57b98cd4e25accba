"""The two transports of the Open Inference Protocol as one API for the protocol
tests: Triton's gRPC client (tritonclient.grpc) and its HTTP/REST one
(tritonclient.http), whose calls match but whose answers differ (protobuf
messages, JSON dicts). Here every answer is a dict, shaped as the REST API
writes it, so that one test checks both transports."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format

TRANSPORTS = ["grpc", "http"]


@dataclass(frozen=True)
class Transport:
    name: str  # "grpc" or "http"

    @property
    def module(self) -> ModuleType:
        return grpcclient if self.name == "grpc" else httpclient

    def client(self, server, **kwargs) -> Any:
        """A tritonclient for ``server`` (a conftest.ServerProcess) on this transport."""
        return self.module.InferenceServerClient(server.url if self.name == "grpc" else server.http_url, **kwargs)

    def input(self, name: str, array: np.ndarray, datatype: str, **kwargs) -> Any:
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, **kwargs)
        return tensor

    def output(self, name: str, **kwargs) -> Any:
        return self.module.InferRequestedOutput(name, **kwargs)

    # -- answers as the REST API's JSON ------------------------------------------------

    def metadata(self, client, model: str, version: str = "", **kwargs) -> dict:
        return self._json(client.get_model_metadata, model, version, **kwargs)

    def server_metadata(self, client, **kwargs) -> dict:
        return self._json(client.get_server_metadata, **kwargs)

    def config(self, client, model: str, version: str = "", **kwargs) -> dict:
        """The model's config (gRPC's answer has it under "config")."""
        answer = self._json(client.get_model_config, model, version, **kwargs)
        return answer["config"] if self.name == "grpc" else answer

    def stats(self, client, model: str = "", version: str = "", **kwargs) -> dict:
        return self._json(client.get_inference_statistics, model, version, **kwargs)

    def index(self, client, **kwargs) -> list[dict]:
        answer = self._json(client.get_model_repository_index, **kwargs)
        return answer.get("models", []) if self.name == "grpc" else answer

    def response(self, result) -> dict:
        """An inference result's response, without its tensors' bytes."""
        if self.name == "http":
            return result.get_response()
        response = as_dict(result.get_response())
        response.pop("raw_output_contents", None)
        return response

    def _json(self, call, *args, **kwargs) -> Any:
        return call(*args, **kwargs) if self.name == "http" else as_dict(call(*args, **kwargs))


# int64 fields, which protobuf's JSON mapping writes as strings and the REST API as numbers
_INT64 = frozenset({"shape", "dims", "count", "ns", "inference_count", "execution_count", "last_inference",
                    "batch_size", "byte_size", "offset", "device_id"})


def as_dict(message) -> dict:
    """A gRPC answer as the REST API's JSON: the proto's field names, every field
    (default values too), 64-bit integers as numbers."""
    return _ints(json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                           preserving_proto_field_name=True))


def _ints(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _ints(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v, key) for v in value]
    if key in _INT64 and isinstance(value, str):
        return int(value)
    return value
