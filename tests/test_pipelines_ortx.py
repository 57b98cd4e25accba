"""Pre- and post-processing inside the server (issue 22, part 4): models with
onnxruntime-extensions' custom operators load when their config asks for the library
(runtime/custom_ops.py), and the two pipeline examples (examples/make_pipelines.py) give the
expected labels for raw text and for JPEG/PNG files, each composing model called over the
real server on both data planes, chained by the client (icow's client, tritonclient gRPC and
HTTP, and the example client scripts). The same pipelines as one ensemble request are in
test_pipelines_ortx_ensemble.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from google.protobuf import text_format

import icow
import make_pipelines
from helpers import expect_error
from icow._proto import model_config_pb2 as mc
from icow.runtime import config_fields, custom_ops
from icow.runtime.config import ConfigError
from pipelines_helpers import COLOURS_RGB, build_repository, encoded_image, expected_labels, texts

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = make_pipelines.CONFIGS["text_tokenizer"]
WITHOUT_PARAMETER = TOKENIZER.replace(make_pipelines.CUSTOM_OPS, "")

# -- the table: which configs ask for which library ------------------------------------


def _parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("text, wanted", [
    ("", []),
    (make_pipelines.CUSTOM_OPS, ["onnxruntime_extensions"]),
    ('parameters { key: "custom_ops" value: { string_value: " onnxruntime_extensions, " } }',
     ["onnxruntime_extensions"]),
    ('model_operations { op_library_filename: "/opt/tritonserver/lib/libortextensions.so" }',
     ["onnxruntime_extensions"]),
    ('model_operations { op_library_filename: "C:\\\\ortx\\\\ortextensions.dll" }', ["onnxruntime_extensions"]),
    ('model_operations { op_library_filename: "_extensions_pydll.cpython-311-x86_64-linux-gnu.so" } '
     + make_pipelines.CUSTOM_OPS, ["onnxruntime_extensions"]),
])
def test_the_libraries_a_config_asks_for(text, wanted, caplog):
    config = _parse(text)
    assert custom_ops.names(config) == wanted
    with caplog.at_level(logging.WARNING, logger=config_fields.__name__):
        config_fields.check(config, "m")  # acted on: no refusal, nothing logged as ignored
    assert caplog.records == []


@pytest.mark.parametrize("text, words", [
    ('parameters { key: "custom_ops" value: { string_value: "sentencepiece" } }',
     "config parameter 'custom_ops' names the library 'sentencepiece': icow knows 'onnxruntime_extensions' only"),
    ('model_operations { op_library_filename: "/models/m/libmyops.so" }',
     "config field 'model_operations.op_library_filename' is '/models/m/libmyops.so': icow loads only "
     "onnxruntime-extensions' library"),
    ('model_operations { op_library_filename: "/tmp/libortextensions_evil/libmyops.so" }',
     "'/tmp/libortextensions_evil/libmyops.so': icow loads only"),
])
def test_a_library_icow_does_not_know_is_refused_at_the_config_check(text, words):
    with pytest.raises(ConfigError) as refused:
        config_fields.check(_parse(text), "m")
    assert words in str(refused.value)


# -- loading, on the real server ------------------------------------------------------

LOAD_CASES = {  # model name: (config, None when it loads, else words of its reason)
    "parameter": (TOKENIZER, None),
    "triton_form": (WITHOUT_PARAMETER + 'model_operations { op_library_filename: '
                    '"/opt/tritonserver/backends/onnxruntime/libortextensions.so" }\n', None),
    "not_asked": (WITHOUT_PARAMETER, "StringLower(-1) is not a registered function/op"),
    "unknown_library": (WITHOUT_PARAMETER + 'parameters { key: "custom_ops" value: { string_value: "mylib" } }\n',
                        "names the library 'mylib': icow knows 'onnxruntime_extensions' only"),
    "other_file": (WITHOUT_PARAMETER + 'model_operations { op_library_filename: "libmyops.so" }\n',
                   "icow loads only onnxruntime-extensions' library"),
}


def _load_repo(root: Path) -> Path:
    repo = root / "models"
    tokenizer = make_pipelines.text_tokenizer().SerializeToString()
    for name, (config, _) in LOAD_CASES.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(tokenizer)
        (repo / name / "config.pbtxt").write_text(config.replace('"text_tokenizer"', f'"{name}"'))
    return repo


def test_a_model_loads_with_the_library_its_config_asks_for_and_not_without(tmp_path, make_server):
    srv = make_server(_load_repo(tmp_path), "--no-metrics")
    client = tc.InferenceServerClient(srv.url)
    index = {m.name: m for m in client.get_model_repository_index().models}
    for name, (_, words) in LOAD_CASES.items():
        if words is None:
            assert index[name].state == "READY", (name, index[name].reason)
            ids = icow.Client(srv.url).infer(name, {"TEXT": np.array([b"good day"], dtype=object)})["INPUT_IDS"]
            assert ids.tolist() == [[make_pipelines.VOCABULARY.index("good"), make_pipelines.VOCABULARY.index("day")]]
        else:
            assert index[name].state == "UNAVAILABLE" and words in index[name].reason, (name, index[name].reason)
    assert "config field 'model_operations' is ignored" not in srv.log()


def test_without_onnxruntime_extensions_installed_the_load_error_names_the_extra(tmp_path, make_server):
    """The server's Python finds a package of that name that fails to import, as an
    environment without the extra does."""
    hidden = tmp_path / "hidden" / "onnxruntime_extensions"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("No module named \'onnxruntime_extensions\'")\n')
    path = os.pathsep.join(p for p in (str(hidden.parent), os.environ.get("PYTHONPATH", "")) if p)
    srv = make_server(_load_repo(tmp_path), "--no-metrics", env={"PYTHONPATH": path})
    index = {m.name: m for m in tc.InferenceServerClient(srv.url).get_model_repository_index().models}
    for name in ("parameter", "triton_form"):
        assert index[name].state == "UNAVAILABLE", name
        assert "onnxruntime-extensions, which is not installed" in index[name].reason, index[name].reason
        assert "pip install icow[extensions]" in index[name].reason, index[name].reason


def test_deploy_over_the_wire_takes_the_extensions_and_refuses_any_other_library(tmp_path, make_server):
    """A deploy request is data: a config naming a library of its own (even one it uploads
    beside the model) writes nothing; one asking for onnxruntime-extensions deploys and serves."""
    repo = tmp_path / "models"
    repo.mkdir()
    srv = make_server(repo, "--no-metrics", "--allow-deploy")
    client = tc.InferenceServerClient(srv.url)
    model = make_pipelines.text_tokenizer().SerializeToString()
    evil = json.dumps({"model_operations": {"op_library_filename": ["1/libmyops.so"]}})
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "'1/libmyops.so': icow loads only"):
        client.load_model("tok", config=evil, files={"file:1/model.onnx": model, "file:1/libmyops.so": b"\x7fELF"})
    assert list(repo.iterdir()) == []
    asked = json.dumps({"parameters": {"custom_ops": {"string_value": "onnxruntime_extensions"}}})
    client.load_model("tok", config=asked, files={"file:1/model.onnx": model})
    text = np.array([b"bad"], dtype=object)
    assert icow.Client(srv.url).infer("tok", {"TEXT": text})["INPUT_IDS"].tolist() == [
        [make_pipelines.VOCABULARY.index("bad")]]


# -- the pipelines, step by step, on both data planes ---------------------------------


@pytest.fixture(scope="module")
def pipelines_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("pipelines") / "models")


@pytest.fixture(scope="module", params=["native", "grpcio"])
def pipelines_server(request: pytest.FixtureRequest, pipelines_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    from conftest import start_server

    srv = start_server(pipelines_repo, "--no-metrics", "--data-plane", request.param,
                       log_dir=tmp_path_factory.mktemp("logs"))
    if request.param == "native":
        assert "data plane: native" in srv.log(), srv.log()
    yield srv
    srv.stop()


def test_the_pipeline_examples_are_what_the_script_makes(tmp_path):
    make_pipelines.build_pipelines(tmp_path)
    shipped_root = ROOT / "examples" / "pipelines"
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(shipped_root) for p in shipped_root.rglob("*") if p.is_file())
    for path in made:
        assert (tmp_path / path).read_bytes() == (shipped_root / path).read_bytes(), path


def test_every_composing_model_is_ready(pipelines_server):
    client = tc.InferenceServerClient(pipelines_server.url)
    for steps in make_pipelines.STEPS.values():
        for name in steps:
            assert client.is_model_ready(name), name


def test_text_labels_by_icow_client_chaining_the_steps(pipelines_server):
    with icow.Client(pipelines_server.url) as client:
        ids = client.infer("text_tokenizer", {"TEXT": texts()})["INPUT_IDS"]
        assert ids.dtype == np.int64 and ids.shape[0] == len(expected_labels())
        assert ids[2].tolist()[:2] == [make_pipelines.VOCABULARY.index("we"), make_pipelines.UNK]  # "went": unknown
        logits = client.infer("text_classifier", {"INPUT_IDS": ids})["LOGITS"]
        out = client.infer("text_topk", {"LOGITS": logits})
    assert [[label.decode() for label in row] for row in out["LABELS"]] == expected_labels()
    assert out["SCORES"].shape == (len(expected_labels()), make_pipelines.TOP_K)
    assert np.all(out["SCORES"][:, 0] >= out["SCORES"][:, 1]) and np.all(out["SCORES"][:, 0] > 0.5)


def test_text_labels_by_tritonclient_grpc_and_http(pipelines_server):
    for client, module in ((tc.InferenceServerClient(pipelines_server.url), tc),
                           (th.InferenceServerClient(pipelines_server.http_url), th)):
        tensor = texts()
        for name, (inp, out) in {"text_tokenizer": ("TEXT", "INPUT_IDS"), "text_classifier": ("INPUT_IDS", "LOGITS"),
                                 "text_topk": ("LOGITS", "LABELS")}.items():
            request = module.InferInput(inp, list(tensor.shape), _datatype(tensor))
            request.set_data_from_numpy(tensor)
            tensor = client.infer(name, [request]).as_numpy(out)
        assert [[label.decode() for label in row] for row in tensor] == expected_labels(), module.__name__


def _datatype(array: np.ndarray) -> str:
    return {np.dtype(object): "BYTES", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}[array.dtype]


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_image_colour_by_icow_client_chaining_the_steps(pipelines_server, fmt):
    with icow.Client(pipelines_server.url) as client:
        for colour, rgb in COLOURS_RGB.items():
            image = np.frombuffer(encoded_image(rgb, fmt), dtype=np.uint8)
            pixels = client.infer("image_preprocess", {"IMAGE": image})["PIXELS"]
            assert pixels.shape == (1, 3, make_pipelines.SIDE, make_pipelines.SIDE)
            logits = client.infer("image_cnn", {"PIXELS": pixels})["LOGITS"]
            out = client.infer("image_label", {"LOGITS": logits})
            assert out["LABEL"].tolist() == [colour.encode()] and out["SCORE"][0] > 0.5, (colour, out)


def test_image_colour_by_tritonclient_grpc_and_http(pipelines_server):
    for client, module in ((tc.InferenceServerClient(pipelines_server.url), tc),
                           (th.InferenceServerClient(pipelines_server.http_url), th)):
        tensor = np.frombuffer(encoded_image(COLOURS_RGB["green"]), dtype=np.uint8)
        for name, (inp, out) in {"image_preprocess": ("IMAGE", "PIXELS"), "image_cnn": ("PIXELS", "LOGITS"),
                                 "image_label": ("LOGITS", "LABEL")}.items():
            request = module.InferInput(inp, list(tensor.shape), "UINT8" if tensor.dtype == np.uint8 else "FP32")
            request.set_data_from_numpy(tensor)
            tensor = client.infer(name, [request]).as_numpy(out)
        assert tensor.tolist() == [b"green"], module.__name__


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"BM" + bytes(64), None],
                         ids=["empty", "text", "bmp-header", "jpeg-cut-short"])
def test_bytes_that_are_not_an_image_fail_the_request_and_the_server_serves_on(pipelines_server, data):
    """The guard in image_preprocess keeps them from libjpeg, whose fatal errors end the process."""
    if data is None:
        whole = encoded_image(COLOURS_RGB["red"])
        data = whole[: len(whole) // 2]
    with icow.Client(pipelines_server.url) as client:
        with pytest.raises(icow.InferenceServerError, match="Invalid image data"):
            client.infer("image_preprocess", {"IMAGE": np.frombuffer(data, dtype=np.uint8)})
        image = np.frombuffer(encoded_image(COLOURS_RGB["blue"]), dtype=np.uint8)
        assert client.infer("image_preprocess", {"IMAGE": image})["PIXELS"].shape[0] == 1
    assert pipelines_server.proc.poll() is None


def test_text_that_is_not_utf8_is_refused(pipelines_server):
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "not UTF-8"):
        tensor = tc.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"\xff\xfe bad"], dtype=object))
        tc.InferenceServerClient(pipelines_server.url).infer("text_tokenizer", [tensor])


# -- the example client scripts ------------------------------------------------------


def _script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "clients" / name), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_text_client_script_prints_the_labels(pipelines_server):
    out = _script("pipeline_text.py", "--url", pipelines_server.url, "--steps", "What a wonderful day",
                  "I hated it")
    lines = out.splitlines()
    assert lines[0].startswith("'What a wonderful day': positive ") and lines[1].startswith("'I hated it': negative ")


def test_the_image_client_script_prints_the_label(pipelines_server, tmp_path):
    path = tmp_path / "red.jpg"
    path.write_bytes(encoded_image(COLOURS_RGB["red"]))
    assert _script("pipeline_image.py", "--url", pipelines_server.url, "--steps", str(path)).startswith(
        f"{path}: red ")


# -- the ensemble configs, run by the client as the server will run them --------------


def _run_ensemble_by_hand(client: icow.Client, config: mc.ModelConfig, inputs: dict[str, np.ndarray]):
    """Each step of ``config`` in order, its input_map and output_map followed: the ensemble's
    tensors by name, as an ensemble scheduler keeps them."""
    tensors = dict(inputs)
    for step in config.ensemble_scheduling.step:
        feeds = {own: tensors[ensemble] for own, ensemble in step.input_map.items()}
        out = client.infer(step.model_name, feeds, outputs=list(step.output_map))
        tensors.update({step.output_map[own]: array for own, array in out.items()})
    return {o.name: tensors[o.name] for o in config.output}


def test_the_ensemble_configs_wire_the_steps(pipelines_server, pipelines_repo):
    """Every tensor an ensemble step reads is the ensemble's input or an earlier step's output,
    with the datatype both sides declare; following the maps gives the expected labels."""
    configs = {name: _parse((pipelines_repo / name / "config.pbtxt").read_text()) for name in make_pipelines.CONFIGS}
    for name in make_pipelines.ENSEMBLES:
        ensemble = configs[name]
        assert ensemble.platform == "ensemble" and (pipelines_repo / name / "1").is_dir()
        types = {t.name: t.data_type for t in ensemble.input}
        for step in ensemble.ensemble_scheduling.step:
            model = configs[step.model_name]
            assert step.model_version == -1
            for own, tensor in step.input_map.items():
                assert types[tensor] == next(i.data_type for i in model.input if i.name == own), (name, own)
            types.update({tensor: next(o.data_type for o in model.output if o.name == own)
                          for own, tensor in step.output_map.items()})
        assert [s.model_name for s in ensemble.ensemble_scheduling.step] == list(make_pipelines.STEPS[name])
        assert all(types[o.name] == o.data_type for o in ensemble.output), name
    with icow.Client(pipelines_server.url) as client:
        text = _run_ensemble_by_hand(client, configs["text_sentiment"], {"TEXT": texts()})
        assert [[label.decode() for label in row] for row in text["LABELS"]] == expected_labels()
        image = np.frombuffer(encoded_image(COLOURS_RGB["blue"]), dtype=np.uint8)
        assert _run_ensemble_by_hand(client, configs["image_colour"], {"IMAGE": image})["LABEL"].tolist() == [b"blue"]


def test_importing_the_extensions_leaves_the_protobuf_implementation_alone(monkeypatch):
    """onnxruntime_extensions sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python when imported;
    every server and client started afterwards would inherit a pure-Python protobuf."""
    import sys

    from icow.runtime import custom_ops

    monkeypatch.delenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", raising=False)
    monkeypatch.delitem(sys.modules, "onnxruntime_extensions", raising=False)
    monkeypatch.delitem(sys.modules, "onnxruntime_extensions.cvt", raising=False)
    assert custom_ops.import_extensions().get_library_path()
    assert "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION" not in os.environ
