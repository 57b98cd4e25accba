"""Triton's schedule-policy extension: a request's ``priority`` and ``timeout``
parameters, read against its model's queue policy (execution.QueuePolicy).

As in Triton, they act only where the config gives them something to act on:
``priority`` with ``dynamic_batching { priority_levels }`` (0 or absent: the
model's ``default_priority_level``; 1 the highest), ``timeout`` (µs) with
``allow_timeout_override: true`` in the queue policy of its level (its
``priority_queue_policy``, else ``default_queue_policy``), where it bounds the
request's wait in the queue if it is shorter than ``default_timeout_microseconds``
(0, no default timeout: whenever it is set). Elsewhere they are not read, on
every path alike (the native planes serve only models where neither acts).
A priority above ``priority_levels`` is refused (INVALID_ARGUMENT), where Triton
would quietly use the default level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import invalid
from .execution import QueuePolicy


@dataclass(frozen=True)
class Scheduling:
    """What a request asks of its model's queue."""

    level: int = 0  # its priority level (1 the highest); 0: the model has no levels
    timeout_ns: int = 0  # its own queue timeout; 0: the model's


DEFAULT = Scheduling()


def scheduling(parameters: Mapping[str, Any] | None, policy: QueuePolicy) -> Scheduling:
    """The request's level and queue timeout under ``policy``; InferenceServerError
    (INVALID_ARGUMENT) for a value the policy would act on that is not a valid one."""
    if not parameters or not (policy.levels or policy.any_override):
        return Scheduling(policy.default_level) if policy.levels else DEFAULT
    level = policy.default_level
    if policy.levels:
        priority = _count(parameters, "priority")
        if priority > policy.levels:
            raise invalid(f"parameter 'priority' is {priority}, over the model's priority_levels ({policy.levels}); "
                          "1 is the highest, 0 the model's default_priority_level")
        level = priority or level
    timeout_ns = _count(parameters, "timeout") * 1000 if policy.at(level).allow_override else 0
    return Scheduling(level, timeout_ns)


def queue_timeout_ns(request: Scheduling, policy: QueuePolicy) -> tuple[int, bool]:
    """How long the request may wait in the queue (0: no limit) under its level's ``policy``,
    and whether its own ``timeout`` set that: Triton's rule, a request may shorten the
    default, not lengthen it."""
    default = policy.timeout_ns
    if request.timeout_ns and (not default or request.timeout_ns < default):
        return request.timeout_ns, True
    return default, False


def _count(parameters: Mapping[str, Any], key: str) -> int:
    """A non-negative integer parameter (int64 or uint64 over gRPC, a JSON number over HTTP); 0 if absent."""
    value = parameters.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    return value
