"""Which fields of a model config icow acts on. A config may set any field of Triton's
ModelConfig (proto/model_config.proto has them all, so that every Triton config
parses), but a field that icow would not act on must not load and silently do
nothing: it is refused at load with a message that names it, or, where ignoring it
cannot change an answer, logged once as ignored. docs/config.md is the table in words.

The rule is table-driven and default-deny: the set fields of the config are walked
(protobuf's ListFields, so a field left at its default counts as unset); a field
path in ``ACTED`` is accepted with everything beneath it, one in ``IGNORED`` is
logged, one in ``REFUSED`` is refused with its reason, a message is walked into,
and any other field is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .._proto import model_config_pb2 as mc
from . import custom_ops
from .config import ConfigError

log = logging.getLogger(__name__)

# Acted on, with all that lies beneath (docs/config.md says where each is used).
ACTED = frozenset({
    "name", "platform", "backend", "version_policy", "max_batch_size", "default_model_filename",
    "input.name", "input.data_type", "input.dims", "input.reshape",
    "output.name", "output.data_type", "output.dims", "output.reshape",
    "instance_group.kind", "instance_group.count", "instance_group.gpus",
    "dynamic_batching.preferred_batch_size", "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.default_queue_policy.timeout_action",  # REJECT; DELAY is refused by execution.py
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.allow_timeout_override",  # request_policy.py
    "dynamic_batching.priority_levels", "dynamic_batching.default_priority_level",  # scheduler.py's order
    "dynamic_batching.priority_queue_policy",  # a level's own bounds (execution.queue_policy)
    "optimization.execution_accelerators.gpu_execution_accelerator.name",  # "tensorrt": _accelerators
    "parameters",  # the keys icow knows are acted on; others are logged (_parameters)
    "model_warmup", "response_cache",
    "model_operations",  # onnxruntime-extensions' library only (custom_ops.py)
    # an ensemble's graph (ensemble_graph.py); model_version -1 or a number, a label by parameter
    "ensemble_scheduling.step.model_name", "ensemble_scheduling.step.model_version",
    "ensemble_scheduling.step.input_map", "ensemble_scheduling.step.output_map",
})

# What an ensemble's config may set: it runs no session of its own, so what shapes one
# (instances, batching, warm-up, cache, optimization) belongs in its composing models.
ENSEMBLE_FIELDS = frozenset({"name", "platform", "version_policy", "max_batch_size", "input", "output",
                             "parameters", "ensemble_scheduling"})

# Harmless to ignore: no answer, placement or queueing decision depends on them here.
IGNORED = {
    "input.format": "it describes an image layout; icow passes tensors as they come",
    "output.label_filename": "labels serve only the classification extension, which icow does not offer",
    "instance_group.name": "icow reports instances by kind and device",
    "instance_group.host_policy": "icow has no host policies",
    "optimization.input_pinned_memory": "a hint for host-device copies; ONNX Runtime makes its own",
    "optimization.output_pinned_memory": "a hint for host-device copies; ONNX Runtime makes its own",
    "optimization.gather_kernel_buffer_threshold": "a hint for host-device copies; ONNX Runtime makes its own",
    "optimization.eager_batching": "a hint for Triton's batcher",
    "metric_tags": "icow's metrics carry the labels model and version only",
    "ensemble_scheduling.max_inflight_requests": "an ensemble's steps wait in their composing models' queues, "
                                                 "which max_queue_size bounds",
    "model_metrics": "icow's metrics have fixed histogram buckets",
}

# Refused with a reason of their own (any other field not above is refused too).
REFUSED = {
    "ensemble_scheduling.step.model_namespace": "icow has no model namespaces: model names are unique",
    "sequence_batching": "icow has no sequence batcher for stateful models",
    "model_transaction_policy.decoupled": "every request gets exactly one response",
    "batch_input": "icow batches only requests of equal shapes (no ragged batching)",
    "batch_output": "icow batches only requests of equal shapes (no ragged batching)",
    "input.allow_ragged_batch": "icow batches only requests of equal shapes (no ragged batching)",
    "input.optional": "every input of the config is required",
    "model_repository_agents": "icow runs no repository agents (a checksum agent's check would not happen)",
    "optimization.execution_accelerators.gpu_execution_accelerator.parameters":
        "TensorRT runs with ONNX Runtime's defaults (precision, workspace)",
}

# icow's own keys of `parameters` (runtime/execution.py, runtime/providers.py,
# runtime/model.py's echo, runtime/custom_ops.py, repository/routing.py). Triton passes unknown keys to
# the backend; Triton's ONNX Runtime backend knows more, which icow does not act on.
KNOWN_PARAMETERS = frozenset({"intra_op_thread_count", "inter_op_thread_count", "allow_cpu_fallback",
                              "execution_providers", "version_labels", "traffic_split",
                              custom_ops.PARAMETER, "step_version_labels"})

TENSORRT = "tensorrt"


def check(config: mc.ModelConfig, model: str) -> None:
    """Refuse ``config`` (ConfigError naming the field) if it sets a field icow does
    not act on; log the ignored ones, once per call (a load)."""
    ignored: dict[str, str] = {}
    for path in _set_fields(config, ""):
        if path in IGNORED:
            ignored[path] = IGNORED[path]
        elif path in REFUSED:
            raise ConfigError(f"config field '{path}' is not supported by icow: {REFUSED[path]}")
        else:
            raise ConfigError(f"config field '{path}' is not supported by icow (docs/config.md lists the "
                              "fields it acts on)")
    _ensemble(config)
    _accelerators(config)
    custom_ops.names(config)  # a library icow would not load is refused before any session
    unknown = sorted(set(config.parameters) - KNOWN_PARAMETERS)
    if unknown:
        ignored["parameters"] = f"icow knows no key {', '.join(map(repr, unknown))}"
    for path, why in ignored.items():
        log.warning("model '%s': config field '%s' is ignored: %s", model, path, why)


def _ensemble(config: mc.ModelConfig) -> None:
    """An ensemble sets only what an ensemble acts on; ensemble_scheduling makes one only with its platform."""
    if config.platform != "ensemble":
        if config.ensemble_scheduling.step:
            raise ConfigError("config field 'ensemble_scheduling' needs platform: \"ensemble\"")
        return
    for field, _ in config.ListFields():
        if field.name not in ENSEMBLE_FIELDS:
            raise ConfigError(f"config field '{field.name}' does not apply to an ensemble (platform \"ensemble\"): "
                              "set it in the config of its composing models")


def _set_fields(message: Message, prefix: str) -> Iterator[str]:
    """Paths of the set fields that ``ACTED`` does not accept, walking into messages."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if path in ACTED:
            continue
        if path in IGNORED or path in REFUSED or not walked(field, path):
            yield path
            continue
        for item in value if field.is_repeated else [value]:
            yield from _set_fields(item, path + ".")


def walked(field: FieldDescriptor, path: str) -> bool:
    """Whether the table decides ``field`` by what its message sets. A map is a leaf (its
    keys are data, not fields); so is a list of messages that nothing beneath is acted on
    in: one element, even with nothing set (``secondary_devices {}``), asks for something."""
    if field.type != FieldDescriptor.TYPE_MESSAGE or field.message_type.GetOptions().map_entry:
        return False
    return not field.is_repeated or any(p.startswith(path + ".") for p in ACTED)


def _accelerators(config: mc.ModelConfig) -> None:
    """TensorRT is the one accelerator icow starts (providers.py)."""
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name != TENSORRT:
            raise ConfigError("config field 'optimization.execution_accelerators.gpu_execution_accelerator.name' "
                              f"is {accelerator.name!r}: icow acts on {TENSORRT!r} only")
