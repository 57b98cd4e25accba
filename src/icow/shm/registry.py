"""The registry of shared-memory regions that clients register (system and CUDA),
and system (POSIX) regions themselves: opened by key under /dev/shm, mapped,
checked and leased to the requests that use them.

A request holds a lease on each region it names from the moment it is decoded
until its response is built (``Leases``), so a region unregistered meanwhile
stays mapped until then: unregistering only takes the name away. The mapping
itself is a Python ``mmap``; numpy views of it keep it alive by reference, so
it is never unmapped under a live view.

A client may shrink the object after registering it; touching a page past its
new end raises SIGBUS, which would kill the server. Every use checks the
object's size with fstat first and refuses a region that no longer covers its
range. A shrink *between* that check and the end of the run is caught by the
extension's SIGBUS guard (ext/wire/sigbus.cpp): the faulting access lands on a private
zero page, the region is marked, and the request fails when its regions are
checked again after the run (``Leases.check``). The region stays refused until
it is registered again.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from dataclasses import dataclass
from typing import Protocol

import grpc

from .. import _wire
from ..protocol.errors import InferenceServerError, invalid, not_found

SHM_DIR = "/dev/shm"
ALLOW_FLAG = "--allow-client-shm"
NAME_MAX = 255  # a POSIX shared-memory name is one file name under /dev/shm


class Region(Protocol):
    """What the request path needs of a registered region, system or CUDA."""

    name: str
    kind: str  # "system" or "cuda"
    byte_size: int
    mapped_bytes: int  # what it counts against --shm-max-mapped-mb

    def check(self) -> None:
        """Raise unless the region still covers its registered range."""

    def close(self) -> None:
        """Release the region; called once no request holds it any more."""


@dataclass(frozen=True)
class Limits:
    enabled: bool = False  # --allow-client-shm
    max_regions: int = 64
    max_mapped_bytes: int = 16 << 30


def already_exists(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.ALREADY_EXISTS, message)


def exhausted(message: str) -> InferenceServerError:
    return InferenceServerError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def disabled(what: str) -> InferenceServerError:
    """The error of every use of shared memory on a server that does not allow it."""
    return InferenceServerError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{what}: client shared memory is off on this server; start it with {ALLOW_FLAG} to allow it "
        "(any client that can reach the port may then ask it to map the host's shared memory)")


# -- system regions -------------------------------------------------------------

def shm_path(key: str) -> str:
    """/dev/shm path of a POSIX shared-memory key ("/name" or "name").

    Anything else is refused, so that a key can never open a file elsewhere:
    no further "/", no "." or "..", no NUL, at most NAME_MAX bytes."""
    name = key[1:] if key.startswith("/") else key
    if (not name or name in (".", "..") or "/" in name or "\0" in name
            or len(name.encode(errors="surrogateescape")) > NAME_MAX):
        raise invalid(f"shared-memory key {key!r} is not a POSIX shared-memory name: it must be '/NAME' "
                      f"with NAME a file name of at most {NAME_MAX} bytes (no '/', not '.' or '..')")
    return os.path.join(SHM_DIR, name)


def check_range(what: str, offset: int, byte_size: int, size: int, of: str) -> None:
    """Raise unless [offset, offset + byte_size) lies inside ``size`` bytes.
    Written so that no sum can overflow (the values come from uint64 fields)."""
    if offset < 0 or byte_size < 0 or offset > size or byte_size > size - offset:
        raise invalid(f"{what}: offset {offset} + byte_size {byte_size} is outside {of} ({size} bytes)")


class SystemRegion:
    """One registered POSIX shared-memory range, mapped read-write."""

    kind = "system"

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        path = shm_path(key)
        what = f"shared-memory region '{name}'"
        if byte_size == 0:
            raise invalid(f"{what}: byte_size is 0")
        self._fd = _open(path, key, what)
        try:
            check_range(what, offset, byte_size, self._object_size(), f"object {key!r}")
            start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be aligned
            self._skip = offset - start
            self.mapped_bytes = self._skip + byte_size
            self._map = mmap.mmap(self._fd, self.mapped_bytes, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except BaseException:
            os.close(self._fd)
            raise
        self._guard = _wire.guard_mapping(_wire.address_of(self._map), self.mapped_bytes)
        if self._guard < 0:
            self.close()
            raise exhausted(f"{what}: no room left to guard another mapping; unregister some regions")

    def _object_size(self) -> int:
        return os.fstat(self._fd).st_size

    def check(self) -> None:
        if _wire.mapping_faulted(self._guard):
            raise invalid(f"shared-memory region '{self.name}': object {self.key!r} shrank while a request used "
                          "it, and what the server read or wrote there is lost; register it again")
        size = self._object_size()
        if size < self.offset + self.byte_size:
            raise invalid(f"shared-memory region '{self.name}': object {self.key!r} shrank to {size} bytes since it "
                          f"was registered with offset {self.offset} and byte_size {self.byte_size}; "
                          "register it again")

    def view(self, offset: int, byte_size: int, what: str) -> memoryview:
        """The bytes [offset, offset + byte_size) of the region, with no copy."""
        check_range(what, offset, byte_size, self.byte_size, f"region '{self.name}'")
        start = self._skip + offset
        return memoryview(self._map)[start:start + byte_size]

    def close(self) -> None:
        os.close(self._fd)
        if getattr(self, "_guard", -1) >= 0:
            _wire.unguard_mapping(self._guard)
        try:
            self._map.close()
        except BufferError:  # a view still exists: the mapping goes with its last reference
            pass


def _open(path: str, key: str, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise not_found(f"{what}: no shared-memory object {key!r} on the server's host ({path}). The client must "
                        "run on the same host and share its IPC namespace: in a container, run both with "
                        "--ipc=host (or a shared --ipc=container:NAME)") from None
    except OSError as e:
        raise invalid(f"{what}: cannot open shared-memory object {key!r}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise invalid(f"{what}: {key!r} is not a shared-memory object")
    return fd


# -- the registry -----------------------------------------------------------------

class _Entry:
    """A region and the requests holding it; closed once unregistered and unheld."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.holders = 0
        self.registered = True


class Registry:
    """Every registered region of the server, by name (one namespace for both
    kinds, as in Triton). Safe from many threads."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._retired: dict[int, _Entry] = {}  # unregistered regions that requests still hold, by identity
        self._mapped = 0  # bytes of every region not yet closed, unregistered ones still held included

    def check_enabled(self, what: str) -> None:
        if not self.limits.enabled:
            raise disabled(what)

    def register(self, name: str, open_region) -> None:
        """Register the region ``open_region()`` opens under ``name``."""
        self.check_enabled("registering a shared-memory region")
        if not name:
            raise invalid("a shared-memory region needs a name")
        with self._lock:
            self._check_room(name)
        region = open_region()  # outside the lock: opening may take a while
        with self._lock:
            try:
                self._check_room(name, region.mapped_bytes)
            except InferenceServerError:
                region.close()
                raise
            self._entries[name] = _Entry(region)
            self._mapped += region.mapped_bytes

    def _check_room(self, name: str, adding: int = 0) -> None:
        if name in self._entries:
            raise already_exists(f"shared-memory region '{name}' is already registered; unregister it first")
        if len(self._entries) >= self.limits.max_regions:
            raise exhausted(f"{len(self._entries)} shared-memory regions are registered, the server's limit "
                            "(--shm-max-regions); unregister some first")
        if self._mapped + adding > self.limits.max_mapped_bytes:
            raise exhausted(f"registering {adding} more bytes of shared memory would map "
                            f"{self._mapped + adding} bytes, over the server's limit of "
                            f"{self.limits.max_mapped_bytes} (--shm-max-mapped-mb)")

    def unregister(self, name: str, kind: str) -> None:
        """Take ``name`` (every region of ``kind`` when empty) out of the registry;
        regions still held by requests are closed when the last one ends."""
        with self._lock:
            names = [name] if name else [n for n, e in self._entries.items() if e.region.kind == kind]
            for n in names:
                entry = self._entries.get(n)
                if entry is None or entry.region.kind != kind:
                    continue  # unregistering what is not there is not an error, as in Triton
                del self._entries[n]
                entry.registered = False
                self._close_if_done(entry)

    def status(self, name: str, kind: str) -> list[Region]:
        with self._lock:
            if name:
                entry = self._entries.get(name)
                if entry is None or entry.region.kind != kind:
                    raise not_found(f"no {kind} shared-memory region named '{name}' is registered")
                return [entry.region]
            return [e.region for e in self._entries.values() if e.region.kind == kind]

    def hold(self, name: str, what: str) -> Region:
        """Lease region ``name`` to a request; pair with ``release``."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise not_found(f"{what}: no shared-memory region named '{name}' is registered")
            entry.holders += 1
        try:
            entry.region.check()
        except BaseException:
            self.release(entry.region)
            raise
        return entry.region

    def release(self, region: Region) -> None:
        with self._lock:
            entry = self._find(region)
            entry.holders -= 1
            self._close_if_done(entry)

    def _find(self, region: Region) -> _Entry:
        entry = self._entries.get(region.name)
        if entry is not None and entry.region is region:
            return entry
        return self._retired[id(region)]

    def _close_if_done(self, entry: _Entry) -> None:
        if entry.registered:
            return
        if entry.holders > 0:
            self._retired[id(entry.region)] = entry
            return
        self._retired.pop(id(entry.region), None)
        self._mapped -= entry.region.mapped_bytes
        entry.region.close()

    def close(self) -> None:
        """Unregister everything (server shutdown)."""
        for kind in ("system", "cuda"):
            self.unregister("", kind)


class Leases:
    """The regions one request holds, released together when it ends
    (``with Leases(registry) as held:``)."""

    def __init__(self, registry: Registry | None) -> None:
        self._registry = registry
        self._held: list[Region] = []

    def hold(self, name: str, what: str) -> Region:
        if self._registry is None:
            raise disabled(what)
        self._registry.check_enabled(what)
        region = self._registry.hold(name, what)
        self._held.append(region)
        return region

    def check(self) -> None:
        """Raise if a region the request holds shrank while it ran (fstat, and the SIGBUS guard)."""
        for region in self._held:
            region.check()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        held, self._held = self._held, []
        for region in held:
            self._registry.release(region)
