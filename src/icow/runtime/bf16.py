"""Running a model with BF16 tensors where no binding serves (outputs of unknown
shape, a batch): ``session.run`` takes and gives only numpy arrays, and numpy has
no bfloat16. Inputs go in as OrtValues made from their bits; BF16 outputs come back
as their bits (``BF16_BITS``), copied out of the OrtValue ONNX Runtime made."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from ..protocol.datatypes import BF16_BITS, DATATYPES

_BF16 = DATATYPES["BF16"]


def run(session: ort.InferenceSession, names: list[str], feeds: Mapping[str, np.ndarray]) -> list:
    """``session.run(names, feeds)`` for a session with BF16 inputs or outputs."""
    values = {name: _value(array) for name, array in feeds.items()}
    return [_array(value) for value in session.run_with_ort_values(names, values)]


def _value(array: np.ndarray) -> ort.OrtValue:
    if array.dtype == BF16_BITS:  # the bits, told they are bfloat16
        bits = np.ascontiguousarray(array).view(np.uint16)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, _BF16.bind)
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def _array(value: ort.OrtValue):
    if value.data_type() != _BF16.ort:
        return value.numpy()
    shape = value.shape()
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, BF16_BITS)
    # A CPU tensor: its bits are copied out before the OrtValue (which owns them) goes.
    memory = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.ctypeslib.as_array(memory).copy().view(BF16_BITS).reshape(shape)
