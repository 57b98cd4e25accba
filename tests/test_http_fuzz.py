"""The HTTP request parsers in process, fuzzed: body.split (JSON header and binary
tail), body.decompress, infer.decode (with no shared memory: Leases(None)),
dispatch's JSON body and timeout parameter, and routes.match. Valid requests are
mutated as bytes (tests/fuzz/mutations.py) and as JSON trees; Hypothesis builds
JSON of its own and paths. The only exceptions that may come out are HttpError and
InferenceServerError, the two the app turns into a 4xx with a JSON body; anything
else would be a 500."""

from __future__ import annotations

import gzip
import json
import random
import struct
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutations import mutate_bytes, mutate_json
from icow.http import body as bodies
from icow.http import dispatch, infer, routes
from icow.http.status import HttpError
from icow.protocol.datatypes import DATATYPES
from icow.protocol.errors import InferenceServerError
from icow.shm.registry import Leases

EXPECTED = (HttpError, InferenceServerError)
LIMIT = 1 << 20


def parse(body: bytes, header_length: bytes | None) -> None:
    """What the app does with an inference request's body, up to the model."""
    header, binary = bodies.split(body, header_length)
    dispatch._check_timeout(header)
    with Leases(None) as held:
        infer.decode(header, binary, held)


def checked(call, *args) -> None:
    try:
        call(*args)
    except EXPECTED:
        pass


# -- seeds ------------------------------------------------------------------------

def _tensor(name: str, datatype: str, shape: list[int], data) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def json_seeds() -> list[dict]:
    return [
        {"id": "a", "inputs": [_tensor("x", "FP32", [4], [1.0, 2.0, 3.0, 4.0])], "outputs": [{"name": "y"}]},
        {"inputs": [_tensor("input", "FP32", [2, 2], [[1, 2], [3, 4]])],
         "parameters": {"binary_data_output": True, "timeout": 1000}},
        {"inputs": [_tensor("text", "BYTES", [2], ["abc", ""])],
         "outputs": [{"name": "upper", "parameters": {"binary_data": True}}]},
        {"inputs": [_tensor("a", "INT64", [1, 3], [1, -2, 3]), _tensor("c", "BOOL", [3], [True, False, True]),
                    _tensor("h", "FP16", [1], [0.5]), _tensor("b", "BF16", [2], [1.5, -2]),
                    _tensor("u", "UINT8", [2], [0, 255])]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                     "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 16}}],
         "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r", "shared_memory_offset": 16,
                                                    "shared_memory_byte_size": 16}}]},
    ]


def binary_seeds() -> list[tuple[bytes, bytes]]:
    """(body, Inference-Header-Content-Length) with binary tensors after the JSON."""
    out = []
    for tensors in ([("x", "FP32", [4], struct.pack("<4f", 1, 2, 3, 4))],
                    [("a", "INT32", [2], struct.pack("<2i", 7, -7)),
                     ("s", "BYTES", [2], struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0))]):
        header = {"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                             for n, d, s, b in tensors]}
        head = orjson.dumps(header)
        out.append((head + b"".join(b for *_, b in tensors), str(len(head)).encode()))
    return out


def test_the_seeds_parse():
    """The fuzzing starts from requests that are valid (but the one naming shared memory, which is off)."""
    for seed in json_seeds()[:-1]:
        parse(orjson.dumps(seed), None)
    for body, length in binary_seeds():
        parse(body, length)
    with pytest.raises(InferenceServerError):
        parse(orjson.dumps(json_seeds()[-1]), None)


# -- mutated ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_mutated_requests(seed):
    rng = random.Random(seed)
    trees, binaries = json_seeds(), binary_seeds()
    others = [orjson.dumps(t) for t in trees]
    for _ in range(1500):
        roll = rng.random()
        if roll < 0.4:
            tree = rng.choice(trees)
            for _ in range(rng.randint(1, 3)):
                tree = mutate_json(tree, rng)
            checked(parse, json.dumps(tree).encode(), None)  # json: integers of any size
        elif roll < 0.7:
            checked(parse, mutate_bytes(rng.choice(others), rng, others), None)
        else:
            body, length = rng.choice(binaries)
            if rng.random() < 0.5:
                body = mutate_bytes(body, rng)
            else:
                length = rng.choice([length, b"-1", b"0", b"1" * 30, b"", b" 5", b"0x10", str(len(body) + 1).encode(),
                                     mutate_bytes(length, rng)])
            checked(parse, body, length)


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"GZIP ", b"br", b"gzip, gzip", b""])
def test_mutated_compressed_bodies(encoding):
    rng = random.Random(encoding)
    plain = orjson.dumps(json_seeds()[0])
    packed = [gzip.compress(plain), zlib.compress(plain), gzip.compress(bytes(4 * LIMIT))]
    for _ in range(500):
        data = mutate_bytes(rng.choice(packed), rng)
        try:
            out = bodies.decompress(data, encoding, LIMIT)
        except EXPECTED:
            continue
        assert len(out) <= LIMIT


# -- built by Hypothesis ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)
shapes = st.lists(st.integers(-2, 2**63), max_size=4) | json_values
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", ""]) | json_values,
     "datatype": st.sampled_from(sorted(DATATYPES)) | json_values,
     "shape": shapes},
    optional={"data": json_values, "parameters": st.dictionaries(
        st.sampled_from(["binary_data_size", "binary_data", "shared_memory_region", "classification"]),
        json_values)})
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=4) | json_values},
    optional={"outputs": st.lists(tensors, max_size=3) | json_values, "id": json_values,
              "parameters": st.dictionaries(st.sampled_from(["timeout", "binary_data_output"]), json_values)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, tail=st.binary(max_size=64), split_at=st.none() | st.integers(-5, 400))
def test_built_requests(request, tail, split_at):
    head = json.dumps(request).encode()
    length = None if split_at is None else str(split_at if split_at < 0 else min(split_at, len(head))).encode()
    checked(parse, head + tail, length)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_json_bodies_of_other_endpoints(data):
    checked(dispatch._json_body, data)


segments = st.sampled_from(["v2", "models", "versions", "infer", "ready", "stats", "config", "repository", "load",
                            "unload", "index", "systemsharedmemory", "cudasharedmemory", "region", "register",
                            "unregister", "status", "health", "live", "trace", "setting", "logging", "", "..",
                            "%00", "\0", "\udcff", "x" * 300]) | st.text(max_size=6)


@settings(max_examples=500, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]),
       parts=st.lists(segments, max_size=7), slashes=st.sampled_from(["/", "//", ""]))
def test_paths(method, parts, slashes):
    path = slashes + "/".join(parts)
    try:
        route = routes.match(method, path)
    except HttpError as e:
        assert e.status in (404, 405)
        return
    assert route.endpoint
