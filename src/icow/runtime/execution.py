"""How a model version runs, read from its config.pbtxt the way Triton's ONNX
Runtime backend reads it: ``instance_group`` (how many sessions run at once),
``parameters`` ``intra_op_thread_count`` / ``inter_op_thread_count``, and
``dynamic_batching`` with its ``default_queue_policy`` and priority levels."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._proto import model_config_pb2 as mc
from .config import ConfigError


@dataclass(frozen=True)
class Instances:
    devices: tuple[int | None, ...]  # one per session: a CUDA device id, or None for the CPU
    intra_op_threads: int
    inter_op_threads: int  # 0: ONNX Runtime's default

    @property
    def count(self) -> int:
        """Sessions of the version, each running one request or batch at a time."""
        return len(self.devices)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int  # rows in one run
    preferred: frozenset[int]  # a batch of one of these sizes goes at once
    max_delay_ns: int  # how long the oldest request may wait for others


@dataclass(frozen=True)
class QueuePolicy:
    max_size: int  # requests waiting for an instance; 0: no limit but the gRPC workers
    timeout_ns: int  # how long one may wait; 0: until its own deadline
    allow_override: bool = False  # a request's ``timeout`` parameter may shorten timeout_ns (Triton's rule)
    levels: int = 0  # priority levels, 1 the highest; 0: one level, a request's ``priority`` is not read
    default_level: int = 0  # the level of a request that names none (priority 0)
    # priority_queue_policy: a level's own max_size, timeout_ns, allow_override; the other
    # levels have these. With levels, max_size bounds each level's waiting requests (Triton's
    # queue per level), not their sum.
    per_level: Mapping[int, QueuePolicy] = field(default_factory=dict)

    def at(self, level: int) -> QueuePolicy:
        """The policy of requests of ``level``."""
        return self.per_level.get(level, self)

    @property
    def any_override(self) -> bool:
        """Whether a request's timeout parameter may act at some level."""
        return self.allow_override or any(p.allow_override for p in self.per_level.values())


def parse_device(text: str) -> int | None:
    """``cpu`` → None, ``cuda`` → 0, ``cuda:N`` → N (the CUDA device id)."""
    if text == "cpu":
        return None
    name, _, index = text.partition(":")
    if name != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {text!r}")
    return int(index or 0)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. from taskset or a cgroup)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def instances(config: mc.ModelConfig, cpus: int, default_device: int | None = None) -> Instances:
    """The sessions to create: by default one, on ``default_device`` (icow serve
    --device). KIND_GPU puts ``count`` sessions on each of its ``gpus`` (all: device
    0, or the default device). Each session gets an equal share of the CPUs as
    intra-op threads, so that N instances running at once use the machine's cores
    without oversubscribing them."""
    devices: list[int | None] = []
    for group in config.instance_group or [mc.ModelInstanceGroup()]:
        if group.count < 0:
            raise ConfigError(f"instance_group count must be >= 1, got {group.count}")
        devices += _placements(group, default_device) * (group.count or 1)
    intra = _thread_parameter(config, "intra_op_thread_count")
    inter = _thread_parameter(config, "inter_op_thread_count")
    return Instances(tuple(devices), intra or max(1, cpus // len(devices)), inter)


def _placements(group: mc.ModelInstanceGroup, default_device: int | None) -> list[int | None]:
    """The devices one instance_group places an instance on (count times each)."""
    kind = group.kind
    if kind == mc.ModelInstanceGroup.KIND_CPU:
        return [None]
    if kind == mc.ModelInstanceGroup.KIND_GPU:
        return list(group.gpus) or [default_device or 0]
    if kind == mc.ModelInstanceGroup.KIND_AUTO:
        return list(group.gpus) if group.gpus else [default_device]
    raise ConfigError(f"instance_group {group.name or ''!r}: kind {mc.ModelInstanceGroup.Kind.Name(kind)} "
                      "is not supported; use KIND_CPU, KIND_GPU or KIND_AUTO")


def batching(config: mc.ModelConfig) -> Batching | None:
    """Dynamic batching of a completed config, or None when it is off."""
    if config.WhichOneof("scheduling_choice") != "dynamic_batching":
        return None
    dynamic = config.dynamic_batching
    if config.max_batch_size <= 0:
        raise ConfigError("dynamic_batching needs max_batch_size >= 1: the model must have a batch dimension")
    for size in dynamic.preferred_batch_size:
        if not 1 <= size <= config.max_batch_size:
            raise ConfigError(f"preferred_batch_size {size} is outside 1..max_batch_size ({config.max_batch_size})")
    return Batching(config.max_batch_size, frozenset(dynamic.preferred_batch_size),
                    dynamic.max_queue_delay_microseconds * 1000)


def queue_policy(config: mc.ModelConfig, default_max_size: int) -> QueuePolicy:
    """The request queue's bounds and order: the config's default_queue_policy (else the
    server's default size) and its priority levels."""
    dynamic = config.dynamic_batching
    levels, default = dynamic.priority_levels, dynamic.default_priority_level
    if levels and not 1 <= default <= levels:
        raise ConfigError(f"default_priority_level {default} is outside 1..priority_levels ({levels})")
    if default and not levels:
        raise ConfigError("default_priority_level needs priority_levels")
    base = _level_policy(dynamic.default_queue_policy, "default_queue_policy", default_max_size)
    per_level = {}
    for level, policy in sorted(dynamic.priority_queue_policy.items()):
        if not 1 <= level <= levels:
            raise ConfigError(f"priority_queue_policy names level {level}, outside 1..priority_levels ({levels})")
        per_level[level] = _level_policy(policy, f"priority_queue_policy {level}", default_max_size)
    return dataclasses.replace(base, levels=levels, default_level=default, per_level=per_level)


def _level_policy(policy: mc.ModelQueuePolicy, what: str, default_max_size: int) -> QueuePolicy:
    if policy.timeout_action == mc.ModelQueuePolicy.DELAY:
        raise ConfigError(f"{what} timeout_action DELAY is not supported; use REJECT")
    return QueuePolicy(policy.max_queue_size or default_max_size, policy.default_timeout_microseconds * 1000,
                       policy.allow_timeout_override)


def _thread_parameter(config: mc.ModelConfig, key: str) -> int:
    if key not in config.parameters:
        return 0
    text = config.parameters[key].string_value
    if not text.isdigit():
        raise ConfigError(f"parameter {key} must be a non-negative integer, got {text!r}")
    return int(text)
