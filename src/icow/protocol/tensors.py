"""numpy arrays to and from the protocol's tensor contents.

Raw contents are little-endian element bytes (BYTES: a 4-byte length before
each element); typed contents are the repeated fields of InferTensorContents.
Shared by the server's protobuf codec and the client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import _wire
from .datatypes import Datatype
from .errors import invalid

MAX_RANK = 64  # numpy's limit (NPY_MAXDIMS); reshape to more is a ValueError, not the client's error
MAX_ELEMENTS = 1 << 48  # far beyond any message; numpy's own limit is about 2**63 bytes


def check_rank(shape: Sequence[int], what: str) -> None:
    """A shape of more dimensions than an array may have is INVALID_ARGUMENT."""
    if len(shape) > MAX_RANK:
        raise invalid(f"{what}: shape has {len(shape)} dimensions, more than the {MAX_RANK} a tensor may have")


def element_count(shape: Sequence[int], what: str) -> int:
    """Number of elements of ``shape``; negative dims, or too many, are an error."""
    check_rank(shape, what)
    if any(d < 0 for d in shape):
        raise invalid(f"{what}: shape {list(shape)} has a negative dimension")
    # numpy refuses a shape whose nonzero dims multiply past its size limit, even with a 0 among them
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise invalid(f"{what}: shape {list(shape)} has more elements than a tensor may have")
    return math.prod(shape)


def to_raw(array: np.ndarray, datatype: Datatype) -> bytes:
    """The raw contents of ``array`` as ``datatype``."""
    if datatype.name == "BYTES":
        return _wire.pack_bytes(array.ravel().tolist())
    if datatype.name == "BF16":  # BF16_BITS or ml_dtypes.bfloat16: the 2 bytes as they are, never cast
        return np.ascontiguousarray(array).view(np.uint16).astype("<u2", copy=False).tobytes()
    return np.ascontiguousarray(array, dtype=datatype.numpy.newbyteorder("<")).tobytes()


def from_raw(data: bytes, datatype: Datatype, shape: Sequence[int], what: str) -> np.ndarray:
    """A read-only array viewing ``data`` (BYTES: an object array of bytes)."""
    count = element_count(shape, what)
    if datatype.name == "BYTES":
        if count > len(data) // 4:  # a 4-byte length prefix each; also keeps count within a C ssize_t
            raise invalid(f"{what}: shape {list(shape)} counts {count} BYTES elements, more than "
                          f"{len(data)} bytes of contents can hold (each has a 4-byte length prefix)")
        try:
            items = _wire.unpack_bytes(data, count)
        except ValueError as e:
            raise invalid(f"{what}: BYTES contents do not hold {count} elements: {e}") from None
        return _object_array(items, shape)
    expected = count * datatype.numpy.itemsize
    if len(data) != expected:
        raise invalid(
            f"{what}: shape {list(shape)} of {datatype.name} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=datatype.numpy.newbyteorder("<")).reshape(shape)


def from_contents(contents, datatype: Datatype, shape: Sequence[int], what: str) -> np.ndarray:
    """An array from typed contents (an InferTensorContents message)."""
    if datatype.contents is None:
        raise invalid(f"{what}: {datatype.name} has no typed contents; send it in raw_input_contents")
    values = getattr(contents, datatype.contents)
    count = element_count(shape, what)
    if len(values) != count:
        raise invalid(
            f"{what}: shape {list(shape)} needs {count} elements, "
            f"got {len(values)} in {datatype.contents}"
        )
    if datatype.name == "BYTES":
        return _object_array(list(values), shape)
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except OverflowError:
        raise invalid(f"{what}: a value in {datatype.contents} does not fit {datatype.name}") from None


def _object_array(items: list, shape: Sequence[int]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)
