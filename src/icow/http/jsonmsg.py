"""Protobuf messages as the JSON that Triton's HTTP endpoints return: the proto's own
field names, integers as numbers (protobuf's JSON mapping writes 64-bit ones as
strings, which perf_analyzer and tritonclient do not take), enums by name, scalars
with their default values, unset sub-messages left out."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_T = FieldDescriptor


def to_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
        elif _is_repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        elif field.type == _T.TYPE_MESSAGE or field.containing_oneof is not None:
            if message.HasField(field.name):
                out[field.name] = _value(field, value)
        else:
            out[field.name] = _value(field, value)
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _T.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return getattr(field, "is_repeated", None) or field.label == _T.LABEL_REPEATED


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == _T.TYPE_MESSAGE:
        return to_json(value)
    if field.type == _T.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name if value in field.enum_type.values_by_number else value
    if field.type == _T.TYPE_BYTES:
        return {"b64": base64.b64encode(value).decode()}
    return value
