"""Model.run_into, the native path: outputs bound into the response by ONNX
Runtime (IOBinding) or copied there once, always equal to a plain session.run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import make_models
from icow import _wire
from icow._proto import inference_pb2 as pb
from icow.protocol.datatypes import BF16_BITS, DATATYPES
from icow.repository.repository import Repository


class Spy:
    """A ResponseBuffer that records how each output got there."""

    def __init__(self, *args) -> None:
        self.buffer = _wire.ResponseBuffer(*args)
        self.bound: list[int] = []
        self.copied: list[int] = []

    def address(self, i: int) -> int:
        return self.buffer.address(i)

    def write(self, i: int, data) -> None:
        self.copied.append(i)
        self.buffer.write(i, data)

    def mark_written(self, i: int) -> None:
        self.bound.append(i)
        self.buffer.mark_written(i)


@pytest.fixture(scope="module")
def repository(test_repo: Path, tmp_path_factory) -> Repository:
    extra = tmp_path_factory.mktemp("binding")
    make_models.write(make_models.identity("FP32"), extra, "unbatched")
    (extra / "unbatched" / "config.pbtxt").write_text("max_batch_size: 0\n")
    for name in ("mlp", "mixed", "dtypes", "strings", "identity_FP16", "identity_BF16"):
        (extra / name).symlink_to(test_repo / name, target_is_directory=True)
    repo = Repository(extra)
    repo.load_all()
    return repo


def run_both(model, inputs, requested=()):
    spies = []

    def allocate(specs):
        spies.append(Spy(model.name, str(model.version), "r", specs))
        return spies[-1]

    bound = model.run_into(inputs, requested, allocate)
    response = pb.ModelInferResponse.FromString(bound.buffer.finish())
    plain = model.run(inputs, requested)
    assert [o.name for o in response.outputs] == list(plain)
    for out, raw, (name, expected) in zip(response.outputs, response.raw_output_contents, plain.items()):
        assert list(out.shape) == list(expected.shape) and out.datatype == DATATYPES[out.datatype].name
        got = np.frombuffer(raw, DATATYPES[out.datatype].numpy).reshape(out.shape) if out.datatype != "BYTES" \
            else np.array(_wire.unpack_bytes(raw, expected.size), dtype=object).reshape(out.shape)
        expected = np.vectorize(str.encode, otypes=[object])(expected) if expected.dtype == object else expected
        np.testing.assert_array_equal(got, expected, err_msg=name)
    return bound


def test_mlp_outputs_are_written_in_place(repository):
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    spy = run_both(repository.get("mlp"), {"input": x})
    assert spy.bound == [0] and spy.copied == []
    assert repository.get("mlp").instances[0].binder.fast  # onnxruntime's C binding is where ort_binding expects it


def test_several_outputs_in_place_and_filtered(repository):
    rng = np.random.default_rng(1)
    inputs = {"a": rng.standard_normal((3, 4)).astype(np.float32),
              "b": rng.integers(-9, 9, (3, 4)).astype(np.int64), "c": rng.integers(0, 2, (3, 4)).astype(bool)}
    assert run_both(repository.get("mixed"), inputs).bound == [0, 1, 2, 3]
    assert run_both(repository.get("mixed"), inputs, ["a_half", "c_not"]).bound == [0, 1]


def test_inputs_read_in_place_from_the_request(repository):
    """Unaligned views into request bytes are read by ONNX Runtime as they lie."""
    data = b"\0" + np.arange(6, dtype=np.float16).tobytes()
    x = np.frombuffer(memoryview(data)[1:], np.float16).reshape(2, 3)
    assert run_both(repository.get("identity_FP16"), {"x": x}).bound == [0]


def test_bf16_bound_and_plain_runs_agree(repository):
    """BF16 bits bound in place (IOBinding) and run plainly (OrtValues: numpy has no
    bfloat16) give the same bits: NaN payloads and subnormals included."""
    x = np.array([[0x7FC1, 0xFFA5, 0x0001], [0x807F, 0x8000, 0x3F80]], np.uint16).view(BF16_BITS)
    assert run_both(repository.get("identity_BF16"), {"x": x}).bound == [0]
    np.testing.assert_array_equal(repository.get("identity_BF16").run({"x": x})["y"].view(np.uint16),
                                  x.view(np.uint16))


def test_strings_are_copied(repository):
    spy = run_both(repository.get("strings"), {"text": np.array([b"ab", b"c"], dtype=object)})
    assert spy.copied == [0] and spy.bound == []


def test_zero_size_tensor(repository):
    spy = run_both(repository.get("unbatched"), {"x": np.zeros((0, 3), np.float32)})
    assert spy.copied == [0]


def test_wrong_declared_output_shape_falls_back_to_a_copy(tmp_path):
    """When the graph's declared output dims are wrong, the bound run fails and a
    plain run answers, copied; the model stops binding its outputs."""
    make_models.write(make_models.identity("FP32"), tmp_path, "liar")
    repo = Repository(tmp_path)
    repo.load_all()
    liar = repo.get("liar")
    liar.output_dims["y"] = ["batch", 7]  # what a graph with a wrong output shape declares
    spies = []
    response = liar.run_into({"x": np.ones((2, 3), np.float32)}, (),
                             lambda specs: spies.append(Spy("liar", "1", "", specs)) or spies[-1])
    out = pb.ModelInferResponse.FromString(response.buffer.finish())
    assert len(spies) == 2  # sized for the declared shape, then for the real one
    assert list(out.outputs[0].shape) == [2, 3] and spies[-1].copied == [0] and spies[-1].bound == []
    assert np.frombuffer(out.raw_output_contents[0], np.float32).tolist() == [1.0] * 6
    assert liar._output_shapes({"x": np.ones((2, 3), np.float32)}, ["y"]) is None  # no more binding
