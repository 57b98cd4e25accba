"""What each scenario sends: the model, the input tensor and the concurrency.

The default set is issue 10's: identity FP32 1×16 at concurrency 1 and 8,
identity FP32 12 MiB at 1 and 4, mlp256 batch 1 at 8. Extras (``--workloads
NAME,...``): issue 3's ``mlp1024-b1-c16`` / ``mlp1024-batched-b1-c16`` (dynamic
batching off and on) and the example ``mlp`` workloads."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from icow._proto import inference_pb2 as pb

from .models import CONVNET_CLASSES, CONVNET_INPUT, MLP256_LAYERS, MLP1024_LAYERS

LARGE_BYTES = 12 << 20  # the large-tensor transfer: 12 MiB of FP32
LARGE_COLS = 1024


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
    default: bool = True  # in the set run when --workloads is not given

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
    def tensor_bytes(self) -> int:
        return 4 * int(np.prod(self.shape))

    @property
    def payload_bytes(self) -> int:
        """Tensor bytes one call carries: input there plus output back."""
        return self.tensor_bytes + 4 * int(np.prod(self.output_shape))


def identity_small(concurrency: int) -> Workload:
    return Workload(f"identity-1x16-c{concurrency}", "identity", "x", "y", (1, 16), (1, 16), concurrency)


def identity_large(concurrency: int, mib: int = LARGE_BYTES >> 20) -> Workload:
    shape = ((mib << 20) // (4 * LARGE_COLS), LARGE_COLS)
    return Workload(f"identity-{mib}MiB-c{concurrency}", "identity", "x", "y", shape, shape, concurrency, bulk=True,
                    default=mib == LARGE_BYTES >> 20)


def mlp256(batch: int, concurrency: int) -> Workload:
    return Workload(f"mlp256-b{batch}-c{concurrency}", "mlp256", "x", "y",
                    (batch, MLP256_LAYERS[0]), (batch, MLP256_LAYERS[-1]), concurrency)


def mlp1024(concurrency: int, batched: bool) -> Workload:
    """Issue 3's comparison: many batch-1 requests for a model whose run is mostly
    reading its weights, without and with dynamic batching on the server."""
    model = "mlp1024_batched" if batched else "mlp1024"
    return Workload(f"{model.replace('_', '-')}-b1-c{concurrency}", model, "x", "y",
                    (1, MLP1024_LAYERS[0]), (1, MLP1024_LAYERS[-1]), concurrency, default=False)


def convnet(concurrency: int, batched: bool) -> Workload:
    """Issue 7's GPU comparison (it runs on a CPU too): one image per request."""
    model = "convnet_batched" if batched else "convnet"
    return Workload(f"{model.replace('_', '-')}-b1-c{concurrency}", model, "x", "y",
                    (1, *CONVNET_INPUT), (1, CONVNET_CLASSES), concurrency, default=False)


def mlp(batch: int, concurrency: int) -> Workload:
    return Workload(f"mlp-b{batch}-c{concurrency}", "mlp", "input", "output",
                    (batch, 16), (batch, 4), concurrency, default=False)


def all_workloads() -> list[Workload]:
    """The default set first, then the extras."""
    return [identity_small(1), identity_small(8), identity_large(1), identity_large(4), mlp256(1, 8),
            mlp1024(16, batched=False), mlp1024(16, batched=True),
            *(convnet(c, batched) for c in (1, 16) for batched in (False, True)),
            *(mlp(b, c) for b in (1, 32) for c in (1, 8)), identity_large(1, 64), identity_large(4, 64)]
