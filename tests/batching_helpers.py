"""The batching tests' model repository: batched versions of small models, and a
model whose answer fails for some inputs (to fail one request inside a batch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import make_models

ROOT = Path(__file__).resolve().parent.parent
TABLE = np.arange(10, dtype=np.float32) * 1.5  # what ``lookup`` indexes into

BATCHING = "dynamic_batching { max_queue_delay_microseconds: 50000 }\n"


def lookup_model():
    """y = TABLE[i] for INT64 indices [batch, 1]: an index outside 0..9 makes
    ONNX Runtime fail the run, and with it any batch the request is part of."""
    table = numpy_helper.from_array(TABLE, "table")
    return make_models._model(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [table],
    )


def wide_identity():
    """y = x on FP32 [batch, width], width dynamic: requests of different widths
    must never share a batch."""
    return make_models._model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])],
    )


def build_batching_repository(repo: Path) -> Path:
    """``mlp`` (the example, batched), ``wide``, ``lookup`` and ``identity_BF16``, all with
    dynamic batching."""
    repo.mkdir(parents=True)
    shutil.copytree(ROOT / "examples" / "models" / "mlp", repo / "mlp")
    (repo / "mlp" / "config.pbtxt").write_text("max_batch_size: 8\n" + BATCHING)
    make_models.write(wide_identity(), repo, "wide")
    (repo / "wide" / "config.pbtxt").write_text("max_batch_size: 8\n" + BATCHING)
    make_models.write(lookup_model(), repo, "lookup")
    (repo / "lookup" / "config.pbtxt").write_text("max_batch_size: 8\n" + BATCHING)
    make_models.write(make_models.identity("BF16"), repo, "identity_BF16")
    (repo / "identity_BF16" / "config.pbtxt").write_text("max_batch_size: 8\n" + BATCHING)
    return repo
