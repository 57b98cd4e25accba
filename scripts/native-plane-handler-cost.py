"""Where a small request's time goes in the native plane's Python handler
(docs/native-plane.md): the handler as a whole, its steps, and ONNX Runtime's
bound run alone (what "GIL per run" costs in Python). In-process, identity 1×16.

    python scripts/native-plane-handler-cost.py      # from the repository root, in the venv
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.models import build_repository  # noqa: E402
from bench.workloads import all_workloads  # noqa: E402

from icow import native_codec, native_plane  # noqa: E402
from icow.repository import Repository  # noqa: E402
from icow.v2 import InferenceService  # noqa: E402


def best_us(call, n: int = 20000) -> float:
    """Best of three rounds of ``n`` calls, µs per call, after a warm-up."""
    for _ in range(1000):
        call()
    rounds = []
    for _ in range(3):
        t = time.perf_counter_ns()
        for _ in range(n):
            call()
        rounds.append((time.perf_counter_ns() - t) / n / 1000)
    return min(rounds)


def main() -> None:
    repo = build_repository(pathlib.Path(tempfile.mkdtemp()) / "models")
    repository = Repository(repo)
    handler = native_plane.model_infer_handler(InferenceService(repository, explicit_control=False))
    repository.load_all(None)
    workload = {w.name: w for w in all_workloads()}["identity-1x16-c1"]
    data = memoryview(workload.request_bytes)
    request = native_codec.decode_request(data)
    model = repository.get(request.model_name, request.model_version)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repo / "identity/1/model.onnx"), options, providers=["CPUExecutionProvider"])
    x = workload.array
    out = np.empty_like(x)
    binding = session.io_binding()
    binding.bind_cpu_input(workload.input, x)
    binding.bind_output(workload.output, "cpu", 0, np.float32, list(x.shape), out.ctypes.data)
    run_options = ort.RunOptions()

    rows = {
        "handler: decode + lookup + codec.infer (the spike's Python per request)": lambda: handler(data),
        "  native_codec.decode_request": lambda: native_codec.decode_request(data),
        "  repository.get": lambda: repository.get(request.model_name, request.model_version),
        "  codec.infer (Model.run_into: checks, job, scheduler, bind, run, ResponseBuffer)":
            lambda: native_codec.infer(model, request),
        "ONNX Runtime run_with_iobinding, bound once (the GIL-per-run floor)":
            lambda: session._sess.run_with_iobinding(binding._iobinding, run_options),
        "ONNX Runtime session.run": lambda: session.run(None, {workload.input: x}),
    }
    for name, call in rows.items():
        print(f"{best_us(call):8.1f} µs  {name}")


if __name__ == "__main__":
    main()
