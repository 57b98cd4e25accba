"""Helpers shared by the protocol tests."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]


@functools.lru_cache
def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path))


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What in-process ONNX Runtime answers for the same model file and inputs."""
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def infer_input(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds. ``timeout`` only ends a wait for what will
    never come (a hung server); it is no measure of speed, so it is generous."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for: {what}"
        time.sleep(0.02)


# What an HTTP answer's status is for each gRPC code (KServe's REST binding, as Triton
# answers): written out here, not taken from icow.http.status, so that a test can fail.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def expect_error(code: grpc.StatusCode | int, *fragments: str):
    """Context manager: a tritonclient call fails with ``code`` and a message naming
    ``fragments``. On HTTP (tritonclient.http, whose errors carry the HTTP status), a
    gRPC code means its HTTP status (HTTP_STATUS); an int is an HTTP status only."""
    return _Expect(code, fragments)


class _Expect:
    def __init__(self, code, fragments):
        self.code, self.fragments = code, fragments

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        assert error is not None, f"expected {self.code}, the call succeeded"
        if isinstance(error, InferenceServerException):
            status, message = error.status(), error.message()
        elif isinstance(error, grpc.RpcError):
            status, message = str(error.code()), error.details()
        else:
            return False
        assert status == self._expected(status), f"expected {self.code}, got {status}: {message}"
        self.message = message  # for checks beyond the fragments
        for fragment in self.fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return True

    def _expected(self, status: str | None) -> str:
        """The status the error must have, on the transport it came from."""
        if status is not None and status.isdigit():  # tritonclient.http: the HTTP status
            return str(self.code if isinstance(self.code, int) else HTTP_STATUS[self.code])
        return str(self.code)


def dtype_feeds() -> dict[str, np.ndarray]:
    """One [2, 3] array per input of the dtypes model, extremes of each type included."""
    rng = np.random.default_rng(3)
    feeds = {}
    for datatype in NUMERIC:
        dtype = np.dtype(tc.triton_to_np_dtype(datatype))
        if datatype == "BOOL":
            value = rng.integers(0, 2, (2, 3)).astype(bool)
        elif dtype.kind == "f":
            value = rng.standard_normal((2, 3)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, (2, 3), dtype=dtype, endpoint=True)
            value[0, 0], value[0, 1] = info.min, info.max
        feeds[f"in_{datatype}"] = value
    feeds["in_BYTES"] = np.array([[b"a", b"\x00bc", b""], [b"xyz", b"12", "\u00fc".encode()]], dtype=object)
    return feeds
