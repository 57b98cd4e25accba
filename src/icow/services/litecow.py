"""lIteCOW's ``ICOW`` service front end (proto/litecow.proto), so that clients of
the lIteCOW project keep working: ``model_key`` and ``model_version`` to a model
of the repository, lIteCOW's typed arrays to numpy and back. It translates; the
repository and the model decide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from .._proto import litecow_pb2 as lc
from ..protocol.errors import invalid, not_found
from ..protocol.names import shorten
from ..protocol.tensors import element_count
from ..repository.repository import Repository
from ..runtime.model import Model
from .oip import _rpc, deadline_ns  # the same error contract as the v2 front end

if TYPE_CHECKING:
    from ..repository.object_store import StoreLocation

SERVICE = "ICOW"

# A client that reads DictionaryArray says so with this request metadata; litecow
# 0.1.0 does not know it, and would fail on such an output with no word of why.
ACCEPT_METADATA = "litecow-accept"
DICTIONARY_ARRAY = "dictionary_array"

# Array's typed fields, by the numpy dtype and the protocol datatype they carry.
_FIELDS: dict[str, tuple[str, np.dtype]] = {
    "float_array": ("FP32", np.dtype(np.float32)),
    "double_array": ("FP64", np.dtype(np.float64)),
    "int32_array": ("INT32", np.dtype(np.int32)),
    "int64_array": ("INT64", np.dtype(np.int64)),
}
_FIELD_BY_DATATYPE = {datatype: name for name, (datatype, _) in _FIELDS.items()}
_CARRIED = "float32, float64, int32 and int64"

# ONNX Runtime's type strings of the dictionary outputs DictionaryArray carries:
# ZipMap's seq(map(int64|string,tensor(float))), and plain maps. lIteCOW's Key and
# Value hold a string, an int32 or a float.
_DICTIONARY_TYPE = re.compile(r"^(seq\()?map\((int64|string),tensor\((float|int32|int64)\)\)(\))?$")
_INT32 = range(-(2**31), 2**31)


class LitecowService:
    """Serves ``ICOW/get_inference`` from a repository (the same one the v2 service uses).

    Parameters
    ----------
    repository : Repository
        Where models are resolved.
    store : StoreLocation, optional
        The object store the repository mirrors, if any: a ``model_key`` must
        then name its bucket. Without one, any bucket names the local repository.
    """

    def __init__(self, repository: Repository, store: StoreLocation | None = None) -> None:
        self.repository = repository
        self.store = store

    @_rpc
    def get_inference_bytes(self, data: bytes, context: grpc.ServicerContext) -> lc.NamedArrays:
        """``get_inference`` on the serialized request: a malformed one is INVALID_ARGUMENT
        (gRPC's own deserializer would answer INTERNAL)."""
        try:
            request = lc.InferenceRequest.FromString(data)
        except DecodeError as e:
            raise invalid(f"malformed InferenceRequest: {e}") from None
        return self.get_inference(request, context)

    def get_inference(self, request: lc.InferenceRequest, context: grpc.ServicerContext) -> lc.NamedArrays:
        """Run the model that ``model_key`` and ``model_version`` name on the request's inputs."""
        model = self.repository.get(model_name(request.model_key, self.store), request.model_version)
        inputs = _inputs(request, model)
        names = model.output_names(list(request.outputs), non_tensor=True)
        accepted = _accepted(context)
        fields = {name: _output_field(model, name, accepted) for name in names}  # before running
        outputs = model.run(inputs, names, non_tensor=True, deadline_ns=deadline_ns(context),
                            alive=context.is_active)
        response = lc.NamedArrays()
        for name, value in outputs.items():
            _fill(response.name_to_array[name], fields[name], value)
        return response


def method_handlers(service: LitecowService) -> dict[str, grpc.RpcMethodHandler]:
    """gRPC handlers for the ``ICOW`` service (method path ``/ICOW/get_inference``)."""
    return {"get_inference": grpc.unary_unary_rpc_method_handler(
        service.get_inference_bytes, response_serializer=lc.NamedArrays.SerializeToString)}


def model_name(model_key: str, store: StoreLocation | None = None) -> str:
    """The repository's model name for a lIteCOW ``model_key``.

    Parameters
    ----------
    model_key : str
        ``s3://<bucket>/<name>``, ``s3://<bucket>/<prefix>/<name>`` (the prefix
        of the repository's store), either with ``.onnx`` after the name as
        lIteCOW's object keys often had, or a bare model name.
    store : StoreLocation, optional
        The repository's object store; its bucket must be the key's.

    Returns
    -------
    str
        The model name.
    """
    if "://" not in model_key:
        path = model_key
    else:
        try:
            url = urlsplit(model_key)
        except ValueError:  # e.g. "s3://[x/m": a bracket opens an IPv6 host that never closes
            url = None
        if url is None or url.scheme != "s3":
            raise invalid(f"model_key '{shorten(model_key)}' is not an s3://<bucket>/<model> URL")
        if store is not None and url.netloc != store.bucket:
            raise not_found(f"model_key '{shorten(model_key)}' names bucket '{shorten(url.netloc)}', but this server's "
                            f"repository is {store.url}")
        path = url.path.strip("/")
        if store is not None and store.prefix and path.startswith(store.prefix + "/"):
            path = path[len(store.prefix) + 1:]
    name = path.removesuffix(".onnx")
    if not name or "/" in name:
        raise not_found(f"model_key '{shorten(model_key)}' names no model: expected s3://<bucket>/<model>")
    return name


def _accepted(context: grpc.ServicerContext) -> set[str]:
    values = [v for k, v in context.invocation_metadata() if k == ACCEPT_METADATA]
    return {item.strip() for value in values for item in value.split(",")}


def _inputs(request: lc.InferenceRequest, model: Model) -> dict[str, np.ndarray]:
    kind = request.WhichOneof("inputs")
    if kind == "named_inputs":
        return {name: to_numpy(array, f"input '{name}'")
                for name, array in request.named_inputs.name_to_array.items()}
    arrays = request.unnamed_inputs.arrays if kind == "unnamed_inputs" else []
    names = list(model.inputs)
    if len(arrays) != len(names):
        raise invalid(f"model '{model.name}' takes {len(names)} input(s) ({', '.join(names)}), "
                      f"the request has {len(arrays)} positional input(s)")
    return {name: to_numpy(array, f"input '{name}' (position {i})")
            for i, (name, array) in enumerate(zip(names, arrays))}


def to_numpy(array: lc.Array, what: str) -> np.ndarray:
    """A numpy array from a lIteCOW Array (one of its four numeric types).

    Parameters
    ----------
    array : lc.Array
        The message.
    what : str
        The tensor, as error messages name it.

    Returns
    -------
    np.ndarray
    """
    field = array.WhichOneof("array")
    if field is None:
        raise invalid(f"{what} has no values: set one of {', '.join(_FIELDS)}")
    if field not in _FIELDS:
        raise invalid(f"{what} is a {field}, which is an output type only; inputs are {_CARRIED}")
    values = getattr(array, field).values
    shape = list(array.shape)
    count = element_count(shape, what)
    if len(values) != count:
        raise invalid(f"{what}: shape {shape} needs {count} values, got {len(values)}")
    return np.fromiter(values, dtype=_FIELDS[field][1], count=len(values)).reshape(shape)


def _output_field(model: Model, name: str, accepted: set[str]) -> str:
    """The Array field that carries output ``name`` (for a dictionary output, its
    ONNX Runtime type), or INVALID_ARGUMENT naming the output."""
    spec = model.outputs.get(name)
    if spec is not None:
        if spec.datatype.name not in _FIELD_BY_DATATYPE:
            raise invalid(f"output '{name}' of model '{model.name}' is {spec.datatype.name}, which lIteCOW's "
                          f"Array cannot carry (it carries {_CARRIED}); leave it out with outputs=[...]")
        return _FIELD_BY_DATATYPE[spec.datatype.name]
    ort_type = model.non_tensor_outputs[name]
    if not _DICTIONARY_TYPE.match(ort_type):
        raise invalid(f"output '{name}' of model '{model.name}' is a {ort_type}, which lIteCOW's Array "
                      "cannot carry; leave it out with outputs=[...]")
    if DICTIONARY_ARRAY not in accepted:
        raise invalid(f"output '{name}' of model '{model.name}' is a dictionary output ({ort_type}), sent as "
                      "a DictionaryArray, which this client does not read (litecow 0.1.0 knows only "
                      f"{_CARRIED} arrays): leave it out with outputs=[...], or use a client generated from "
                      f"icow's proto/litecow.proto that sends the metadata '{ACCEPT_METADATA}: {DICTIONARY_ARRAY}'")
    return ort_type


def _fill(message: lc.Array, field: str, value: Any) -> None:
    if field in _FIELDS:
        array = np.asarray(value)
        message.shape.extend(array.shape)
        values = getattr(message, field)
        values.SetInParent()  # set even when empty: a client tells the type by which field is set
        values.values.extend(array.ravel().tolist())
        return
    is_sequence, key_type, value_type = _DICTIONARY_TYPE.match(field).group(1, 2, 3)
    # A sequence of maps comes as a list of dicts, a map as one dict.
    dictionaries: Sequence[Mapping] = value if is_sequence else [value]
    if is_sequence:
        message.shape.append(len(dictionaries))
    key_field = "str" if key_type == "string" else "int"
    value_field = "float" if value_type == "float" else "int"  # ORT gives Python numbers: the type says which
    message.dict_array.SetInParent()
    for dictionary in dictionaries:
        entry = message.dict_array.values.add()
        for key, item in dictionary.items():
            if (key_field == "int" and key not in _INT32) or (value_field == "int" and item not in _INT32):
                raise invalid(f"a dictionary output holds {key}: {item}, beyond the int32 of lIteCOW's Key "
                              "and Value")
            pair = entry.pairs.add()
            setattr(pair.key, key_field, key)
            setattr(pair.value, value_field, item)
