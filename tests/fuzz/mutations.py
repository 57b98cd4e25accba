"""Mutators for the live-server fuzzer (live.py): a valid serialized request made
hostile three ways, each deterministic given the ``random.Random`` it is handed.

- bytes: flips, overwrites, deletions, insertions, truncation, repeats, splices;
- wire: the protobuf encoding taken apart into fields, then made to lie (length
  prefixes too long or short, wire types changed, varints over-long or huge,
  fields repeated, dropped, reordered, unknown ones added, deep nesting);
- fields: a parsed message with one field, at any depth, set to a value a
  hostile client would pick (dims negative or huge, wrong datatypes, names of
  other models, parameters of the wrong type, repeated entries doubled);
- json: an HTTP request's JSON, a node at any depth replaced, dropped or doubled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# -- interesting values ---------------------------------------------------------

INTS = [0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 256, 4096, 2**31 - 1, -(2**31), 2**32, 2**53, 2**62, 2**63 - 1,
        -(2**63), 2**64 - 1]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 1e-45]
VARINTS = [0, 1, 0x7F, 0x80, 0x3FFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def limits(field: FieldDescriptor) -> tuple[int, int]:
    """The range a Python protobuf integer field accepts."""
    t = field.type
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 0, 2**32 - 1
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 0, 2**64 - 1
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
             FieldDescriptor.TYPE_ENUM):
        return -(2**31), 2**31 - 1
    return -(2**63), 2**63 - 1


# -- bytes ----------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random, others: Sequence[bytes] = ()) -> bytes:
    """One to four blind edits of ``data``; ``others`` are requests to splice from."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out) + 1)
        kind = rng.randrange(8)
        if kind == 0 and out:
            pos = min(pos, len(out) - 1)
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            pos = min(pos, len(out) - 1)
            out[pos] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == 2:
            del out[pos:pos + rng.randint(1, 16)]
        elif kind == 3:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif kind == 4:
            del out[pos:]
        elif kind == 5:
            chunk = out[pos:pos + rng.randint(1, 64)]
            out[pos:pos] = chunk * rng.randint(1, 8)
        elif kind == 6 and others:  # head of one request, tail of another
            other = rng.choice(others)
            out = out[:pos] + other[rng.randrange(len(other) + 1):]
        else:
            out += rng.choice(others) if others else rng.randbytes(8)
    return bytes(out)


# -- the wire encoding ----------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


@dataclass
class WireField:
    number: int
    wire_type: int
    payload: bytes  # the value's own bytes: a varint, 8 or 4 bytes, or what a length prefix counts


def varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def split_fields(data: bytes) -> list[WireField] | None:
    """The top-level fields of a message's encoding, None where it is not one."""
    fields, pos = [], 0
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            start = pos
            if wire_type == VARINT:
                _, pos = _read_varint(data, pos)
            elif wire_type == I64:
                pos += 8
            elif wire_type == I32:
                pos += 4
            elif wire_type == LEN:
                size, start = _read_varint(data, pos)
                pos = start + size
            else:
                return None
            if pos > len(data) or number == 0:
                return None
            fields.append(WireField(number, wire_type, data[start:pos]))
    except ValueError:
        return None
    return fields


def join_fields(fields: Sequence[WireField]) -> bytes:
    out = bytearray()
    for f in fields:
        out += varint(f.number << 3 | f.wire_type)
        if f.wire_type == LEN:
            out += varint(len(f.payload))
        out += f.payload
    return bytes(out)


def mutate_wire(data: bytes, rng: random.Random) -> bytes:
    """One structural lie in the encoding, at the top level or inside a nested message."""
    fields = split_fields(data)
    if not fields:
        return mutate_bytes(data, rng)
    nested = [f for f in fields if f.wire_type == LEN and split_fields(f.payload)]
    if nested and rng.random() < 0.4:  # go down a level: the lie sits inside a tensor or a parameter
        inner = rng.choice(nested)
        inner.payload = mutate_wire(inner.payload, rng)
        return join_fields(fields)
    i = rng.randrange(len(fields))
    f = fields[i]
    kind = rng.randrange(10)
    if kind == 0 and f.wire_type == LEN:  # the length prefix lies (it is written by hand here)
        head = varint(f.number << 3 | LEN)
        claimed = rng.choice([len(f.payload) + rng.randint(1, 64), max(0, len(f.payload) - rng.randint(1, 8)),
                              rng.choice(VARINTS)])
        return join_fields(fields[:i]) + head + varint(claimed) + f.payload + join_fields(fields[i + 1:])
    if kind == 1:  # the wire type lies
        f.wire_type = rng.choice([w for w in (VARINT, I64, LEN, SGROUP, EGROUP, I32, 6, 7) if w != f.wire_type])
        if f.wire_type in (SGROUP, EGROUP, 6, 7):
            return join_fields(fields[:i]) + varint(f.number << 3 | f.wire_type) + f.payload \
                + join_fields(fields[i + 1:])
    elif kind == 2:
        fields.insert(i, WireField(f.number, f.wire_type, f.payload))  # a field twice
    elif kind == 3:
        del fields[i]
    elif kind == 4:
        rng.shuffle(fields)
    elif kind == 5 and f.wire_type == VARINT:  # over-long but valid, or a huge value
        value, _ = _read_varint(f.payload, 0)
        f.payload = bytes([value & 0x7F | 0x80] + [0x80] * rng.randint(1, 8) + [0]) if rng.random() < 0.5 \
            else varint(rng.choice(VARINTS))
    elif kind == 6:  # an unknown field, or a known number with a payload of another message's field
        number = rng.choice([f.number, rng.randint(1, 40), 536870911])
        fields.insert(i, WireField(number, rng.choice([VARINT, LEN, I32, I64]), rng.randbytes(rng.choice([4, 8]))))
        if fields[i].wire_type == VARINT:
            fields[i].payload = varint(rng.choice(VARINTS))
    elif kind == 7 and f.wire_type == LEN:  # the same field nested in itself, deeply
        depth = rng.choice([10, 100, 1000])
        payload = f.payload
        for _ in range(depth):
            payload = varint(f.number << 3 | LEN) + varint(len(payload)) + payload
        f.payload = payload
    elif kind == 8 and f.wire_type == LEN:  # a packed-looking run of huge varints
        f.payload = b"".join(varint(rng.choice(VARINTS)) for _ in range(rng.randint(1, 16)))
    else:
        f.payload = mutate_bytes(f.payload, rng) if f.payload else rng.randbytes(4)
        if f.wire_type in (I32, I64):
            f.payload = (f.payload + bytes(8))[:4 if f.wire_type == I32 else 8]
        elif f.wire_type == VARINT:
            f.payload = varint(rng.choice(VARINTS))
    return join_fields(fields)


# -- protobuf fields ------------------------------------------------------------

_NOT_INTS = (FieldDescriptor.CPPTYPE_STRING, FieldDescriptor.CPPTYPE_BOOL, FieldDescriptor.CPPTYPE_FLOAT,
              FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_MESSAGE, FieldDescriptor.CPPTYPE_ENUM)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf 5.29+, which deprecates label
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _places(message: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor]]:
    """Every (message, field) of ``message`` and of the messages set in it."""
    places = [(message, f) for f in message.DESCRIPTOR.fields]
    if depth > 4:
        return places
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if _is_map(field):
            values = value.values() if field.message_type.fields_by_name["value"].message_type else []
        else:
            values = value if _repeated(field) else [value]
        for child in values:
            places += _places(child, depth + 1)
    return places


def _scalar(field: FieldDescriptor, rng: random.Random, words: Sequence[str]):
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return rng.choice([b"", rng.randbytes(rng.randint(1, 64)), b"\0" * rng.choice([3, 4, 4096]),
                               rng.choice(words).encode()])
        return rng.choice([*words, "", "x" * rng.choice([256, 5000]), "\0", "é", "mlp\0"])
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if cpp in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return rng.choice(FLOATS)
    low, high = limits(field)
    return min(max(rng.choice(INTS), low), high)


def mutate_fields(message: Message, rng: random.Random, words: Sequence[str]) -> None:
    """Set one field, at any depth of ``message``, to a hostile value (in place);
    a message without fields stays as it is."""
    places = _places(message)
    if not places:
        return
    target, field = rng.choice(places)
    value = getattr(target, field.name)
    if _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        key = _scalar(key_field, rng, words)
        if rng.random() < 0.2 and len(value):
            del value[rng.choice(list(value))]
        elif field.message_type.fields_by_name["value"].message_type is not None:
            mutate_fields(value[key], rng, words)
        else:
            value[key] = _scalar(field.message_type.fields_by_name["value"], rng, words)
    elif _repeated(field):
        roll = rng.random()
        if roll < 0.2:
            del value[:]
        elif field.message_type is not None:
            if len(value) and roll < 0.6:
                value.add().CopyFrom(rng.choice(value))  # an entry twice: two inputs of one name
            else:
                mutate_fields(value.add(), rng, words)
        elif len(value) and roll < 0.6:
            value[rng.randrange(len(value))] = _scalar(field, rng, words)
        elif roll < 0.7 and field.cpp_type not in _NOT_INTS:  # a rank no tensor has: dims of 1
            value.extend([1] * rng.choice([63, 64, 65, 100]))
        else:
            value.extend(_scalar(field, rng, words) for _ in range(rng.choice([1, 2, 7])))
    elif field.message_type is not None:
        if rng.random() < 0.3:
            target.ClearField(field.name)
        else:
            mutate_fields(value, rng, words)  # sets it, and with it a oneof's choice
    else:
        setattr(target, field.name, _scalar(field, rng, words))


# -- JSON (HTTP) -------------------------------------------------------------------

JSON_VALUES = [*INTS, *FLOATS[:4], 10**30, -(10**30), None, True, False, "", "x" * 5000, "\0", "FP32", "BYTES", "BF16",
           [], [[]], [None], [[1, 2], [3]], {}, {"binary_data_size": 4}, [1] * 65, [-1], [2**62, 2**62]]


def mutate_json(value, rng: random.Random, depth: int = 0):
    """A parsed JSON request (HTTP) with one node somewhere replaced, dropped or doubled
    (or a key of the protocol's set to a hostile value); serialize it with ``json``:
    its integers may pass 64 bits."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        value = dict(value)
        roll = rng.random()
        if roll < 0.15:
            del value[key]
        elif roll < 0.25:
            value[rng.choice(["parameters", "binary_data_size", "data", "shape", "datatype", "name"])] = \
                rng.choice(JSON_VALUES)
        else:
            value[key] = mutate_json(value[key], rng, depth + 1)
        return value
    if isinstance(value, list) and value and rng.random() < 0.8:
        value = list(value)
        i = rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.15:
            value.append(value[i])
        elif roll < 0.25:
            del value[i]
        else:
            value[i] = mutate_json(value[i], rng, depth + 1)
        return value
    return rng.choice(JSON_VALUES)
