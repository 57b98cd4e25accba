"""The tensor datatypes of the Open Inference Protocol and how they map to
numpy, to ONNX Runtime's type strings and to the model config's enum.

numpy has no bfloat16: a BF16 tensor is carried as its raw 2-byte values, in an
array of dtype ``BF16_BITS`` (one little-endian uint16 field). It is not uint16,
so that BF16 and UINT16 stay apart wherever an array's dtype says its datatype;
``bits.view(BF16_BITS)`` makes one from uint16 bits, ``.view(np.uint16)`` gives
them back. Arrays of ``ml_dtypes.bfloat16`` are BF16 too.

Imported by the client too: numpy only, no onnxruntime.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

BF16_BITS = np.dtype([("bf16", "<u2")])
_ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16


class Datatype(NamedTuple):
    name: str  # the protocol's name, e.g. "FP32"
    numpy: np.dtype  # object for BYTES, BF16_BITS for BF16
    ort: str  # onnxruntime's type string, e.g. "tensor(float)"
    config: str  # ModelConfig's DataType enum name, e.g. "TYPE_FP32"
    contents: str | None  # the InferTensorContents field for typed contents

    @property
    def bind(self) -> type | int:
        """What ONNX Runtime's IOBinding takes as the element type: the numpy type, or
        ONNX's element type number where numpy has none (BF16)."""
        return _ONNX_BFLOAT16 if self.numpy == BF16_BITS else self.numpy.type


def _dt(name: str, numpy: str | np.dtype, ort: str, config: str, contents: str | None) -> Datatype:
    return Datatype(name, np.dtype(numpy), f"tensor({ort})", config, contents)


DATATYPES: dict[str, Datatype] = {d.name: d for d in (
    _dt("BOOL", "bool", "bool", "TYPE_BOOL", "bool_contents"),
    _dt("UINT8", "uint8", "uint8", "TYPE_UINT8", "uint_contents"),
    _dt("UINT16", "uint16", "uint16", "TYPE_UINT16", "uint_contents"),
    _dt("UINT32", "uint32", "uint32", "TYPE_UINT32", "uint_contents"),
    _dt("UINT64", "uint64", "uint64", "TYPE_UINT64", "uint64_contents"),
    _dt("INT8", "int8", "int8", "TYPE_INT8", "int_contents"),
    _dt("INT16", "int16", "int16", "TYPE_INT16", "int_contents"),
    _dt("INT32", "int32", "int32", "TYPE_INT32", "int_contents"),
    _dt("INT64", "int64", "int64", "TYPE_INT64", "int64_contents"),
    _dt("FP16", "float16", "float16", "TYPE_FP16", None),  # raw contents only
    _dt("BF16", BF16_BITS, "bfloat16", "TYPE_BF16", None),  # raw contents only
    _dt("FP32", "float32", "float", "TYPE_FP32", "fp32_contents"),
    _dt("FP64", "float64", "double", "TYPE_FP64", "fp64_contents"),
    _dt("BYTES", "object", "string", "TYPE_STRING", "bytes_contents"),
)}

BY_ORT: dict[str, Datatype] = {d.ort: d for d in DATATYPES.values()}
BY_CONFIG: dict[str, Datatype] = {d.config: d for d in DATATYPES.values()}
_BY_NUMPY: dict[np.dtype, Datatype] = {d.numpy: d for d in DATATYPES.values() if d.name != "BYTES"}


def from_numpy(dtype: np.dtype) -> Datatype:
    """The protocol datatype for a numpy dtype; str/bytes/object arrays are BYTES."""
    if dtype.kind in "OSU":
        return DATATYPES["BYTES"]
    if dtype.name == "bfloat16" and dtype.itemsize == 2:  # ml_dtypes' (not imported: not a dependency)
        return DATATYPES["BF16"]
    try:
        return _BY_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def lookup(name: str) -> Datatype:
    """The datatype named ``name``; KeyError lists the known names."""
    try:
        return DATATYPES[name]
    except KeyError:
        raise KeyError(f"unknown datatype {name!r}; known: {', '.join(DATATYPES)}") from None
