"""CPU per call of the grpcio plane's ModelInfer handler in process, no gRPC:
the Python path (``--no-fast-path``) against the fast path in C++ (icow._plane's
Direct), identity FP32 [1, 16]. Pin it to one CPU and run it on a quiet machine:

    taskset -c 0 python scripts/modelinfer-handler-cost.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import models  # noqa: E402

from icow import native_plane  # noqa: E402
from icow._proto import inference_pb2 as pb  # noqa: E402
from icow.repository import Repository  # noqa: E402
from icow.v2 import InferenceService  # noqa: E402


class Context:
    """What the handler asks of grpcio's context: no deadline, never cancelled."""

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return True

    def abort(self, code, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


def repository() -> Repository:
    root = pathlib.Path(tempfile.mkdtemp())
    (root / "identity" / "1").mkdir(parents=True)
    onnx.save(models.identity(), str(root / "identity" / "1" / "model.onnx"))
    (root / "identity" / "config.pbtxt").write_text(models.IDENTITY_CONFIG)
    repo = Repository(root)
    repo.load("identity")
    return repo


def cost(service: InferenceService, data: bytes, calls: int) -> float:
    """µs of CPU per call, after a warm-up."""
    context = Context()
    for _ in range(calls // 10):
        service.ModelInferBytes(data, context)
    start = time.process_time()
    for _ in range(calls):
        service.ModelInferBytes(data, context)
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    repo = repository()
    request = pb.ModelInferRequest(model_name="identity", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 16])],
        raw_input_contents=[np.arange(16, dtype=np.float32).tobytes()]).SerializeToString()
    service = InferenceService(repo)
    python = cost(service, request, args.calls)
    service.fast = native_plane.DirectPath(repo, 2**31 - 1)
    service.fast.refresh()
    fast = cost(service, request, args.calls)
    assert service.fast.counts["served_fast"] >= args.calls
    print(f"ModelInfer handler, identity 1x16: Python path {python:.1f} µs CPU per call, "
          f"fast path {fast:.1f} µs ({fast / python:.2f}x)")


if __name__ == "__main__":
    main()
