"""The pipeline examples (examples/make_pipelines.py) as one request each: the ensembles
text_sentiment and image_colour (platform "ensemble", Triton's ensemble_scheduling) take raw
text or an image file and give labels, on both data planes, with icow's client, tritonclient
(gRPC, HTTP) and the example client scripts. test_pipelines_ortx.py checks the same labels with
the client calling the composing models one by one.

These need ensembles in the server (issue 22, parts 1-3): before they are built, icow refuses
`platform: "ensemble"` at load and every test here fails with that refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th

import icow
import make_pipelines
from pipelines_helpers import COLOURS_RGB, build_repository, encoded_image, expected_labels, texts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["native", "grpcio"])
def ensemble_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from conftest import start_server

    repo = build_repository(tmp_path_factory.mktemp("pipelines") / "models")
    srv = start_server(repo, "--no-metrics", "--data-plane", request.param, log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


def _labels(rows) -> list[list[str]]:
    return [[label.decode() for label in row] for row in rows]


def test_text_pipeline_as_one_ensemble(ensemble_server):
    index = {m.name: m for m in tc.InferenceServerClient(ensemble_server.url).get_model_repository_index().models}
    assert index["text_sentiment"].state == "READY", index["text_sentiment"].reason
    with icow.Client(ensemble_server.url) as client:
        out = client.infer("text_sentiment", {"TEXT": texts()})
        assert _labels(out["LABELS"]) == expected_labels()
        assert out["SCORES"].shape == (len(expected_labels()), make_pipelines.TOP_K)
        only = client.infer("text_sentiment", {"TEXT": texts()}, outputs=["LABELS"])
        assert list(only) == ["LABELS"]  # only the tensors asked for come back
    for module, url in ((tc, ensemble_server.url), (th, ensemble_server.http_url)):
        request = module.InferInput("TEXT", [len(expected_labels())], "BYTES")
        request.set_data_from_numpy(texts())
        result = module.InferenceServerClient(url).infer("text_sentiment", [request])
        assert _labels(result.as_numpy("LABELS")) == expected_labels(), module.__name__


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_image_pipeline_as_one_ensemble(ensemble_server, fmt):
    with icow.Client(ensemble_server.url) as client:
        for colour, rgb in COLOURS_RGB.items():
            out = client.infer("image_colour", {"IMAGE": np.frombuffer(encoded_image(rgb, fmt), dtype=np.uint8)})
            assert out["LABEL"].tolist() == [colour.encode()] and out["SCORE"][0] > 0.5, (colour, out)
        with pytest.raises(icow.InferenceServerError, match="Invalid image data"):
            client.infer("image_colour", {"IMAGE": np.frombuffer(b"not an image", dtype=np.uint8)})
    image = np.frombuffer(encoded_image(COLOURS_RGB["blue"], fmt), dtype=np.uint8)
    request = tc.InferInput("IMAGE", [image.size], "UINT8")
    request.set_data_from_numpy(image)
    result = tc.InferenceServerClient(ensemble_server.url).infer("image_colour", [request])
    assert result.as_numpy("LABEL").tolist() == [b"blue"]


def _script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "clients" / name), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_client_scripts_call_the_ensembles(ensemble_server, tmp_path):
    out = _script("pipeline_text.py", "--url", ensemble_server.url, "This book is excellent")
    assert out.startswith("'This book is excellent': positive "), out
    path = tmp_path / "green.png"
    path.write_bytes(encoded_image(COLOURS_RGB["green"], "png"))
    assert _script("pipeline_image.py", "--url", ensemble_server.url, str(path)).startswith(f"{path}: green ")
