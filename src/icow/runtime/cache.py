"""Triton's response cache: the answers of models whose config says
``response_cache { enable: true }``, found again by a hash of the request.

One cache for the whole server (``--cache-size-mb``), least recently used first out,
bounded by the bytes it holds. The key is a BLAKE2b hash of the model's name and
version, the loaded version's own number (``owner``: a version reloaded from new files
never sees its predecessor's answers) and everything that makes an answer: the inputs'
names, datatypes, shapes and bytes, and the outputs asked for, in order. How an answer
is carried (JSON or binary, shared memory, gRPC or HTTP), a request's id, timeout or
priority change no answer, so they are no part of it. What is kept is each output's
name, datatype, shape and raw bytes: the answer is written into each response anew.
Only successful answers are kept; a version's entries go when it closes (unloaded,
or replaced, once its last request ended).
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..protocol.datatypes import from_numpy

ENTRY_OVERHEAD = 256  # bytes counted per entry beyond its outputs' bytes: key, shapes, bookkeeping
_owners = itertools.count(1)

# (name, datatype, shape, raw bytes) of one output, as a response carries it
CachedOutput = tuple[str, str, tuple[int, ...], bytes]


def new_owner() -> int:
    """A number no other loaded version has had in this process."""
    return next(_owners)


@dataclass(frozen=True)
class Entry:
    owner: int
    outputs: tuple[CachedOutput, ...]
    size: int  # bytes counted against the capacity


class ResponseCache:
    """An LRU of answers, bounded by ``capacity`` bytes; safe from many threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._by_owner: dict[int, set[bytes]] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.evictions = 0
        self.lookups = 0
        self.hits = 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        with self._lock:
            self.lookups += 1
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, owner: int, outputs: Sequence[CachedOutput]) -> bool:
        """Keep an answer; False when it alone is over the capacity (then it is not kept)."""
        size = ENTRY_OVERHEAD + sum(len(data) for *_, data in outputs)
        if size > self.capacity:
            return False
        with self._lock:
            if key in self._entries:  # two equal requests missed at once: the first answer stays
                self._entries.move_to_end(key)
                return True
            while self.bytes + size > self.capacity:
                self._remove(next(iter(self._entries)))
                self.evictions += 1
            self._entries[key] = Entry(owner, tuple(outputs), size)
            self._by_owner.setdefault(owner, set()).add(key)
            self.bytes += size
        return True

    def drop(self, owner: int) -> int:
        """Forget every answer of ``owner`` (a version that closes); how many there were."""
        with self._lock:
            keys = self._by_owner.get(owner, set()).copy()
            for key in keys:
                self._remove(key)
            return len(keys)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        keys = self._by_owner[entry.owner]
        keys.discard(key)
        if not keys:
            del self._by_owner[entry.owner]


def request_key(name: str, version: int, owner: int, inputs: Mapping[str, np.ndarray],
                outputs: Sequence[str]) -> bytes:
    """The hash of what makes an answer (module docstring). Lengths go before every
    variable part, so that no two different requests feed the hash the same bytes."""
    h = hashlib.blake2b(digest_size=32)

    def text(value: str) -> None:
        data = value.encode()
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    text(name)
    h.update(struct.pack("<qQQ", version, owner, len(inputs)))
    for input_name in sorted(inputs):
        array = inputs[input_name]
        datatype = from_numpy(array.dtype)
        text(input_name)
        text(datatype.name)
        h.update(struct.pack(f"<Q{array.ndim}q", array.ndim, *array.shape))
        if datatype.name == "BYTES":
            for item in array.ravel():
                data = item.encode() if isinstance(item, str) else bytes(item)
                h.update(struct.pack("<Q", len(data)))
                h.update(data)
        else:  # the request's bytes as they came (little-endian on the wire, and here)
            data = np.ascontiguousarray(array)
            h.update(struct.pack("<Q", data.nbytes))
            h.update(data.data)
    h.update(struct.pack("<Q", len(outputs)))
    for output in outputs:
        text(output)
    return h.digest()
