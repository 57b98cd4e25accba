"""An inference request's JSON header (and binary part) to icow's InferRequest, and the
model's outputs to the HTTP answer: JSON ``data``, or binary (Triton's extension) for
the outputs that ask for it.

Binary inputs are numpy views of the request body: no copy before ONNX Runtime. An
answer whose outputs are all binary is one buffer, its JSON header first, and ONNX
Runtime writes the outputs into their places in it (Model.run_into)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .. import _wire
from ..codecs.request import InferRequest
from ..protocol.datatypes import BF16_BITS, DATATYPES, Datatype, lookup
from ..protocol.errors import invalid
from ..protocol.names import check_name
from ..protocol.tensors import element_count, from_raw
from ..runtime.model import OutputSpec
from ..shm.registry import Leases
from ..shm.tensors import shm_range

_KINDS = {"BOOL": "b", "BYTES": "U"}  # JSON element kinds each datatype takes; numbers take the rest
_INTEGER = "iu"


class Outputs:
    """Which outputs the client wants, and which of them in binary."""

    def __init__(self, binary_all: bool) -> None:
        self.binary_all = binary_all
        self.binary: dict[str, bool] = {}

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_all)


def decode(header: Mapping[str, Any], binary: memoryview, leases: Leases) -> tuple[InferRequest, Outputs]:
    """The request in ``header`` (a parsed JSON object) with its binary tensors in ``binary``."""
    request_id = _field(header, "id", str, "")
    parameters = _field(header, "parameters", dict, {})
    request = InferRequest("", "", request_id, parameters=parameters)
    outputs = Outputs(_field(parameters, "binary_data_output", bool, False, "parameters.binary_data_output"))
    inputs = _field(header, "inputs", list, None)
    if not inputs:
        raise invalid("the request has no inputs: 'inputs' must be a non-empty list")
    offset = 0
    for i, tensor in enumerate(inputs):
        name, array, used = _input(tensor, i, binary[offset:], leases)
        if name in request.inputs:
            raise invalid(f"input '{name}' appears twice in the request")
        request.inputs[name] = array
        offset += used
    if offset != len(binary):
        raise invalid(f"the inputs' binary_data_size add up to {offset} bytes, but {len(binary)} bytes "
                      "follow the JSON header")
    for i, tensor in enumerate(_field(header, "outputs", list, [])):
        _output(tensor, i, request, outputs, leases)
    return request, outputs


def _field(obj: Mapping[str, Any], key: str, kind: type, default: Any, what: str | None = None) -> Any:
    value = obj.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(f"'{what or key}' must be {_A[kind]}, got {_name(value)}")
    return value


_A = {str: "a string", dict: "an object", list: "a list", bool: "true or false", int: "an integer"}


def _name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _input(tensor: Any, index: int, binary: memoryview, leases: Leases) -> tuple[str, np.ndarray, int]:
    """(name, array, bytes of ``binary`` it used) of input ``index``."""
    if not isinstance(tensor, dict):
        raise invalid(f"inputs[{index}] must be an object, got {_name(tensor)}")
    name = check_name(_field(tensor, "name", str, "", f"inputs[{index}].name"), "input name")
    what = f"input '{name}'"
    datatype = _datatype(_field(tensor, "datatype", str, "", f"{what}: datatype"), what)
    shape = _shape(tensor.get("shape"), what)
    parameters = _field(tensor, "parameters", dict, {}, f"{what}: parameters")
    where = shm_range(parameters, leases, what)
    size = parameters.get("binary_data_size")
    sources = (where is not None) + (size is not None) + ("data" in tensor)
    if sources != 1:
        raise invalid(f"{what}: give exactly one of 'data', parameters.binary_data_size or a "
                      "shared_memory_region")
    if where is not None:
        from ..shm.tensors import input_array

        return name, input_array(where, datatype.name, shape, what), 0
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise invalid(f"{what}: binary_data_size must be a non-negative integer, got {size!r}")
        if size > len(binary):
            raise invalid(f"{what}: binary_data_size is {size} bytes, but only {len(binary)} bytes of binary "
                          "data are left in the body")
        return name, from_raw(binary[:size], datatype, shape, what), size
    return name, _from_json(tensor["data"], datatype, shape, what), 0


def _datatype(name: str, what: str) -> Datatype:
    try:
        return lookup(name)
    except KeyError as e:
        raise invalid(f"{what}: {e.args[0]}") from None


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid(f"{what}: shape must be a list of integers, got {_name(shape)}")
    element_count(shape, what)  # rank and signs
    return tuple(shape)


def _from_json(data: Any, datatype: Datatype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A tensor from JSON ``data``: flat in row-major order, or nested as ``shape``."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        values = np.asarray(data, dtype=object if datatype.name == "BYTES" else None)
    except (ValueError, OverflowError):  # ragged nesting, or an integer beyond 64 bits
        raise invalid(f"{what}: data must be a list of {datatype.name} values, flat or nested as the shape "
                      f"{list(shape)}") from None
    if values.dtype.kind == "f" and datatype.name == "UINT64":
        values = _exact_uint64(data, values, what)
    if values.shape != shape and values.shape != (count,):
        raise invalid(f"{what}: data has shape {list(values.shape)}, but the shape is {list(shape)} "
                      f"({count} elements, flat or nested)")
    return _typed(values, datatype, what).reshape(shape)


def _exact_uint64(data: list, values: np.ndarray, what: str) -> np.ndarray:
    """numpy reads integers above 2**63 - 1 beside others as float64, which loses their
    low bits (and is then refused as not integers): read them again one by one."""
    exact = np.asarray(data, dtype=object)
    if exact.shape != values.shape or not all(type(v) is int for v in exact.flat):
        return values  # floats indeed: refused by _typed
    if not all(0 <= v < 2**64 for v in exact.flat):
        raise invalid(f"{what}: a value does not fit UINT64 (0 to {2**64 - 1})")
    return exact.astype(np.uint64)


def _typed(values: np.ndarray, datatype: Datatype, what: str) -> np.ndarray:
    if values.size == 0:
        return np.empty(0, dtype=datatype.numpy)
    if datatype.name == "BYTES":
        if not all(isinstance(v, str) for v in values.flat):
            raise invalid(f"{what}: BYTES data must be strings")
        return np.array([v.encode() for v in values.flat], dtype=object)
    kind = values.dtype.kind
    wanted = _KINDS.get(datatype.name, _INTEGER if datatype.numpy.kind in _INTEGER else "iuf")
    if kind not in wanted:
        raise invalid(f"{what}: {datatype.name} data must be {_described(datatype)}, got {values.dtype.kind!r} "
                      f"values ({_sample(values)})")
    if kind in _INTEGER and datatype.numpy.kind in _INTEGER:
        info = np.iinfo(datatype.numpy)
        if values.min() < info.min or values.max() > info.max:
            raise invalid(f"{what}: a value does not fit {datatype.name} ({info.min} to {info.max})")
    if datatype.name == "BF16":
        return _to_bf16(values.astype(np.float32))
    return values.astype(datatype.numpy, copy=False)


def _described(datatype: Datatype) -> str:
    if datatype.name == "BOOL":
        return "true or false"
    return "integers" if datatype.numpy.kind in _INTEGER else "numbers"


def _sample(values: np.ndarray) -> str:
    return repr(values.flat[0])[:32]


def _to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 to BF16 bits, rounded to nearest even as hardware converts."""
    bits = values.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).view(BF16_BITS)


def _output(tensor: Any, index: int, request: InferRequest, outputs: Outputs, leases: Leases) -> None:
    if not isinstance(tensor, dict):
        raise invalid(f"outputs[{index}] must be an object, got {_name(tensor)}")
    name = check_name(_field(tensor, "name", str, "", f"outputs[{index}].name"), "output name")
    what = f"output '{name}'"
    parameters = _field(tensor, "parameters", dict, {}, f"{what}: parameters")
    if "classification" in parameters:
        raise invalid(f"{what}: the classification extension is not supported; request the output "
                      "and take its top classes in the client")
    where = shm_range(parameters, leases, what)
    if where is not None:
        request.shm_outputs[name] = where
    binary = parameters.get("binary_data")
    if binary is not None:
        outputs.binary[name] = _field(parameters, "binary_data", bool, None, f"{what}: binary_data")
    request.outputs.append(name)


# -- the answer -------------------------------------------------------------------

class Answer:
    """ResponseSlots (runtime.model) for an HTTP answer. Binary outputs have a slot in
    one buffer; JSON ones a scratch array that becomes ``data`` when it is finished."""

    def __init__(self, head: dict[str, Any], specs: list[OutputSpec], outputs: Outputs,
                 shm: Mapping[str, Any]) -> None:
        self.head = head
        self._specs = specs
        self._binary = [outputs.is_binary(name) and name not in shm for name, *_ in specs]
        self._json = [not b and name not in shm for b, (name, *_) in zip(self._binary, specs)]
        listed = []
        for (name, datatype, shape, nbytes), binary in zip(specs, self._binary):
            entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
            if binary:
                entry["parameters"] = {"binary_data_size": nbytes}
            listed.append(entry)
        head["outputs"] = listed
        binary_bytes = sum(s[3] for s, b in zip(specs, self._binary) if b)
        # All binary: the header is known now, so the outputs are written after it in place.
        prefix = orjson.dumps(head) if not any(self._json) else b""
        self.header_length = len(prefix) if binary_bytes else None
        self._buffer = np.empty(len(prefix) + binary_bytes, dtype=np.uint8)
        self._buffer[:len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        self._slots: list[np.ndarray] = []
        at = len(prefix)
        for (_, _, _, nbytes), binary in zip(specs, self._binary):
            if binary:
                self._slots.append(self._buffer[at:at + nbytes])
                at += nbytes
            else:
                self._slots.append(np.empty(nbytes, dtype=np.uint8))

    def address(self, index: int) -> int:
        return _wire.address_of(self._slots[index])

    def write(self, index: int, data) -> None:
        self._slots[index][:] = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)

    def mark_written(self, index: int) -> None:
        pass

    def finish(self) -> tuple[bytes | memoryview, int | None]:
        """The body, and the length of its JSON header when binary outputs follow it."""
        if not any(self._json):
            return (memoryview(self._buffer) if self.header_length else orjson.dumps(self.head)), self.header_length
        for entry, slot, spec, is_json in zip(self.head["outputs"], self._slots, self._specs, self._json):
            if is_json:
                entry["data"] = _json_data(slot, spec)
        prefix = orjson.dumps(self.head, option=orjson.OPT_SERIALIZE_NUMPY)
        if not any(self._binary):
            return prefix, None
        return prefix + self._buffer.tobytes(), len(prefix)


def _json_data(slot: np.ndarray, spec: OutputSpec) -> Any:
    name, datatype, shape, _ = spec
    if datatype == "BYTES":
        items = _wire.unpack_bytes(slot, math.prod(shape))
        try:
            return [item.decode() for item in items]
        except UnicodeDecodeError:
            raise invalid(f"output '{name}' holds bytes that are not UTF-8 text, which JSON cannot carry; "
                          "request it with binary_data: true") from None
    dt = DATATYPES[datatype]
    if datatype == "BF16":
        return (slot.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return slot.view(dt.numpy.newbyteorder("<")).astype(dt.numpy, copy=False)


def allocator(model_name: str, version: str, request_id: str, outputs: Outputs, shm: Mapping[str, Any]):
    """``allocate`` for Model.run_into: an Answer for the outputs' specs."""
    def allocate(specs: list[OutputSpec]) -> Answer:
        head: dict[str, Any] = {"model_name": model_name, "model_version": version}
        if request_id:
            head["id"] = request_id
        return Answer(head, specs, outputs, shm)

    return allocate
