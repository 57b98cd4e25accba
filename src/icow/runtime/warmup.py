"""Triton's ``model_warmup``: sample requests a version runs before it becomes ready.

Each entry of config.pbtxt's ``model_warmup`` is a request made of zeros, random
values or the bytes of a file in the model's ``warmup/`` folder (raw row-major
elements; BYTES as 4-byte little-endian lengths, each followed by its bytes), for
one sample (``dims`` without the batch dimension) repeated ``batch_size`` times.
It runs ``count`` times (0: once, as in Triton) on every instance of the version,
through the same checks and the same bound or plain run as a real request, but
outside the scheduler and the statistics (Triton's warm-up runs are not counted).
The repository runs this before it publishes the version, so a new version under
hot reload takes no traffic before its warm-up; an entry that fails fails the load.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._proto import model_config_pb2 as mc
from ..protocol.datatypes import BF16_BITS, BY_CONFIG, Datatype

if TYPE_CHECKING:
    from .model import Model, OutputSpec

WARMUP_FOLDER = "warmup"  # in the model's folder, beside config.pbtxt (Triton's)


class WarmupError(ValueError):
    """A warm-up entry cannot be made or fails to run; the message names the entry."""


@dataclass(frozen=True)
class Sample:
    """One warm-up entry, made: its inputs (batch dimension included) and its runs."""

    name: str
    inputs: dict[str, np.ndarray]
    count: int


@dataclass(frozen=True)
class Summary:
    entries: int
    runs: int
    instances: int
    ms: float

    def __str__(self) -> str:
        return (f"{self.entries} entries, {self.runs} runs (on {self.instances} instance"
                f"{'s' if self.instances != 1 else ''}) in {self.ms:.1f} ms")


def warm_up(model: Model, model_dir: Path) -> Summary | None:
    """Run ``model``'s warm-up entries on each of its instances; None when it has none.
    Raises WarmupError naming the first entry that cannot be made or fails."""
    entries = model.config.model_warmup
    if not entries:
        return None
    start = time.monotonic()
    samples = [make_sample(entry, i, model.max_batch_size, model_dir) for i, entry in enumerate(entries)]
    runs = 0
    for sample in samples:
        for instance in model.instances:
            for _ in range(sample.count):
                try:
                    model.run_unrecorded(instance, sample.inputs, _Scratch)
                except Exception as e:  # a check or the run itself: the entry is what failed
                    raise WarmupError(f"model_warmup {sample.name}: {getattr(e, 'message', e)}") from None
                runs += 1
    return Summary(len(samples), runs, len(model.instances), (time.monotonic() - start) * 1000)


def make_sample(entry: mc.ModelWarmup, index: int, max_batch_size: int, model_dir: Path) -> Sample:
    """The inputs of one entry, checked as far as the entry alone allows (the model
    checks them against its inputs as it would a request's)."""
    name = f"'{entry.name}'" if entry.name else f"#{index + 1}"
    try:
        batch = _batch_size(entry.batch_size, max_batch_size)
        if not entry.inputs:
            raise WarmupError("it has no inputs")
        inputs = {key: _input(key, value, batch, model_dir) for key, value in sorted(entry.inputs.items())}
    except WarmupError as e:
        raise WarmupError(f"model_warmup {name}: {e}") from None
    return Sample(name, inputs, max(entry.count, 1))


def _batch_size(batch_size: int, max_batch_size: int) -> int | None:
    """The batch dimension's size; None for a model without one (Triton: batch_size 1 or unset)."""
    if max_batch_size == 0:
        if batch_size > 1:
            raise WarmupError(f"batch_size {batch_size}, but the model does not batch (max_batch_size 0)")
        return None
    if batch_size > max_batch_size:
        raise WarmupError(f"batch_size {batch_size} is over the model's max_batch_size {max_batch_size}")
    return max(batch_size, 1)


def _input(key: str, spec: mc.ModelWarmup.Input, batch: int | None, model_dir: Path) -> np.ndarray:
    if spec.data_type == mc.TYPE_INVALID:
        raise WarmupError(f"input '{key}' has no data_type")
    datatype = BY_CONFIG[mc.DataType.Name(spec.data_type)]
    dims = list(spec.dims)
    if any(d < 0 for d in dims):
        raise WarmupError(f"input '{key}': dims {dims} must be sizes (>= 0), not wildcards")
    source = spec.WhichOneof("input_data_type")
    if source == "input_data_file":
        one = _from_file(key, spec.input_data_file, datatype, dims, model_dir)
    elif source == "random_data" and datatype.name != "BYTES":  # Triton: random strings are zero data
        one = _random(datatype, dims)
    elif source is not None:
        one = _zeros(datatype, dims)
    else:
        raise WarmupError(f"input '{key}' says none of zero_data, random_data or input_data_file")
    if batch is None:
        return one
    return np.ascontiguousarray(np.broadcast_to(one, [batch, *dims]))


def _zeros(datatype: Datatype, dims: list[int]) -> np.ndarray:
    if datatype.name == "BYTES":
        return np.full(dims, b"", dtype=object)
    return np.zeros(dims, datatype.numpy)


def _random(datatype: Datatype, dims: list[int]) -> np.ndarray:
    """Values a real input may hold: [0, 1) for floats, 0..99 for integers."""
    rng = np.random.default_rng()
    if datatype.numpy == BF16_BITS:  # the upper half of float32 bits is a bfloat16
        bits = rng.random(dims, dtype=np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(BF16_BITS)
    kind = datatype.numpy.kind
    if kind == "b":
        return rng.random(dims) < 0.5
    if kind == "f":
        return rng.random(dims).astype(datatype.numpy)
    return rng.integers(0, 100, dims).astype(datatype.numpy)


def _from_file(key: str, filename: str, datatype: Datatype, dims: list[int], model_dir: Path) -> np.ndarray:
    folder = (model_dir / WARMUP_FOLDER).resolve()
    path = (folder / filename).resolve()
    if not filename or not path.is_relative_to(folder) or path == folder:
        raise WarmupError(f"input '{key}': input_data_file '{filename}' is not a file inside the model's "
                          f"{WARMUP_FOLDER}/ folder")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WarmupError(f"input '{key}': cannot read input_data_file {WARMUP_FOLDER}/{filename}: "
                          f"{e.strerror or e}") from None
    count = math.prod(dims)
    if datatype.name == "BYTES":
        return _strings(key, filename, data, count).reshape(dims)
    size = count * datatype.numpy.itemsize
    if len(data) != size:
        raise WarmupError(f"input '{key}': input_data_file {WARMUP_FOLDER}/{filename} holds {len(data)} bytes; "
                          f"dims {dims} of {datatype.name} take {size}")
    return np.frombuffer(data, datatype.numpy).reshape(dims)


def _strings(key: str, filename: str, data: bytes, count: int) -> np.ndarray:
    """``count`` BYTES elements, each a 4-byte little-endian length and that many bytes."""
    out = np.empty(count, dtype=object)
    at = 0
    for i in range(count):
        length = struct.unpack_from("<I", data, at)[0] if at + 4 <= len(data) else None
        if length is None or at + 4 + length > len(data):
            raise WarmupError(f"input '{key}': input_data_file {WARMUP_FOLDER}/{filename} ends inside "
                              f"element {i} of {count}")
        out[i] = data[at + 4:at + 4 + length]
        at += 4 + length
    if at != len(data):
        raise WarmupError(f"input '{key}': input_data_file {WARMUP_FOLDER}/{filename} holds more than "
                          f"the {count} elements of its dims")
    return out


class _Scratch:
    """A response nobody reads: warm-up outputs are bound here, as a real request's
    are bound into its response, so the bound path is warmed too."""

    def __init__(self, specs: list[OutputSpec]) -> None:
        self._buffers = [np.empty(size, np.uint8) for _, _, _, size in specs]

    def address(self, index: int) -> int:
        return self._buffers[index].ctypes.data

    def write(self, index: int, data) -> None:
        pass

    def mark_written(self, index: int) -> None:
        pass
