"""Just enough of KServe v2 REST (with Triton's binary tensor extension) for
perf_analyzer against an echo model ``identity``: OUTPUT0 = INPUT0.

Framework-free so the ASGI and the RSGI apps share it byte for byte and the
spike measures the servers, not two different echo implementations.
"""

from __future__ import annotations

import os
import time
from array import array
from typing import Any

import orjson

MODEL = "identity"
# The echo's tensor names: INPUT0 -> OUTPUT0 here; the bench's http_echo target sets
# them to its workloads' (bench/baselines/http_echo.py).
INPUT = os.environ.get("ICOW_ECHO_INPUT", "INPUT0")
OUTPUT = os.environ.get("ICOW_ECHO_OUTPUT", "OUTPUT0")
MAX_BODY = 64 << 20  # refuse larger bodies before reading them (413)

SERVER_METADATA = orjson.dumps({
    "name": "icow-http-spike", "version": "0",
    "extensions": ["binary_tensor_data", "statistics"],
})
MODEL_METADATA = orjson.dumps({
    "name": MODEL, "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, -1]}],
    "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, -1]}],
})
MODEL_CONFIG = orjson.dumps({
    "name": MODEL, "platform": "onnxruntime_onnx", "max_batch_size": 0,
    "input": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": [-1, -1]}],
    "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [-1, -1]}],
})

JSON = "application/json"
OCTETS = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"

# Successful inferences and their total ns: perf_analyzer reads them through
# /stats, and the spike's driver divides server CPU time by the count.
_count = 0
_ns = 0


class Reply:
    __slots__ = ("status", "content_type", "body", "header_length")

    def __init__(self, status: int, body: bytes, content_type: str = JSON,
                 header_length: int | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.header_length = header_length  # Inference-Header-Content-Length, when binary


def error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": message}))


def _stats() -> bytes:
    def pair(count: int = 0, ns: int = 0) -> dict[str, int]:
        return {"count": count, "ns": ns}
    # Triton's shape: perf_analyzer reads every one of these fields.
    return orjson.dumps({"model_stats": [{
        "name": MODEL, "version": "1", "last_inference": 0,
        "inference_count": _count, "execution_count": _count,
        "inference_stats": {
            "success": pair(_count, _ns), "fail": pair(), "queue": pair(),
            "compute_input": pair(_count), "compute_infer": pair(_count, _ns), "compute_output": pair(_count),
            "cache_hit": pair(), "cache_miss": pair()},
        "batch_stats": []}]})


_GET = {
    "/v2/health/ready": b"", "/v2/health/live": b"", "/v2": SERVER_METADATA,
    f"/v2/models/{MODEL}": MODEL_METADATA, f"/v2/models/{MODEL}/versions/1": MODEL_METADATA,
    f"/v2/models/{MODEL}/ready": b"", f"/v2/models/{MODEL}/versions/1/ready": b"",
    f"/v2/models/{MODEL}/config": MODEL_CONFIG, f"/v2/models/{MODEL}/versions/1/config": MODEL_CONFIG,
}
_STATS = {f"/v2/models/{MODEL}/stats", f"/v2/models/{MODEL}/versions/1/stats", "/v2/models/stats"}
INFER = {f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/1/infer"}


def get(path: str) -> Reply:
    body = _GET.get(path)
    if body is not None:
        return Reply(200, body)
    if path in _STATS:
        return Reply(200, _stats())
    return error(404, f"no route {path[:200]}")


def _flat(data: Any, out: array) -> None:
    # JSON tensors may come nested (row-major lists of lists) or flat.
    for item in data:
        if isinstance(item, list):
            _flat(item, out)
        else:
            out.append(item)


def infer(body: bytes, header_length: str | None) -> Reply:
    """The echo: parse the JSON header with orjson, slice binary inputs, answer
    OUTPUTk = INPUTk in the form each output asked for (binary or JSON)."""
    global _count, _ns
    start = time.perf_counter_ns()
    try:
        if header_length is None:
            n = len(body)
        else:
            n = int(header_length)
            if not 0 <= n <= len(body):
                return error(400, "Inference-Header-Content-Length outside the body")
        request = orjson.loads(body[:n] if n != len(body) else body)
        params = request.get("parameters") or {}
        binary_default = bool(params.get("binary_data_output", False))
        wanted = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", binary_default))
                  for o in request.get("outputs") or ()}
        view = memoryview(body)
        offset = n
        outputs: list[dict[str, Any]] = []
        chunks: list[bytes | memoryview] = []
        for tensor in request["inputs"]:
            name = OUTPUT if tensor["name"] == INPUT else "OUTPUT" + tensor["name"].removeprefix("INPUT")
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            raw: memoryview | None = None
            data: Any = None
            if size is not None:
                if offset + size > len(body):
                    return error(400, f"input {tensor['name']}: binary_data_size past the body")
                raw = view[offset:offset + size]
                offset += size
            else:
                data = tensor["data"]
            if wanted and name not in wanted:
                continue
            binary = wanted.get(name, binary_default)
            out: dict[str, Any] = {"name": name, "datatype": tensor["datatype"], "shape": tensor["shape"]}
            if binary:
                if raw is None:
                    floats = array("f")
                    _flat(data, floats)
                    raw = memoryview(floats.tobytes())
                out["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                if data is None:
                    floats = array("f")
                    floats.frombytes(raw)  # type: ignore[arg-type]
                    data = floats.tolist()
                out["data"] = data
            outputs.append(out)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return error(400, f"bad request: {type(e).__name__}: {str(e)[:200]}")
    response: dict[str, Any] = {"model_name": MODEL, "model_version": "1", "outputs": outputs}
    if "id" in request:
        response["id"] = request["id"]
    header = orjson.dumps(response)
    _count += 1
    _ns += time.perf_counter_ns() - start
    if not chunks:
        return Reply(200, header)
    # One copy of the tensor bytes into the reply: the frameworks take bytes.
    return Reply(200, b"".join([header, *chunks]), OCTETS, len(header))
