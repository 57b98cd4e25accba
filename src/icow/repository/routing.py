"""Version labels and traffic split: which version of a model answers a request.

A model's routing comes from two parameters of its config.pbtxt (Triton ignores
parameters it does not know, so the same repository still serves there)::

    parameters { key: "version_labels" value { string_value: "stable=3, canary=4" } }
    parameters { key: "traffic_split"  value { string_value: "stable=90, canary=10" } }

Labels name versions wherever the protocol carries a version string. The split
weighs versions or labels for inference requests that name no version: sticky on
the request id when there is one, weighted random otherwise. A `Routing` is
immutable; a change publishes a new one (see Repository.set_routing), and is
written beside config.pbtxt as ``routing.json`` for every replica to follow
(routing_store.py).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._proto import model_config_pb2 as mc
from ..protocol.names import shorten
from ..protocol.pairs import parse_pairs
from ..runtime import config as cfg

if TYPE_CHECKING:
    from ..runtime.model import Model

ROUTING_FILE = "routing.json"  # in a model's folder: the routing changed since (routing_store.py)
LABELS_PARAMETER = "version_labels"
SPLIT_PARAMETER = "traffic_split"
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")  # never all digits: digits are versions


@dataclass(frozen=True)
class Routing:
    """Labels (label -> version) and the traffic split ((version or label, weight), ...)."""

    labels: Mapping[str, int] = field(default_factory=dict)
    split: tuple[tuple[str, int], ...] = ()
    generation: int = 1  # 1 as loaded, then counts the changes (0 means 'any' to SetRouting)

    def version_of(self, target: str) -> int | None:
        """The version a version string or label names; None when it names none."""
        if target.isdigit():
            return int(target) if int(target) > 0 else None
        return self.labels.get(target)

    def pinned(self) -> set[int]:
        """Versions that labels or the split name: they stay loaded whatever the policy says."""
        named = {self.version_of(t) for t, _ in self.split}
        return {v for v in (*self.labels.values(), *named) if v is not None}

    def labels_of(self, version: int) -> list[str]:
        return sorted(k for k, v in self.labels.items() if v == version)

    def problems(self, ready: Mapping[int, Model]) -> list[str]:
        """Why this routing cannot be put in force over the ``ready`` versions (empty: it can)."""
        found = [f"label '{k}' names version {v}, which is not ready" for k, v in sorted(self.labels.items())
                 if v not in ready]
        for target, _ in self.split:
            version = self.version_of(target)
            if version is None:
                found.append(f"the split names '{shorten(target)}', which is neither a version nor a label")
            elif version not in ready:
                found.append(f"the split's '{target}' is version {version}, which is not ready")
        return found

    def with_changes(self, labels: Mapping[str, int] | None = None, removed: Sequence[str] = (),
                     split: Sequence[tuple[str, int]] | None = None) -> Routing:
        """A new routing: ``labels`` set or moved, ``removed`` labels gone, the split
        replaced when ``split`` is not None. Raises ValueError for a malformed one."""
        new_labels = {k: v for k, v in self.labels.items() if k not in removed}
        for label, version in (labels or {}).items():
            new_labels[_check_label(label)] = _check_version(version, label)
        new_split = self.split if split is None else _check_split(split)
        return Routing(new_labels, new_split, self.generation + 1)


def check_routing(labels: Mapping[str, int | str], split: Sequence[Sequence], generation: int) -> Routing:
    """A Routing from plain labels and split pairs (a routing file's). Raises ValueError."""
    checked = {_check_label(str(k)): _check_version(v, str(k)) for k, v in labels.items()}
    return Routing(checked, _check_split((t, w) for t, w in split), generation)


def from_config(config: mc.ModelConfig) -> Routing:
    """The routing that ``config``'s parameters declare. Raises cfg.ConfigError."""
    try:
        labels = {_check_label(k): _check_version(v, k)
                  for k, v in parse_pairs(_parameter(config, LABELS_PARAMETER)).items()}
        split = _check_split(parse_pairs(_parameter(config, SPLIT_PARAMETER)).items())
    except ValueError as e:
        raise cfg.ConfigError(f"config.pbtxt parameters: {e}") from None
    return Routing(labels, split)


def without_routing(config: mc.ModelConfig) -> bytes:
    """``config`` serialized without its routing parameters: what a version's load
    depends on, so that moving a label reloads nothing."""
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    for key in (LABELS_PARAMETER, SPLIT_PARAMETER):
        copy.parameters.pop(key, None)
    return copy.SerializeToString(deterministic=True)


def config_with_routing(config: mc.ModelConfig, routing: Routing) -> mc.ModelConfig:
    """``config`` with its routing parameters showing ``routing`` (what is in force,
    which may have changed since config.pbtxt was read)."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    for key, text in ((LABELS_PARAMETER, ", ".join(f"{k}={v}" for k, v in sorted(routing.labels.items()))),
                      (SPLIT_PARAMETER, ", ".join(f"{t}={w}" for t, w in routing.split))):
        out.parameters.pop(key, None)
        if text:
            out.parameters[key].string_value = text
    return out


def _parameter(config: mc.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else ""


def _check_label(label: str) -> str:
    if not _LABEL.match(label):
        raise ValueError(f"'{shorten(label)}' is not a label: letters, digits, '_', '.', '-', starting with a "
                         "letter or '_'")
    return label


def _check_version(version: int | str, label: str) -> int:
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"label '{shorten(label)}' must name a version (a positive integer), not '{shorten(text)}'")
    return int(text)


def _check_split(split) -> tuple[tuple[str, int], ...]:
    checked = []
    for target, weight in split:
        target, text = str(target).strip(), str(weight).strip()
        if not target.isdigit():
            _check_label(target)
        if not text.isdigit():
            raise ValueError(f"the weight of '{shorten(target)}' must be a whole number >= 0, "
                             f"not '{shorten(text)}'")
        checked.append((target, int(text)))
    if checked and not any(w for _, w in checked):
        raise ValueError("the split's weights add up to 0")
    if len({t for t, _ in checked}) != len(checked):
        raise ValueError("the split names a target twice")
    return tuple(checked)


class SplitTable:
    """The split over the ready versions of one published model entry, ready to draw from.

    Targets that are not ready are left out and the others weigh the same relative
    to each other, so that a version leaving the repository stops taking traffic
    without failing requests; with none ready, ``choose`` returns None."""

    __slots__ = ("bounds", "models", "total")

    def __init__(self, routing: Routing, ready: Mapping[int, Model]) -> None:
        self.bounds: list[int] = []
        self.models: list[Model] = []
        self.total = 0
        for target, weight in routing.split:
            model = ready.get(routing.version_of(target) or 0)
            if model is not None and weight > 0:
                self.total += weight
                self.bounds.append(self.total)
                self.models.append(model)

    def choose(self, request_id: str) -> Model | None:
        """The version for one request: by a hash of its id (sticky), or at random without one."""
        if not self.total:
            return None
        if request_id:
            point = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little") \
                % self.total
        else:
            point = random.randrange(self.total)
        for bound, model in zip(self.bounds, self.models):
            if point < bound:
                return model
        return self.models[-1]

    def primary(self) -> Model | None:
        """The heaviest target: what calls without a request (metadata, config) describe."""
        if not self.total:
            return None
        weights = [b - a for a, b in zip([0, *self.bounds], self.bounds)]
        return self.models[weights.index(max(weights))]
