"""CUDA shared-memory regions: device memory another process exported with
cudaIpcGetMemHandle, opened here with cudaIpcOpenMemHandle.

The CUDA runtime (libcudart) is loaded with ctypes when a client first registers
a region, so icow has no build-time CUDA dependency and a CPU machine answers
UNAVAILABLE with the reason. Models run on ONNX Runtime's CPU provider in this
build (runtime/model.py), so tensors in a CUDA region are staged through host memory:
an input is copied device→host once before the run, an output is written by the
run into a host buffer and copied host→device once after it.

Unverified: this path has not run on a machine with a GPU (see README).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..protocol.errors import InferenceServerError, invalid, unavailable
from .registry import check_range

LIBRARIES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_LAZY_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_BYTES)]


class CudaRuntime:
    """The few libcudart calls CUDA shared memory needs."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcHandle, ctypes.c_uint]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            reason = self._lib.cudaGetErrorString(status).decode(errors="replace")
            raise unavailable(f"CUDA shared memory: {call} failed: {reason} (cudaError {status})")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check(self._lib.cudaGetDeviceCount(ctypes.byref(count)), "cudaGetDeviceCount")
        return count.value

    def set_device(self, device: int) -> None:
        self._check(self._lib.cudaSetDevice(ctypes.c_int(device)), f"cudaSetDevice({device})")

    def open_ipc(self, raw_handle: bytes) -> int:
        pointer = ctypes.c_void_p()
        handle = _IpcHandle(raw_handle)
        self._check(self._lib.cudaIpcOpenMemHandle(ctypes.byref(pointer), handle, _LAZY_PEER_ACCESS),
                    "cudaIpcOpenMemHandle")
        return pointer.value or 0

    def close_ipc(self, pointer: int) -> None:
        self._lib.cudaIpcCloseMemHandle(ctypes.c_void_p(pointer))

    def copy(self, dst: int, src: int, nbytes: int, to_device: bool) -> None:
        kind = _HOST_TO_DEVICE if to_device else _DEVICE_TO_HOST
        self._check(self._lib.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy")


_runtime: CudaRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> CudaRuntime:
    """The CUDA runtime with at least one device, loaded once.

    Raises
    ------
    InferenceServerError
        UNAVAILABLE, saying why: no libcudart found, or no usable GPU.
    """
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            rt = CudaRuntime(_load())
            try:
                count = rt.device_count()
            except InferenceServerError as e:  # e.g. no driver: the usual state of a machine without a GPU
                raise unavailable(f"CUDA shared memory needs a GPU: this server has none usable ({e.message})") \
                    from None
            if count == 0:
                raise unavailable("CUDA shared memory: the CUDA runtime sees no GPU on this server")
            _runtime = rt
        return _runtime


def _load() -> ctypes.CDLL:
    errors = []
    for name in LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(str(e))
    raise unavailable("CUDA shared memory needs the CUDA runtime and a GPU; this server found no libcudart "
                      f"({'; '.join(errors[:1])})")


class CudaRegion:
    """One registered CUDA IPC allocation on ``device_id``."""

    kind = "cuda"

    def __init__(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._rt = runtime()  # first: without a GPU, that is the answer whatever the request says
        if len(raw_handle) != IPC_HANDLE_BYTES:
            raise invalid(f"CUDA shared-memory region '{name}': raw_handle has {len(raw_handle)} bytes, "
                          f"a cudaIpcMemHandle_t has {IPC_HANDLE_BYTES}")
        self.name, self.device_id, self.byte_size = name, device_id, byte_size
        self.mapped_bytes = byte_size
        self._rt.set_device(device_id)
        self._base = self._rt.open_ipc(raw_handle)

    def check(self) -> None:
        """Device allocations cannot shrink under us: nothing to check."""

    def read(self, offset: int, byte_size: int, what: str) -> np.ndarray:
        """A host copy of [offset, offset + byte_size) of the region."""
        check_range(what, offset, byte_size, self.byte_size, f"region '{self.name}'")
        host = np.empty(byte_size, dtype=np.uint8)
        self._rt.set_device(self.device_id)  # the current device is per thread
        self._rt.copy(host.ctypes.data, self._base + offset, byte_size, to_device=False)
        return host

    def write(self, offset: int, data: np.ndarray) -> None:
        """Copy host ``data`` (C-contiguous) to the region at ``offset``."""
        self._rt.set_device(self.device_id)
        self._rt.copy(self._base + offset, data.ctypes.data, data.nbytes, to_device=True)

    def close(self) -> None:
        self._rt.set_device(self.device_id)
        self._rt.close_ipc(self._base)
