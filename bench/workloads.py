"""What each scenario sends: the model, the input tensor and the concurrency."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from icow._proto import inference_pb2 as pb

from .models import IDENTITY_WIDTH

LARGE_BYTES = 16 << 20  # the large-tensor transfer: 16 MiB of FP32


@dataclass
class Workload:
    """One request shape at one concurrency; every target sends exactly this."""

    name: str
    model: str
    input: str
    output: str
    shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    concurrency: int
    bulk: bool = False  # a transfer: MB/s is the figure that matters

    @cached_property
    def array(self) -> np.ndarray:
        """The input, fixed by seed so that every run sends the same numbers."""
        return np.random.default_rng(0).standard_normal(self.shape, dtype=np.float32)

    @cached_property
    def request_bytes(self) -> bytes:
        """The serialized ModelInferRequest, raw contents as tritonclient sends them."""
        request = pb.ModelInferRequest(model_name=self.model, raw_input_contents=[self.array.tobytes()])
        request.inputs.add(name=self.input, datatype="FP32", shape=self.shape)
        return request.SerializeToString()

    @property
    def payload_bytes(self) -> int:
        """Tensor bytes one call carries: input there plus output back."""
        return 4 * (int(np.prod(self.shape)) + int(np.prod(self.output_shape)))


def mlp(batch: int, concurrency: int) -> Workload:
    return Workload(f"mlp-b{batch}-c{concurrency}", "mlp", "input", "output",
                    (batch, 16), (batch, 4), concurrency)


def large(concurrency: int = 1) -> Workload:
    rows = LARGE_BYTES // (4 * IDENTITY_WIDTH)
    return Workload(f"identity-16MiB-c{concurrency}", "identity", "x", "y",
                    (rows, IDENTITY_WIDTH), (rows, IDENTITY_WIDTH), concurrency, bulk=True)


def all_workloads(concurrency: int) -> list[Workload]:
    """mlp at batch 1 and 32, each at concurrency 1 and ``concurrency``; the transfer at 1."""
    levels = sorted({1, concurrency})
    return [mlp(b, c) for b in (1, 32) for c in levels] + [large()]
