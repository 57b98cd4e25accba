"""Compute floor: onnxruntime's session.run in the client process, on the same
model file and input, with the session options icow uses (one intra-op thread
per CPU the process may use: here the client's one CPU, as the server has one)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from ..harness import BenchError, Env
from ..workloads import Workload


class OrtInProcess:
    name = "ort_inprocess"
    description = "onnxruntime InferenceSession.run in-process: no gRPC, no serialization"
    server = None  # its CPU per call is this process's own

    def setup(self, workload: Workload, env: Env) -> None:
        options = ort.SessionOptions()
        # As icow's model.py: stated, because with the default (0) onnxruntime pins
        # its pool threads to CPUs of its own choice, outside the pinned mask.
        options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        self.session = ort.InferenceSession(str(env.model_path(workload.model)), options,
                                            providers=_providers(env.device))
        if env.device != "cpu" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise BenchError(f"ort_inprocess: no CUDA for --device {env.device}; "
                             f"this onnxruntime offers {ort.get_available_providers()}")
        self.outputs = [workload.output]
        self.feeds: dict[str, np.ndarray] = {workload.input: workload.array}

    def call(self) -> None:
        self.session.run(self.outputs, self.feeds)

    def teardown(self) -> None:
        del self.session


def _providers(device: str) -> list:
    """As icow's providers.py: CUDA on the device (then the CPU for what CUDA lacks)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    _, _, index = device.partition(":")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
