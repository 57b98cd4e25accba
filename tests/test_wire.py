"""The native codec against protobuf: property tests over generated requests
and responses, and the hostile inputs a parser must refuse cleanly."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import expect_error
from icow import _wire
from icow._proto import inference_pb2 as pb
from icow.codecs import native as native_codec
from icow.codecs import protobuf as protobuf_codec
from icow.protocol.datatypes import DATATYPES
from icow.protocol.errors import InferenceServerError

INT_RANGES = {name: np.iinfo(d.numpy) for name, d in DATATYPES.items() if d.numpy.kind in "iu"}
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
shapes = st.lists(st.integers(0, 4), max_size=3)


def param_values():
    return st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), names,
                     st.floats(allow_nan=False), st.integers(2**63, 2**64 - 1))


def set_param(message, key: str, value) -> None:
    p = message[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    elif value >= 2**63:
        p.uint64_param = value
    else:
        p.int64_param = value


def typed_values(datatype: str, count: int):
    if datatype == "BOOL":
        return st.lists(st.booleans(), min_size=count, max_size=count)
    if datatype in INT_RANGES:
        r = INT_RANGES[datatype]
        return st.lists(st.integers(int(r.min), int(r.max)), min_size=count, max_size=count)
    if datatype == "BYTES":
        return st.lists(st.binary(max_size=6), min_size=count, max_size=count)
    width = 32 if datatype == "FP32" else 64
    return st.lists(st.floats(width=width), min_size=count, max_size=count)


@st.composite
def tensors(draw, raw: bool):
    datatype = draw(st.sampled_from([d for d, t in DATATYPES.items() if raw or t.contents is not None]))
    shape = draw(shapes)
    count = math.prod(shape)
    if datatype == "BYTES":
        elements = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        data = _wire.pack_bytes(elements) if raw else elements
    elif raw:
        data = draw(st.binary(min_size=count * DATATYPES[datatype].numpy.itemsize,
                              max_size=count * DATATYPES[datatype].numpy.itemsize))
    else:
        data = draw(typed_values(datatype, count))
    return datatype, shape, data


@st.composite
def requests(draw) -> bytes:
    raw = draw(st.booleans())
    msg = pb.ModelInferRequest(model_name=draw(names), model_version=draw(names), id=draw(names))
    for key, value in draw(st.dictionaries(names, param_values(), max_size=3)).items():
        set_param(msg.parameters, key, value)
    for name in draw(st.lists(names, unique=True, max_size=5)):
        datatype, shape, data = draw(tensors(raw))
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=shape)
        for key, value in draw(st.dictionaries(names, param_values(), max_size=2)).items():
            set_param(tensor.parameters, key, value)
        if raw:
            msg.raw_input_contents.append(data)
        else:
            getattr(tensor.contents, DATATYPES[datatype].contents).extend(data)
    for name in draw(st.lists(names, max_size=3)):
        msg.outputs.add(name=name)
    return msg.SerializeToString()


def param_dict(parameters) -> dict:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in parameters.items()}


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits (NaN payloads included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tolist() == b.tolist() if a.dtype == object else a.tobytes() == b.tobytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_parser_agrees_with_protobuf(data):
    msg = pb.ModelInferRequest.FromString(data)
    name, version, request_id, params, inputs, outputs = _wire.parse_request(data)
    assert (name, version, request_id) == (msg.model_name, msg.model_version, msg.id)
    assert params == param_dict(msg.parameters)
    assert [(i[0], i[1], list(i[2]), i[3]) for i in inputs] == \
        [(t.name, t.datatype, list(t.shape), param_dict(t.parameters)) for t in msg.inputs]
    assert [(o[0], o[1]) for o in outputs] == [(o.name, param_dict(o.parameters)) for o in msg.outputs]
    if msg.raw_input_contents:
        assert [bytes(i[4]) for i in inputs] == list(msg.raw_input_contents)
        assert all(isinstance(i[4], memoryview) and i[4].obj is data for i in inputs)  # views, not copies
    ours, theirs = native_codec.decode_request(data), protobuf_codec.decode_request(data)
    assert list(ours.inputs) == list(theirs.inputs) and ours.outputs == theirs.outputs
    for key in ours.inputs:
        assert same_array(ours.inputs[key], theirs.inputs[key]), key


@st.composite
def responses(draw):
    outputs = []
    for name in draw(st.lists(names, max_size=5)):
        datatype = draw(st.sampled_from(list(DATATYPES)))
        shape = draw(shapes)
        size = math.prod(shape) * (DATATYPES[datatype].numpy.itemsize if datatype != "BYTES" else 3)
        outputs.append((name, datatype, shape, draw(st.binary(min_size=size, max_size=size))))
    return draw(names), draw(names), draw(names), outputs


def expected_message(response) -> pb.ModelInferResponse:
    model_name, model_version, request_id, outputs = response
    expected = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for name, datatype, shape, data in outputs:
        expected.outputs.add(name=name, datatype=datatype, shape=shape)
        expected.raw_output_contents.append(data)
    return expected


@settings(max_examples=300, deadline=None)
@given(responses())
def test_builder_writes_what_protobuf_writes(response):
    model_name, model_version, request_id, outputs = response
    buffer = _wire.ResponseBuffer(model_name, model_version, request_id,
                                  [(n, d, s, len(data)) for n, d, s, data in outputs])
    assert buffer.size == len(expected_message(response).SerializeToString())
    for i, (*_, data) in enumerate(outputs):
        buffer.write(i, data)
    built = buffer.finish()
    expected = expected_message(response)
    assert pb.ModelInferResponse.FromString(built) == expected
    assert built == expected.SerializeToString()


@pytest.mark.parametrize("datatype, dtype", [("FP16", "<u2"), ("FP32", "<u4"), ("FP64", "<u8")])
def test_every_float_bit_pattern_survives(datatype, dtype):
    """NaN payloads, infinities, negative zero, subnormals: the same bits back."""
    bits = np.array([0, 1, 2**(8 * np.dtype(dtype).itemsize - 1)], dtype=dtype)  # 0, min subnormal, -0
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    bits = np.concatenate([bits, rng.integers(0, info.max, 4096, dtype=dtype, endpoint=True),
                           np.array([info.max, info.max - 1], dtype=dtype)])  # NaNs with all payload bits
    raw = bits.tobytes()
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    msg.inputs.add(name="x", datatype=datatype, shape=[bits.size])
    array = native_codec.decode_request(msg.SerializeToString()).inputs["x"]
    assert array.tobytes() == raw


def test_buffer_refuses_misuse():
    buffer = _wire.ResponseBuffer("m", "1", "", [("y", "FP32", [2], 8)])
    with pytest.raises(ValueError, match="has 8 bytes, got 4"):
        buffer.write(0, b"\0" * 4)
    with pytest.raises(IndexError):
        buffer.address(1)
    with pytest.raises(ValueError, match="never written"):
        buffer.finish()
    buffer.write(0, np.zeros(2, np.float32))
    buffer.finish()
    with pytest.raises(ValueError, match="already finished"):
        buffer.finish()


# -- hostile input, by name -------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    if wire_type == 2:
        payload = varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def fp32_input(shape_field: bytes, name: bytes = b"x") -> bytes:
    return field(5, 2, field(1, 2, name) + field(2, 2, b"FP32") + shape_field)


HOSTILE = {
    "truncated varint": (b"\x0a\x85", "message ends inside a varint"),
    "truncated tag": (b"\x8a", "message ends inside a varint"),
    "length beyond the buffer": (b"\x0a\x05ab", "declares 5 bytes but only 2 remain"),
    "1 GiB claimed": (varint(7 << 3 | 2) + varint(1 << 30) + b"abc", "declares 1073741824 bytes but only 3 remain"),
    "wrong wire type": (b"\x08\x01", "field model_name has wire type 0, expected 2"),
    "wrong wire type inside a tensor": (field(5, 2, b"\x08\x01"), "InferInputTensor.name has wire type 0"),
    "invalid wire type": (varint(20 << 3 | 7), "invalid wire type 7"),
    "field number 0": (b"\x02\x00", "invalid field number 0"),
    "varint of 11 bytes": (varint(20 << 3) + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
    "dims of 2^63": (fp32_input(field(3, 2, varint(2**63))) + field(7, 2, b""), "negative dimension"),
    "element count overflow": (fp32_input(field(3, 2, varint(2**62) + varint(8))) + field(7, 2, b""),
                               "more elements than fit in 64 bits"),
    "byte count disagrees": (fp32_input(field(3, 2, varint(3))) + field(7, 2, b"\0" * 11), "needs 12 bytes, got 11"),
    "huge shape, few typed values": (fp32_input(field(3, 2, varint(2**40)) + field(5, 2, field(6, 5, b"\0" * 4))),
                                     "needs 1099511627776 elements, got 1 in fp32_contents"),
    "unterminated group": (varint(20 << 3 | 3) + varint(21 << 3) + b"\x01", "message ends inside a group"),
    "name not UTF-8": (field(1, 2, b"\xff\xfe"), "model_name is not valid UTF-8"),
    "typed contents of another type": (fp32_input(field(3, 2, varint(1)) + field(5, 2, field(2, 0, b"\x01"))),
                                       "FP32 takes fp32_contents, got int_contents"),
    "packed fp32 cut short": (fp32_input(field(3, 2, varint(1)) + field(5, 2, field(6, 2, b"\0\0"))),
                              "message ends inside a fixed-size field"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_is_refused_with_a_reason(case):
    data, message = HOSTILE[case]
    with pytest.raises(InferenceServerError) as error:
        native_codec.decode_request(data)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.message


@pytest.mark.parametrize("case", ["truncated varint", "1 GiB claimed", "dims of 2^63", "element count overflow"])
def test_hostile_input_on_the_server(server, case):
    data, message = HOSTILE[case]
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with expect_error(grpc.StatusCode.INVALID_ARGUMENT, *([message] if server_codec_native(server) else [])):
            call(data)
        good = pb.ModelInferRequest(model_name="scale", raw_input_contents=[np.ones(4, np.float32).tobytes()])
        good.inputs.add(name="x", datatype="FP32", shape=[4])
        assert np.frombuffer(call(good.SerializeToString())[-16:], "<f4").tolist() == [3.0] * 4


def server_codec_native(server) -> bool:
    return "--codec native" in " ".join(server.proc.args)


def test_empty_message_is_an_empty_request():
    assert _wire.parse_request(b"") == ("", "", "", {}, [], [])


def test_unknown_fields_are_skipped():
    good = fp32_input(field(3, 2, varint(1))) + field(7, 2, b"\0" * 4) + field(1, 2, b"m")
    unknown = (field(99, 0, varint(5)) + field(98, 1, b"\0" * 8) + field(97, 2, b"zz") + field(96, 5, b"\0" * 4)
               + varint(95 << 3 | 3) + field(1, 0, b"\x01") + varint(95 << 3 | 4))
    assert _wire.parse_request(unknown + good)[:4] == _wire.parse_request(good)[:4]
    assert _wire.parse_request(unknown + good)[4][0][:4] == _wire.parse_request(good)[4][0][:4]


def test_repeated_scalars_packed_or_not():
    unpacked = fp32_input(field(3, 0, varint(2)) + field(3, 0, varint(3))) + field(7, 2, b"\0" * 24)
    packed = fp32_input(field(3, 2, varint(2) + varint(3))) + field(7, 2, b"\0" * 24)
    assert _wire.parse_request(unpacked)[4][0][2] == _wire.parse_request(packed)[4][0][2] == (2, 3)
    typed = fp32_input(field(3, 2, varint(2)) + field(5, 2, field(6, 5, b"\0\0\x80?") + field(6, 5, b"\0\0\0@")))
    assert np.frombuffer(_wire.parse_request(typed)[4][0][4], "<f4").tolist() == [1.0, 2.0]


def test_model_name_without_parsing_the_tensors():
    """What the auth interceptor reads before the full parse: the last model_name wins."""
    good = fp32_input(field(3, 2, varint(1))) + field(7, 2, b"\0" * 4) + field(1, 2, b"first")
    assert _wire.model_name(good) == "first"
    assert _wire.model_name(good + field(1, 2, b"second")) == "second"
    assert _wire.model_name(b"") == ""
    for data, _ in (HOSTILE["length beyond the buffer"], HOSTILE["truncated varint"], HOSTILE["name not UTF-8"]):
        with pytest.raises(ValueError):
            _wire.model_name(data)


@pytest.mark.parametrize("count", [2, 8, 9, 20])  # compared pairwise up to 8 inputs, through a set beyond
def test_an_input_named_twice_is_refused(count):
    def request(names: list[str]) -> bytes:
        message = pb.ModelInferRequest(model_name="m")
        for name in names:
            message.inputs.add(name=name, datatype="FP32", shape=[1])
            message.raw_input_contents.append(b"\0" * 4)
        return message.SerializeToString()

    names = [f"in{i}" for i in range(count)]
    assert len(_wire.parse_request(request(names))[4]) == count
    with pytest.raises(ValueError, match="input 'in0' appears twice in the request"):
        _wire.parse_request(request(names[:-1] + ["in0"]))


def test_unpack_bytes_refuses_a_count_the_contents_cannot_hold():
    """Every element has a 4-byte length prefix: a larger count is refused before any
    list is made (found by the live fuzzer: a shape of 2**31 - 1 allocated gigabytes)."""
    with pytest.raises(ValueError, match="2147483647 BYTES elements need at least 8589934588 bytes, got 5"):
        _wire.unpack_bytes(b"\1\0\0\0a", 2**31 - 1)
    assert _wire.unpack_bytes(b"\1\0\0\0a", 1) == [b"a"]
