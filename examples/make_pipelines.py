"""Build the pipeline examples (examples/pipelines): pre- and post-processing as ONNX graphs
around a model, wired as Triton ensembles, so that a client sends raw text or a JPEG file and
gets labels. Every model is written from code with fixed weights and a vocabulary made here
(nothing is downloaded); running this again gives the same files byte for byte. Needs the
``onnx`` package; serving needs onnxruntime-extensions (pip install icow[extensions]).

    python examples/make_pipelines.py [DEST]      # default: examples/pipelines

text_sentiment:  TEXT (BYTES [n])
    -> text_tokenizer   lower-case, split into words, look them up (onnxruntime-extensions'
                        StringLower, StringRegexReplace, StringSplit; ONNX-ML LabelEncoder)
    -> text_classifier  embedding bag + linear layer: keyword sentiment
    -> text_topk        softmax, TopK, label lookup -> LABELS (BYTES [n, 2]), SCORES (FP32 [n, 2])
image_colour:    IMAGE (UINT8 [bytes]: a JPEG or PNG file as it is)
    -> image_preprocess decode (onnxruntime-extensions' DecodeImage), to CHW, resize to 32x32
    -> image_cnn        a small CNN that scores the dominant colour
    -> image_label      softmax, ArgMax, label lookup -> LABEL (BYTES [1]), SCORE (FP32 [1])

An encoded image travels as UINT8, not BYTES: ONNX Runtime's string tensors are text, and
DecodeImage takes the file's bytes as a uint8 vector (as Triton's image ensembles do).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # what onnxruntime 1.17+ accepts
CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions' string operators
EXTENSIONS = "com.microsoft.extensions"  # onnxruntime-extensions' image decoder
ML = "ai.onnx.ml"
CUSTOM_OPS = 'parameters { key: "custom_ops" value: { string_value: "onnxruntime_extensions" } }\n'

# -- the text pipeline --------------------------------------------------------------

SENTIMENTS = ["negative", "neutral", "positive"]
POSITIVE = ["good", "great", "excellent", "love", "loved", "wonderful", "happy", "best", "fantastic", "nice",
            "amazing", "enjoyed"]
NEGATIVE = ["bad", "terrible", "awful", "hate", "hated", "worst", "poor", "horrible", "sad", "boring", "broken",
            "disappointing"]
OTHER = ["the", "a", "an", "is", "was", "it", "this", "that", "movie", "film", "food", "service", "day", "i",
         "and", "very", "really", "so", "of", "to", "weather", "today", "book", "product", "we", "my"]
PAD, UNK = 0, 1  # token ids: padding of a short sentence, a word not in the vocabulary
VOCABULARY = ["[PAD]", "[UNK]", *POSITIVE, *NEGATIVE, *OTHER]
TOP_K = 2

# -- the image pipeline -------------------------------------------------------------

COLOURS = ["red", "green", "blue"]
SIDE = 32  # the CNN's input is 3 x SIDE x SIDE


def _model(nodes, inputs, outputs, initializers=(), domains: dict[str, int] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "icow", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, v) for d, v in (domains or {}).items())]
    model = helper.make_model(graph, producer_name="icow", opset_imports=opsets)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _strings(name: str, values: list[str]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.STRING, [len(values)], [v.encode() for v in values])


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def text_tokenizer() -> onnx.ModelProto:
    """TEXT [n] -> INPUT_IDS [n, longest]: words (lower case, split at anything but a letter,
    digit or apostrophe) as vocabulary ids, padded with PAD."""
    nodes = [
        helper.make_node("StringLower", ["TEXT"], ["lower"], domain=CONTRIB),
        helper.make_node("StringRegexReplace", ["lower", "separators", "space"], ["spaced"], domain=CONTRIB),
        helper.make_node("StringSplit", ["spaced", "space", "skip_empty"], ["where", "words", "shape"],
                         domain=CONTRIB),
        helper.make_node("LabelEncoder", ["words"], ["ids"], domain=ML, keys_strings=VOCABULARY[2:],
                         values_int64s=list(range(2, len(VOCABULARY))), default_int64=UNK),
        helper.make_node("ConstantOfShape", ["shape"], ["padding"],
                         value=helper.make_tensor("pad", TensorProto.INT64, [1], [PAD])),
        helper.make_node("ScatterND", ["padding", "where", "ids"], ["INPUT_IDS"]),
    ]
    initializers = [
        helper.make_tensor("separators", TensorProto.STRING, [], [b"[^a-z0-9']+"]),
        helper.make_tensor("space", TensorProto.STRING, [], [b" "]),
        helper.make_tensor("skip_empty", TensorProto.BOOL, [], [True]),
    ]
    return _model(nodes, [_tensor("TEXT", TensorProto.STRING, ["n"])],
                  [_tensor("INPUT_IDS", TensorProto.INT64, ["n", "words"])], initializers, {CONTRIB: 1, ML: 2})


def text_classifier() -> onnx.ModelProto:
    """INPUT_IDS [n, words] -> LOGITS [n, 3]: an embedding bag (the sum of the words'
    embeddings: a positive and a negative feature) and a linear layer whose bias makes
    "neutral" win where no word carries a sentiment."""
    embedding = np.zeros((len(VOCABULARY), 2), dtype=np.float32)
    for word in POSITIVE:
        embedding[VOCABULARY.index(word), 0] = 1.0
    for word in NEGATIVE:
        embedding[VOCABULARY.index(word), 1] = 1.0
    weights = np.array([[-1.0, 0.0, 2.0],    # positive words: for "positive", against "negative"
                        [2.0, 0.0, -1.0]],   # negative words: the other way round
                       dtype=np.float32)
    bias = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "INPUT_IDS"], ["vectors"]),
        helper.make_node("ReduceSum", ["vectors", "word_axis"], ["bag"], keepdims=0),
        helper.make_node("MatMul", ["bag", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["LOGITS"]),
    ]
    initializers = [_const("embedding", embedding), _const("word_axis", np.array([1], dtype=np.int64)),
                    _const("weights", weights), _const("bias", bias)]
    return _model(nodes, [_tensor("INPUT_IDS", TensorProto.INT64, ["n", "words"])],
                  [_tensor("LOGITS", TensorProto.FLOAT, ["n", len(SENTIMENTS)])], initializers)


def top_labels(classes: list[str], k: int) -> onnx.ModelProto:
    """LOGITS [n, classes] -> LABELS [n, k] (BYTES), SCORES [n, k]: the k most likely
    classes by softmax, most likely first."""
    nodes = [
        helper.make_node("Softmax", ["LOGITS"], ["probabilities"], axis=-1),
        helper.make_node("TopK", ["probabilities", "k"], ["SCORES", "indices"], axis=-1),
        helper.make_node("Gather", ["labels", "indices"], ["LABELS"]),
    ]
    return _model(nodes, [_tensor("LOGITS", TensorProto.FLOAT, ["n", len(classes)])],
                  [_tensor("LABELS", TensorProto.STRING, ["n", k]), _tensor("SCORES", TensorProto.FLOAT, ["n", k])],
                  [_strings("labels", classes), _const("k", np.array([k], dtype=np.int64))])


def image_preprocess() -> onnx.ModelProto:
    """IMAGE [bytes] (a JPEG or PNG file) -> PIXELS [1, 3, SIDE, SIDE]: decoded as RGB,
    channels first, resized (bilinear), scaled to [0, 1]. Bytes that are not a whole JPEG or
    PNG file are refused first (_image_guard)."""
    nodes = [
        *_image_guard("IMAGE", "checked"),
        helper.make_node("DecodeImage", ["checked"], ["hwc"], domain=EXTENSIONS, color_space="rgb"),
        helper.make_node("Cast", ["hwc"], ["hwc_float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["hwc_float"], ["chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "batch_axis"], ["nchw"]),
        helper.make_node("Resize", ["nchw", "", "", "sizes"], ["resized"], mode="linear"),
        helper.make_node("Div", ["resized", "full_scale"], ["PIXELS"]),
    ]
    initializers = [_const("batch_axis", np.array([0], dtype=np.int64)),
                    _const("sizes", np.array([1, 3, SIDE, SIDE], dtype=np.int64)),
                    _const("full_scale", np.array(255.0, dtype=np.float32)),
                    *_image_guard_constants()]
    return _model(nodes, [_tensor("IMAGE", TensorProto.UINT8, ["bytes"])],
                  [_tensor("PIXELS", TensorProto.FLOAT, [1, 3, SIDE, SIDE])], initializers, {EXTENSIONS: 1})


# onnxruntime-extensions 0.15's DecodeImage leaves libjpeg's fatal errors to libjpeg, which
# ends the process (microsoft/onnxruntime-extensions#1094): bytes that are not a JPEG, or a
# JPEG cut short, would stop the server. The guard passes on only bytes that begin and end as
# a JPEG file does (SOI marker ... EOI marker) or begin with PNG's signature; anything else
# becomes an empty vector, which DecodeImage refuses as an error of the request ("Invalid
# image data"). A JPEG crafted to pass the markers with a broken header is still fatal.
JPEG_START, JPEG_END = [0xFF, 0xD8, 0xFF], [0xFF, 0xD9]
PNG_START = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]


def _image_guard_constants() -> list[onnx.TensorProto]:
    return [_const("pad8", np.zeros(8, dtype=np.uint8)),
            _const("jpeg_start", np.array(JPEG_START, dtype=np.int32)),
            _const("jpeg_end", np.array(JPEG_END, dtype=np.int32)),
            _const("png_start", np.array(PNG_START, dtype=np.int32)),
            _const("zero_i32", np.array(0, dtype=np.int32)),
            *(_const(f"at{i}".replace("-", "_minus"), np.array([i], dtype=np.int64)) for i in (8, 11, 16, -10, -8))]


def _matches(name: str, data: str, start: str, end: str, pattern: str) -> list[onnx.NodeProto]:
    """``name`` = data[start:end] equals ``pattern`` (int32 vectors; a sum of differences)."""
    return [
        helper.make_node("Slice", [data, start, end], [f"{name}_bytes"]),
        helper.make_node("Sub", [f"{name}_bytes", pattern], [f"{name}_diff"]),
        helper.make_node("Abs", [f"{name}_diff"], [f"{name}_abs"]),
        helper.make_node("ReduceSum", [f"{name}_abs"], [f"{name}_sum"], keepdims=0),
        helper.make_node("Equal", [f"{name}_sum", "zero_i32"], [name]),
    ]


def _image_guard(image: str, checked: str) -> list[onnx.NodeProto]:
    """``checked``: ``image`` if it looks like a whole JPEG or PNG file, else an empty vector.
    The image is padded with 8 zero bytes at both ends so that every slice has its length."""
    keep = helper.make_graph([helper.make_node("Identity", [image], ["kept"])], "keep", [],
                             [_tensor("kept", TensorProto.UINT8, ["bytes"])])
    refuse = helper.make_graph(
        [helper.make_node("Constant", [], ["refused"],
                          value=helper.make_tensor("nothing", TensorProto.UINT8, [0], []))],
        "refuse", [], [_tensor("refused", TensorProto.UINT8, ["bytes"])])
    return [
        helper.make_node("Concat", ["pad8", image, "pad8"], ["padded_u8"], axis=0),
        helper.make_node("Cast", ["padded_u8"], ["padded"], to=TensorProto.INT32),
        *_matches("is_jpeg_start", "padded", "at8", "at11", "jpeg_start"),
        *_matches("is_jpeg_end", "padded", "at_minus10", "at_minus8", "jpeg_end"),
        *_matches("is_png", "padded", "at8", "at16", "png_start"),
        helper.make_node("And", ["is_jpeg_start", "is_jpeg_end"], ["is_jpeg"]),
        helper.make_node("Or", ["is_jpeg", "is_png"], ["is_image"]),
        helper.make_node("If", ["is_image"], [checked], then_branch=keep, else_branch=refuse),
    ]


def image_cnn() -> onnx.ModelProto:
    """PIXELS [1, 3, SIDE, SIDE] -> LOGITS [1, 3]: a 3x3 depthwise blur, a 1x1 convolution
    that sets each colour against the other two, ReLU, max pooling, global average: how
    much each colour dominates the image."""
    blur = np.full((3, 1, 3, 3), 1.0 / 9.0, dtype=np.float32)
    contrast = (3.0 * np.eye(3, dtype=np.float32) - 1.0).reshape(3, 3, 1, 1)  # 2 * own - each other
    nodes = [
        helper.make_node("Conv", ["PIXELS", "blur"], ["smooth"], group=3, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["smooth", "contrast"], ["excess"]),
        helper.make_node("Relu", ["excess"], ["active"]),
        helper.make_node("MaxPool", ["active"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pooled"], ["averaged"]),
        helper.make_node("Flatten", ["averaged"], ["LOGITS"]),
    ]
    return _model(nodes, [_tensor("PIXELS", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
                  [_tensor("LOGITS", TensorProto.FLOAT, [1, len(COLOURS)])],
                  [_const("blur", blur), _const("contrast", contrast)])


def best_label(classes: list[str]) -> onnx.ModelProto:
    """LOGITS [n, classes] -> LABEL [n] (BYTES), SCORE [n]: the most likely class, its softmax."""
    nodes = [
        helper.make_node("Softmax", ["LOGITS"], ["probabilities"], axis=-1),
        helper.make_node("ArgMax", ["probabilities"], ["index"], axis=-1, keepdims=0),
        helper.make_node("ReduceMax", ["probabilities"], ["SCORE"], axes=[-1], keepdims=0),
        helper.make_node("Gather", ["labels", "index"], ["LABEL"]),
    ]
    return _model(nodes, [_tensor("LOGITS", TensorProto.FLOAT, ["n", len(classes)])],
                  [_tensor("LABEL", TensorProto.STRING, ["n"]), _tensor("SCORE", TensorProto.FLOAT, ["n"])],
                  [_strings("labels", classes)])


# -- configs: Triton's format; the ensembles wire the steps ---------------------------


def _io(kind: str, name: str, datatype: str, dims: list[int]) -> str:
    return f'{kind} {{ name: "{name}" data_type: TYPE_{datatype} dims: {dims} }}\n'


def _config(name: str, inputs: list[tuple], outputs: list[tuple], extra: str = "") -> str:
    head = f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
    return head + "".join(_io("input", *i) for i in inputs) + "".join(_io("output", *o) for o in outputs) + extra


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    """One ensemble step; maps are {the model's tensor: the ensemble's tensor}."""
    maps = "".join(f'    input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
    maps += "".join(f'    output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
    return f'  step {{\n    model_name: "{model}"\n    model_version: -1\n{maps}  }}\n'


def _ensemble(name: str, inputs: list[tuple], outputs: list[tuple], steps: list[str]) -> str:
    head = f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
    body = "".join(_io("input", *i) for i in inputs) + "".join(_io("output", *o) for o in outputs)
    return head + body + "ensemble_scheduling {\n" + "".join(steps) + "}\n"


CONFIGS = {
    "text_tokenizer": _config("text_tokenizer", [("TEXT", "STRING", [-1])], [("INPUT_IDS", "INT64", [-1, -1])],
                              CUSTOM_OPS),
    "text_classifier": _config("text_classifier", [("INPUT_IDS", "INT64", [-1, -1])],
                               [("LOGITS", "FP32", [-1, len(SENTIMENTS)])]),
    "text_topk": _config("text_topk", [("LOGITS", "FP32", [-1, len(SENTIMENTS)])],
                         [("LABELS", "STRING", [-1, TOP_K]), ("SCORES", "FP32", [-1, TOP_K])]),
    "text_sentiment": _ensemble(
        "text_sentiment", [("TEXT", "STRING", [-1])],
        [("LABELS", "STRING", [-1, TOP_K]), ("SCORES", "FP32", [-1, TOP_K])],
        [_step("text_tokenizer", {"TEXT": "TEXT"}, {"INPUT_IDS": "input_ids"}),
         _step("text_classifier", {"INPUT_IDS": "input_ids"}, {"LOGITS": "logits"}),
         _step("text_topk", {"LOGITS": "logits"}, {"LABELS": "LABELS", "SCORES": "SCORES"})]),
    "image_preprocess": _config("image_preprocess", [("IMAGE", "UINT8", [-1])],
                                [("PIXELS", "FP32", [1, 3, SIDE, SIDE])], CUSTOM_OPS),
    "image_cnn": _config("image_cnn", [("PIXELS", "FP32", [1, 3, SIDE, SIDE])],
                         [("LOGITS", "FP32", [1, len(COLOURS)])]),
    "image_label": _config("image_label", [("LOGITS", "FP32", [1, len(COLOURS)])],
                           [("LABEL", "STRING", [1]), ("SCORE", "FP32", [1])]),
    "image_colour": _ensemble(
        "image_colour", [("IMAGE", "UINT8", [-1])], [("LABEL", "STRING", [1]), ("SCORE", "FP32", [1])],
        [_step("image_preprocess", {"IMAGE": "IMAGE"}, {"PIXELS": "pixels"}),
         _step("image_cnn", {"PIXELS": "pixels"}, {"LOGITS": "logits"}),
         _step("image_label", {"LOGITS": "logits"}, {"LABEL": "LABEL", "SCORE": "SCORE"})]),
}
ENSEMBLES = ("text_sentiment", "image_colour")  # their steps, in order: STEPS
STEPS = {"text_sentiment": ("text_tokenizer", "text_classifier", "text_topk"),
         "image_colour": ("image_preprocess", "image_cnn", "image_label")}


def models() -> dict[str, onnx.ModelProto]:
    return {"text_tokenizer": text_tokenizer(), "text_classifier": text_classifier(),
            "text_topk": top_labels(SENTIMENTS, TOP_K), "image_preprocess": image_preprocess(),
            "image_cnn": image_cnn(), "image_label": best_label(COLOURS)}


def build_pipelines(repo: Path) -> None:
    """Write the pipeline repository into ``repo``: the composing models, and each ensemble
    with its empty version folder (Triton's layout; .gitkeep keeps it in git)."""
    for name, model in models().items():
        path = repo / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString())
    for name in ENSEMBLES:
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "1" / ".gitkeep").write_bytes(b"")
    for name, text in CONFIGS.items():
        (repo / name / "config.pbtxt").write_text(text)


if __name__ == "__main__":
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "pipelines"
    build_pipelines(dest)
    print(f"wrote the pipeline examples to {dest}")
