"""The client's same-host fast path: tensors through POSIX shared memory instead
of the gRPC message, when the server runs on this host and allows it.

Over gRPC the transport is the ceiling for large tensors (grpcio moves a few
hundred MB/s each way); through shared memory a tensor costs one memcpy in and
one out. ``ShmTransport.probe`` decides whether the path is open: the server
must register a region this process created, which it can only do on the same
host, in the same IPC namespace, with client shared memory allowed.

Regions are a pool: a call takes one big enough for its inputs and outputs,
returns it when its outputs are copied out, and the client unregisters and
unlinks them all on close. Output sizes must be known before the call: the first
call of a (model, version, input shapes, outputs) sends its outputs back as
bytes and records their sizes; later ones get them through the region. BYTES
tensors, whose sizes depend on the data, always travel as bytes.

Stdlib, grpcio, protobuf and numpy only.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import shared_memory
from typing import Any

import grpc
import numpy as np

from .._proto import inference_pb2 as pb
from ..protocol import datatypes
from ..protocol.errors import InferenceServerError
from . import common

ALIGN = 64  # tensors start on cache-line boundaries in a region
MIN_REGION = 1 << 20

Run = Callable[[common.Call[Any]], Any]  # the client's way of sending one call


def is_local(url: str) -> bool:
    """Whether ``url``'s host is this machine (loopback, or an address it can bind)."""
    host = url.rsplit(":", 1)[0].strip("[]") if ":" in url else url
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for family, _, _, _, address in infos:
        if ipaddress.ip_address(address[0]).is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((address[0], 0))  # only an address of one of this host's interfaces binds
            return True
        except OSError:
            continue
    return False


class _Region:
    """One shared-memory object of this process, registered with the server."""

    def __init__(self, run: Run, size: int) -> None:
        self.name = f"icow-{os.getpid()}-{secrets.token_hex(6)}"
        self._shm = shared_memory.SharedMemory(self.name, create=True, size=size)
        self.size = size
        self.buffer = np.frombuffer(self._shm.buf, dtype=np.uint8)
        try:
            run(common.Call("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
                name=self.name, key="/" + self.name, offset=0, byte_size=size), lambda r: None))
        except BaseException:
            self._destroy()
            raise

    def close(self, run: Run) -> None:
        try:
            run(common.Call("SystemSharedMemoryUnregister",
                            pb.SystemSharedMemoryUnregisterRequest(name=self.name), lambda r: None))
        except InferenceServerError:
            pass  # the server went away: its side is gone too
        finally:
            self._destroy()

    def _destroy(self) -> None:
        self.buffer = None  # the numpy view must go before the mapping can close
        self._shm.close()
        self._shm.unlink()


class ShmTransport:
    """ModelInfer with tensors in shared-memory regions of this process."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._free: list[_Region] = []
        self._all: list[_Region] = []
        self._output_sizes: dict[tuple, dict[str, int] | None] = {}  # None: outputs go as bytes

    @classmethod
    def probe(cls, run: Run, url: str) -> ShmTransport | None:
        """A transport when the server at ``url`` shares this host's shared memory
        and allows clients to use it; None otherwise (the caller sends bytes)."""
        if not is_local(url):
            return None
        transport = cls(run)
        try:
            transport._put(transport._take(MIN_REGION))
        except (InferenceServerError, OSError):
            transport.close()
            return None
        return transport

    def close(self) -> None:
        with self._lock:
            regions, self._all, self._free = self._all, [], []
        for region in regions:
            region.close(self._run)

    def _take(self, size: int) -> _Region:
        with self._lock:
            fits = [r for r in self._free if r.size >= size]
            if fits:
                region = min(fits, key=lambda r: r.size)
                self._free.remove(region)
                return region
            small = self._free.pop() if self._free else None
        if small is not None:  # replace a region too small rather than let the pool grow
            self._forget(small)
        region = _Region(self._run, max(MIN_REGION, 1 << (size - 1).bit_length()))
        with self._lock:
            self._all.append(region)
        return region

    def _forget(self, region: _Region) -> None:
        with self._lock:
            self._all.remove(region)
        region.close(self._run)

    def _put(self, region: _Region) -> None:
        with self._lock:
            self._free.append(region)

    def usable(self, inputs: Mapping[str, np.ndarray]) -> bool:
        return all(a.dtype != object and a.dtype.kind not in "SU" for a in inputs.values())

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: common.Version,
              outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """``common.infer`` through a region; ``outputs`` named (all of the model's)."""
        key = (model, str(version or ""), tuple((n, a.dtype.str, a.shape) for n, a in inputs.items()),
               tuple(outputs))
        sizes = self._output_sizes.get(key)
        layout, total = _layout({**{n: a.nbytes for n, a in inputs.items()}, **(sizes or {})})
        region = self._take(total)
        try:
            for name, array in inputs.items():
                start = layout[name]
                region.buffer[start:start + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            request = _request(model, version, inputs, outputs, sizes, layout, region.name)
            try:
                response = self._run(common.Call("ModelInfer", request, lambda r: r))
            except InferenceServerError as e:
                if sizes is None or e.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                # Output sizes that depend on the data, larger this time: bytes from now on.
                self._output_sizes[key] = None
                request = _request(model, version, inputs, outputs, None, layout, region.name)
                response = self._run(common.Call("ModelInfer", request, lambda r: r))
                sizes = None
            if key not in self._output_sizes:
                self._learn(key, response)
            return _decode(response, region, layout, sizes or {})
        finally:
            self._put(region)

    def _learn(self, key: tuple, response: pb.ModelInferResponse) -> None:
        sizes: dict[str, int] | None = {}
        for tensor, raw in zip(response.outputs, response.raw_output_contents):
            if tensor.datatype == "BYTES":
                sizes = None
                break
            sizes[tensor.name] = len(raw)
        if len(self._output_sizes) > 1024:  # bound the memory a stream of new shapes can take
            self._output_sizes.clear()
        self._output_sizes[key] = sizes


def _layout(sizes: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """Aligned offsets of each tensor in one region, and the region size they need."""
    offsets, end = {}, 0
    for name, size in sizes.items():
        offsets[name] = end
        end += -(-max(size, 1) // ALIGN) * ALIGN
    return offsets, end


def _shm_parameters(tensor, region: str, offset: int, size: int) -> None:
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_offset"].int64_param = offset
    tensor.parameters["shared_memory_byte_size"].int64_param = size


def _request(model: str, version: common.Version, inputs: Mapping[str, np.ndarray], outputs: Sequence[str],
             sizes: dict[str, int] | None, layout: dict[str, int], region: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version="" if version is None else str(version))
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatypes.from_numpy(array.dtype).name, shape=array.shape)
        _shm_parameters(tensor, region, layout[name], array.nbytes)
    for name in outputs:
        tensor = request.outputs.add(name=name)
        if sizes is not None and name in sizes:
            _shm_parameters(tensor, region, layout[name], sizes[name])
    return request


def _decode(response: pb.ModelInferResponse, region: _Region, layout: dict[str, int],
            sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """The outputs: copied out of the region (it is reused) when they came through it."""
    if not sizes:
        return common.decode_outputs(response)
    result = {}
    for tensor in response.outputs:
        dtype = datatypes.lookup(tensor.datatype).numpy.newbyteorder("<")
        start = layout[tensor.name]
        data = region.buffer[start:start + int(np.prod(tensor.shape)) * dtype.itemsize]
        array = data.view(dtype).reshape(tuple(tensor.shape)).copy()
        array.flags.writeable = False  # as the bytes path gives them
        result[tensor.name] = array
    return result
