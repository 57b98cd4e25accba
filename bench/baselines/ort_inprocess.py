"""Compute floor: onnxruntime's session.run in the client process, on the same
model file and input, with the session options icow uses (the defaults)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..harness import Env
from ..workloads import Workload


class OrtInProcess:
    name = "ort_inprocess"
    baseline = None
    description = "onnxruntime InferenceSession.run in-process: no gRPC, no serialization"

    def setup(self, workload: Workload, env: Env) -> None:
        self.session = ort.InferenceSession(str(env.model_path(workload.model)), providers=["CPUExecutionProvider"])
        self.outputs = [workload.output]
        self.feeds: dict[str, np.ndarray] = {workload.input: workload.array}

    def call(self) -> None:
        self.session.run(self.outputs, self.feeds)

    def teardown(self) -> None:
        del self.session
