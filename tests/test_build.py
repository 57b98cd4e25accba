"""What the build makes: the extension, the generated stubs (wire-compatible
with Triton's, loadable beside tritonclient's), the example models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

import make_models
from icow import _wire
from icow._proto import inference_pb2 as pb
from icow._proto import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parent.parent


def test_wire_bytes_round_trip():
    items = [b"", b"a", "\u00fcber", b"\x00\xff" * 1000]
    packed = _wire.pack_bytes(items)
    assert packed[:4] == b"\x00\x00\x00\x00" and packed[4:9] == b"\x01\x00\x00\x00a"
    assert _wire.unpack_bytes(packed, 4) == [b"", b"a", "\u00fcber".encode(), b"\x00\xff" * 1000]
    assert _wire.unpack_bytes(memoryview(packed), 4)[3] == b"\x00\xff" * 1000


@pytest.mark.parametrize("data, count, message", [
    (b"\x01\x00", 1, "1 BYTES elements need at least 4 bytes, got 2"),  # refused before any list is made
    (b"\x02\x00\x00\x00ab\x00\x00", 2, "inside the length prefix of element 1"),
    (b"\x05\x00\x00\x00abc", 1, "declares 5 bytes but only 3 remain"),
    (b"\x01\x00\x00\x00ab", 1, "1 bytes after the last of 1 elements"),
    (b"", -1, "negative"),
])
def test_wire_bytes_rejects(data, count, message):
    with pytest.raises(ValueError, match=message):
        _wire.unpack_bytes(data, count)


def test_wire_bytes_rejects_other_types():
    with pytest.raises(TypeError, match="bytes or str, got int"):
        _wire.pack_bytes([b"a", 3])


def _fields(descriptor) -> dict[str, tuple]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}


def _messages(file_descriptor):
    def walk(message):
        yield message
        for nested in message.nested_types:
            yield from walk(nested)
    for message in file_descriptor.message_types_by_name.values():
        yield from walk(message)


# icow's additions to Triton's messages (proto/inference.proto says why): field numbers
# from 1000 on, which clients built from Triton's .proto skip as unknown fields.
ICOW_ADDITIONS = {"inference.ModelMetadataResponse": {"version_labels"}}


def _additions(file_descriptor) -> tuple[dict[str, dict], set[str]]:
    """The added fields by message, and the message types only they use (map entries)."""
    fields = {name: {f: file_descriptor.pool.FindMessageTypeByName(name).fields_by_name[f] for f in added}
              for name, added in ICOW_ADDITIONS.items() if name.split(".")[0] == file_descriptor.package}
    types = {f.message_type.full_name for added in fields.values() for f in added.values() if f.message_type}
    return fields, types


@pytest.mark.parametrize("ours, theirs, exact", [
    (pb.DESCRIPTOR, triton_service.DESCRIPTOR, True),
    (mc.DESCRIPTOR, triton_config.DESCRIPTOR, False),
])
def test_wire_compatible_with_triton(ours, theirs, exact):
    """Every message and field of ours has the number and type of Triton's; the
    service messages are complete (but for icow's few additions, numbered from 1000),
    the config messages a subset."""
    pool = theirs.pool
    added, added_types = _additions(ours)
    assert all(f.number >= 1000 for fields in added.values() for f in fields.values())
    for message in _messages(ours):
        if message.full_name in added_types:
            continue
        their = pool.FindMessageTypeByName(message.full_name)
        our_fields, their_fields = _fields(message), _fields(their)
        for name in added.get(message.full_name, ()):
            del our_fields[name]
        if exact:
            assert our_fields == their_fields, message.full_name
        else:
            for name, spec in our_fields.items():
                assert their_fields[name] == spec, f"{message.full_name}.{name}"
    if exact:
        ours_service = ours.services_by_name["GRPCInferenceService"]
        theirs_service = theirs.services_by_name["GRPCInferenceService"]
        assert [(m.name, m.input_type.full_name, m.output_type.full_name) for m in ours_service.methods] == \
            [(m.name, m.input_type.full_name, m.output_type.full_name) for m in theirs_service.methods]


def test_stubs_load_beside_tritonclient_in_a_fresh_process():
    code = ("import tritonclient.grpc, icow._proto.inference_pb2 as a, tritonclient.grpc.service_pb2 as b; "
            "m = a.ModelInferRequest(model_name='m', id='x'); "
            "assert b.ModelInferRequest.FromString(m.SerializeToString()).id == 'x'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_example_models_are_what_the_script_makes(tmp_path):
    make_models.build_examples(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped_root = ROOT / "examples" / "models"
    shipped = sorted(p.relative_to(shipped_root) for p in shipped_root.rglob("*") if p.is_file())
    assert made == shipped
    for path in made:
        assert (tmp_path / path).read_bytes() == (shipped_root / path).read_bytes(), path
