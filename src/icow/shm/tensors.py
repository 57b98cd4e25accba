"""Tensors in shared-memory regions, for either codec: an input read where it
lies in a region (a numpy view of the mapping: no copy), an output written by
the run straight into its region, and the response that carries no bytes for it.

A request names a region with the parameters shared_memory_region,
shared_memory_offset (default 0) and shared_memory_byte_size. An input's
byte_size must be exactly its tensor's size; an output's must hold it (the
client sizes the region before it knows the shape, as in Triton).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .. import _wire
from ..protocol.datatypes import from_numpy, lookup
from ..protocol.errors import invalid
from ..protocol.tensors import element_count, from_raw, to_raw
from ..runtime.model import OutputSpec, ResponseSlots
from .registry import Leases, Region

SHM_PARAMETERS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


@dataclass(frozen=True)
class ShmRange:
    """Where a tensor lies: ``byte_size`` bytes at ``offset`` in ``region`` (held by the request)."""

    region: Region
    offset: int
    byte_size: int


def shm_range(parameters: Mapping, leases: Leases, what: str) -> ShmRange | None:
    """The region range ``parameters`` name, leased to the request; None when
    they name none."""
    if not parameters or not any(p in parameters for p in SHM_PARAMETERS):
        return None
    name = parameters.get("shared_memory_region")
    if not isinstance(name, str) or not name:
        raise invalid(f"{what}: shared_memory_region must name a registered region")
    offset = _count(parameters, "shared_memory_offset", what, default=0)
    byte_size = _count(parameters, "shared_memory_byte_size", what)
    region = leases.hold(name, what)
    if offset > region.byte_size or byte_size > region.byte_size - offset:  # no sum: no overflow
        raise invalid(f"{what}: offset {offset} + byte_size {byte_size} is outside shared-memory region "
                      f"'{name}' ({region.byte_size} bytes)")
    return ShmRange(region, offset, byte_size)


def _count(parameters: Mapping, key: str, what: str, default: int | None = None) -> int:
    value = parameters.get(key, default)
    if value is None:
        raise invalid(f"{what}: {key} is missing; a tensor in shared memory needs it")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"{what}: {key} must be a non-negative integer, got {value!r}")
    return value


# -- inputs ---------------------------------------------------------------------

def input_array(where: ShmRange, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The input tensor in ``where``: a view of the mapping (system), or a host copy (CUDA)."""
    try:
        dt = lookup(datatype)
    except KeyError as e:
        raise invalid(f"{what}: {e.args[0]}") from None
    if dt.name != "BYTES":
        expected = element_count(shape, what) * dt.numpy.itemsize
        if where.byte_size != expected:
            raise invalid(f"{what}: shape {list(shape)} of {dt.name} needs {expected} bytes, "
                          f"shared_memory_byte_size is {where.byte_size}")
    return from_raw(_bytes(where, what), dt, shape, what)


def _bytes(where: ShmRange, what: str):
    if where.region.kind == "system":
        return where.region.view(where.offset, where.byte_size, what)
    return where.region.read(where.offset, where.byte_size, what)


# -- outputs --------------------------------------------------------------------

class _Target:
    """Where one output goes: its address for ONNX Runtime, or a copy."""

    def __init__(self, where: ShmRange, nbytes: int, what: str) -> None:
        if nbytes > where.byte_size:
            raise invalid(f"{what} needs {nbytes} bytes, but its shared_memory_byte_size is {where.byte_size}; "
                          "give it a larger range")
        self.where, self.nbytes = where, nbytes
        if where.region.kind == "system":
            self._buffer = np.frombuffer(where.region.view(where.offset, nbytes, what), dtype=np.uint8)
        else:  # CUDA: the run writes host memory, copied to the device once it is done
            self._buffer = np.empty(nbytes, dtype=np.uint8)

    @property
    def address(self) -> int:
        return _wire.address_of(self._buffer)

    def write(self, data) -> None:
        source = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        if source.size != self.nbytes:
            raise ValueError(f"output has {self.nbytes} bytes, got {source.size}")
        self._buffer[:] = source
        self.done()

    def done(self) -> None:
        if self.where.region.kind == "cuda":
            self.where.region.write(self.where.offset, self._buffer)


class ShmSlots:
    """ResponseSlots over a response whose outputs in shared memory have 0-byte
    slots (the empty raw_output_contents entries that keep it index-aligned with
    ``outputs``); their addresses point into their regions instead."""

    def __init__(self, inner, targets: dict[int, _Target]) -> None:
        self._inner, self._targets = inner, targets

    def address(self, index: int) -> int:
        target = self._targets.get(index)
        return self._inner.address(index) if target is None else target.address

    def write(self, index: int, data) -> None:
        target = self._targets.get(index)
        if target is None:
            self._inner.write(index, data)
            return
        target.write(data)
        self._inner.mark_written(index)

    def mark_written(self, index: int) -> None:
        target = self._targets.get(index)
        if target is not None:
            target.done()
        self._inner.mark_written(index)

    def finish(self) -> bytes:
        return self._inner.finish()


def shm_allocate(allocate: Callable[[list[OutputSpec]], ResponseSlots],
                 outputs: Mapping[str, ShmRange]) -> Callable[[list[OutputSpec]], ShmSlots]:
    """``allocate`` for Model.run_into with the outputs in ``outputs`` going to
    their regions; each range is checked against the output's size before the run."""
    def wrapped(specs: list[OutputSpec]) -> ShmSlots:
        targets = {}
        inner = []
        for i, (name, datatype, shape, nbytes) in enumerate(specs):
            where = outputs.get(name)
            if where is not None:
                targets[i] = _Target(where, nbytes, f"output '{name}'")
                nbytes = 0
            inner.append((name, datatype, shape, nbytes))
        return ShmSlots(allocate(inner), targets)

    return wrapped


def write_output(where: ShmRange, array: np.ndarray, name: str) -> None:
    """Copy a computed output into its region (the protobuf codec's path)."""
    data = to_raw(array, from_numpy(array.dtype))
    _Target(where, len(data), f"output '{name}'").write(data)
