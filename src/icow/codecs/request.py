"""A decoded ModelInfer request, whichever codec decoded it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..shm.tensors import ShmRange


@dataclass
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # views of the request bytes (or a region)
    outputs: list[str] = field(default_factory=list)  # empty: every output
    deadline_ns: int | None = None  # time.monotonic_ns() when the caller stops waiting
    alive: Callable[[], bool] | None = None  # False once the call is cancelled
    shm_outputs: dict[str, ShmRange] = field(default_factory=dict)  # outputs to write into shared memory
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's own (priority, timeout: Model.run)
