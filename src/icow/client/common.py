"""What icow's sync and asyncio clients share: building requests, decoding
responses, the retry schedule and turning gRPC errors into icow's one error.

Every function here is pure (no I/O): each RPC is described by a `Call` that
names the stub method, carries the request and knows how to decode the
response; `client.Client` and `aio_client.AsyncClient` only send it.

Imports grpcio, protobuf, numpy and icow's own client-safe modules only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import grpc
import numpy as np

from .._proto import inference_pb2 as pb
from .._proto import model_config_pb2
from .._proto import rollout_pb2 as rp
from ..protocol import datatypes, tensors
from ..protocol.errors import InferenceServerError

T = TypeVar("T")

#: The longest pause between two attempts, in seconds.
MAX_BACKOFF = 5.0

#: Inputs of `infer`: by name, or positional in the order of the model's metadata.
Inputs = Mapping[str, Any] | Sequence[Any] | np.ndarray

Version = int | str | None


class ModelIndex(NamedTuple):
    """One row of the repository index: a model (version) and its state."""

    name: str
    version: str
    state: str
    reason: str


class InferResult(NamedTuple):
    """An inference's outputs, with the version that answered and the request's id."""

    outputs: dict[str, np.ndarray]
    model_version: str
    id: str


class StreamRequest(NamedTuple):
    """One request of a stream (`Client.stream_infer`): `Client.infer_result`'s arguments.
    An empty ``id`` is numbered by the client: "0", "1", ... in the order sent."""

    model: str
    inputs: Inputs
    version: Version = None
    outputs: Sequence[str] | None = None
    id: str = ""


class StreamResult(NamedTuple):
    """One answer of a stream: the id of the request it answers, and its result or its error
    (whose code is UNKNOWN: a stream's error carries only the server's message)."""

    id: str
    result: InferResult | None
    error: InferenceServerError | None

    def value(self) -> InferResult:
        """The result, or the error raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC: the stub method's name, its request, and its response decoder;
    ``service`` says whose stub: "inference" or "rollout" (icow's ModelRollout)."""

    method: str
    request: Any
    decode: Callable[[Any], T]
    service: str = "inference"


# --------------------------------------------------------------------------
# Channel, retries and errors


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC channel options lifting the 4 MiB message limits to ``max_message_bytes``."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def retry_delays(retries: int, backoff: float) -> Iterator[float]:
    """Pauses before each of ``retries`` retries: ``backoff`` doubling, capped at `MAX_BACKOFF`."""
    for attempt in range(retries):
        yield min(backoff * 2**attempt, MAX_BACKOFF)


def next_delay(error: grpc.RpcError, delays: Iterator[float]) -> float:
    """The pause before retrying after ``error``.

    Raises
    ------
    InferenceServerError
        ``error`` converted, when its status is not UNAVAILABLE or ``delays`` is spent.
    """
    delay = next(delays, None) if _code(error) == grpc.StatusCode.UNAVAILABLE else None
    if delay is None:
        raise to_error(error) from None
    return delay


def to_error(error: grpc.RpcError) -> InferenceServerError:
    """``error`` as an `InferenceServerError` with its status and the server's message."""
    details = error.details() if hasattr(error, "details") else None
    return InferenceServerError(_code(error), details or str(error))


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    code = error.code() if hasattr(error, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _invalid(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _version(version: Version) -> str:
    return "" if version is None else str(version)


# --------------------------------------------------------------------------
# Health, metadata and repository


def live() -> Call[bool]:
    """ServerLive: whether the server answers."""
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)


def ready(model: str | None, version: Version) -> Call[bool]:
    """ServerReady when ``model`` is None, else ModelReady."""
    if model is None:
        return Call("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)
    request = pb.ModelReadyRequest(name=model, version=_version(version))
    return Call("ModelReady", request, lambda r: r.ready)


def server_metadata() -> Call[pb.ServerMetadataResponse]:
    """ServerMetadata: name, version and extensions of the server."""
    return Call("ServerMetadata", pb.ServerMetadataRequest(), lambda r: r)


def metadata(model: str, version: Version) -> Call[pb.ModelMetadataResponse]:
    """ModelMetadata: the model's versions, platform, inputs and outputs."""
    request = pb.ModelMetadataRequest(name=model, version=_version(version))
    return Call("ModelMetadata", request, lambda r: r)


def config(model: str, version: Version) -> Call[model_config_pb2.ModelConfig]:
    """ModelConfig: the model's configuration."""
    request = pb.ModelConfigRequest(name=model, version=_version(version))
    return Call("ModelConfig", request, lambda r: r.config)


def repository_index(ready_only: bool) -> Call[list[ModelIndex]]:
    """RepositoryIndex: every model (or only the ready ones) and its state."""
    request = pb.RepositoryIndexRequest(ready=ready_only)
    return Call("RepositoryIndex", request, _decode_index)


def _decode_index(response: pb.RepositoryIndexResponse) -> list[ModelIndex]:
    return [ModelIndex(m.name, m.version, m.state, m.reason) for m in response.models]


def load(model: str, config: str | None = None, files: Mapping[str, bytes] | None = None) -> Call[None]:
    """RepositoryModelLoad: load (or reload) ``model``; with ``config`` (JSON) and ``files``
    (``{"file:<version>/model.onnx": bytes}``), deploy them first (Triton's parameters)."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        request.parameters["config"].string_param = config
    for key, data in (files or {}).items():
        request.parameters[key].bytes_param = data
    return Call("RepositoryModelLoad", request, _none)


def unload(model: str) -> Call[None]:
    """RepositoryModelUnload: unload ``model``."""
    return Call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model), _none)


def _none(response: Any) -> None:
    return None


def routing(model: str) -> Call[rp.Routing]:
    """icow's GetRouting: the model's versions, labels and traffic split."""
    return Call("GetRouting", rp.GetRoutingRequest(model_name=model), lambda r: r, "rollout")


def set_routing(model: str, labels: Mapping[str, int] | None, remove_labels: Sequence[str],
                split: Mapping[str, int] | Sequence[tuple[str, int]] | None,
                expected_generation: int) -> Call[rp.Routing]:
    """icow's SetRouting: labels set or moved, labels removed, the split replaced
    (unless None; empty: no split), in one step."""
    request = rp.SetRoutingRequest(model_name=model, labels=dict(labels or {}), remove_labels=list(remove_labels),
                                   expected_generation=expected_generation)
    if split is not None:
        pairs = split.items() if isinstance(split, Mapping) else split
        request.replace_split = True
        request.split.extend(rp.Weight(target=str(t), weight=int(w)) for t, w in pairs)
    return Call("SetRouting", request, lambda r: r, "rollout")


# --------------------------------------------------------------------------
# Metadata cache for positional inputs


def cache_key(model: str, version: Version) -> tuple[str, str]:
    """The key of a model version's metadata in a client's cache."""
    return (model, _version(version))


def forget(cache: dict[tuple[str, str], Any], model: str) -> None:
    """Drop every cached version of ``model`` (after it was loaded or unloaded)."""
    for key in list(cache):
        if key[0] == model:
            cache.pop(key, None)


def positional(inputs: Sequence[Any] | np.ndarray) -> list[Any]:
    """``inputs`` as a list of positional inputs; a single array is one input."""
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return list(inputs)


def name_inputs(inputs: Sequence[Any], meta: pb.ModelMetadataResponse) -> dict[str, Any]:
    """Positional ``inputs`` keyed by the model's input names, in metadata order.

    Raises
    ------
    InferenceServerError
        INVALID_ARGUMENT when the count differs from the model's inputs.
    """
    names = [t.name for t in meta.inputs]
    if len(inputs) != len(names):
        raise _invalid(
            f"model {meta.name!r} takes {len(names)} inputs ({', '.join(names)}), "
            f"got {len(inputs)} positional"
        )
    return dict(zip(names, inputs))


# --------------------------------------------------------------------------
# Inference


def infer(
    model: str,
    inputs: Mapping[str, Any],
    version: Version,
    outputs: Sequence[str] | None,
    request_id: str = "",
) -> Call[dict[str, np.ndarray]]:
    """ModelInfer with named ``inputs`` sent as raw contents.

    Raises
    ------
    InferenceServerError
        INVALID_ARGUMENT when an input's dtype has no protocol datatype.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=_version(version), id=request_id)
    for name, value in inputs.items():
        _add_input(request, name, np.asarray(value))
    if isinstance(outputs, str):
        outputs = [outputs]
    for name in outputs or ():
        request.outputs.add(name=name)
    return Call("ModelInfer", request, decode_outputs)


def infer_result(model: str, inputs: Mapping[str, Any], version: Version, outputs: Sequence[str] | None,
                 request_id: str) -> Call[InferResult]:
    """As `infer`, decoding the response's ``model_version`` and ``id`` too."""
    call = infer(model, inputs, version, outputs, request_id)
    return Call(call.method, call.request,
                lambda r: InferResult(decode_outputs(r), r.model_version, r.id))


def _add_input(request: pb.ModelInferRequest, name: str, array: np.ndarray) -> None:
    try:
        datatype = datatypes.from_numpy(array.dtype)
    except TypeError as e:
        raise _invalid(f"input {name!r}: {e}") from None
    try:
        raw = tensors.to_raw(array, datatype)
    except TypeError as e:  # a BYTES element that is neither str nor bytes
        raise _invalid(f"input {name!r}: {e}") from None
    request.inputs.add(name=name, datatype=datatype.name, shape=array.shape)
    request.raw_input_contents.append(raw)


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's outputs by name: read-only views of the raw contents
    (BYTES: object arrays of ``bytes``); typed contents when no raw ones came.

    Raises
    ------
    InferenceServerError
        The response's contents do not match its outputs' datatypes and shapes.
    """
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise _bad_response(f"{len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    result = {}
    for i, tensor in enumerate(response.outputs):
        what = f"output {tensor.name!r}"
        try:
            datatype = datatypes.lookup(tensor.datatype)
        except KeyError as e:
            raise _bad_response(f"{what}: {e.args[0]}") from None
        if raw:
            result[tensor.name] = tensors.from_raw(raw[i], datatype, tensor.shape, what)
        else:
            result[tensor.name] = tensors.from_contents(tensor.contents, datatype, tensor.shape, what)
    return result


def _bad_response(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.INTERNAL, f"malformed ModelInferResponse: {message}")


# --------------------------------------------------------------------------
# Streaming inference


def stream_message(request: StreamRequest, inputs: Mapping[str, Any], index: int) -> pb.ModelInferRequest:
    """The ModelInferRequest of a stream's ``index``-th request, its ``inputs`` named."""
    call = infer(request.model, inputs, request.version, request.outputs, request.id or str(index))
    return call.request


def stream_result(response: pb.ModelStreamInferResponse) -> StreamResult:
    """A ModelStreamInferResponse decoded: its request's id, and the outputs or the error."""
    answer = response.infer_response
    if response.error_message:
        return StreamResult(answer.id, None, InferenceServerError(grpc.StatusCode.UNKNOWN, response.error_message))
    try:
        return StreamResult(answer.id, InferResult(decode_outputs(answer), answer.model_version, answer.id), None)
    except InferenceServerError as e:
        return StreamResult(answer.id, None, e)
