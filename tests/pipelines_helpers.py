"""What the pipeline tests share (test_pipelines_ortx.py, test_pipelines_ortx_ensemble.py): the
example repository as make_pipelines.py writes it, sample inputs with their expected labels,
and images encoded in the test with onnxruntime-extensions' own encoder (no image library)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import make_pipelines
from icow.runtime.custom_ops import import_extensions

# imported so as not to leave PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python to every server the tests start
onnxruntime_extensions = import_extensions()

# Sentences and the two labels the text pipeline ranks first for each.
SENTENCES = {
    "I loved this movie, it was GREAT!": ["positive", "neutral"],
    "The food was terrible and the service awful.": ["negative", "neutral"],
    "We went to the shop today.": ["neutral", "negative"],  # no word with a sentiment
    "Not bad... but boring; the worst film.": ["negative", "neutral"],
}
COLOURS_RGB = {"red": (220, 30, 20), "green": (10, 200, 40), "blue": (30, 40, 230)}


def build_repository(repo: Path) -> Path:
    make_pipelines.build_pipelines(repo)
    return repo


def texts() -> np.ndarray:
    """The sample sentences as a BYTES tensor (UTF-8 text)."""
    return np.array([s.encode() for s in SENTENCES], dtype=object)


def expected_labels() -> list[list[str]]:
    return list(SENTENCES.values())


@cache
def _encoder(fmt: str) -> ort.InferenceSession:
    domain = "com.microsoft.extensions"
    graph = helper.make_graph(
        [helper.make_node("EncodeImage", ["bgr"], ["encoded"], domain=domain, format=fmt)], "encode",
        [helper.make_tensor_value_info("bgr", TensorProto.UINT8, [None, None, 3])],
        [helper.make_tensor_value_info("encoded", TensorProto.UINT8, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options)


def encoded_image(rgb: tuple[int, int, int], fmt: str = "jpg", height: int = 48, width: int = 64) -> bytes:
    """A ``fmt`` (jpg, png) file of one colour with a darker square in a corner (so it is not flat)."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[...] = rgb[::-1]  # the encoder takes BGR
    image[: height // 4, : width // 4] //= 2
    return _encoder(fmt).run(None, {"bgr": image})[0].tobytes()
