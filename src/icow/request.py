"""A decoded ModelInfer request, whichever codec decoded it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import unimplemented

SHM_PARAMETERS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


@dataclass
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # views of the request bytes where possible
    outputs: list[str] = field(default_factory=list)  # empty: every output
    deadline_ns: int | None = None  # time.monotonic_ns() when the caller stops waiting
    alive: Callable[[], bool] | None = None  # False once the call is cancelled


def reject_shared_memory(parameters: Mapping, what: str) -> None:
    """Shared-memory tensors are not served yet: say so rather than misread them."""
    if any(p in parameters for p in SHM_PARAMETERS):
        raise unimplemented(f"{what} uses shared memory, which this server does not support yet")
