"""icow's own clients (sync and asyncio) against the real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import make_models
from conftest import free_port
from icow._proto import inference_pb2, model_config_pb2
from icow.client import AsyncClient, Client, ModelIndex
from icow.protocol.errors import InferenceServerError


@pytest.fixture
def client(server) -> Iterator[Client]:
    with Client(server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def mlp_reference(test_repo: Path):
    """mlp run in-process by onnxruntime, to compare the server's answers with."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(test_repo / "mlp" / "1" / "model.onnx"))
    return lambda x: session.run(None, {"input": x})[0]


def _mlp_input(batch: int = 3) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 16)).astype(np.float32)


# --------------------------------------------------------------------------
# Inference


def test_infer_named_inputs_match_onnxruntime(client: Client, mlp_reference) -> None:
    x = _mlp_input()
    out = client.infer("mlp", {"input": x})
    assert list(out) == ["output"]
    assert out["output"].dtype == np.float32 and out["output"].shape == (3, 4)
    np.testing.assert_allclose(out["output"], mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_infer_positional_inputs_match_onnxruntime(client: Client, mlp_reference) -> None:
    x = _mlp_input(5)
    np.testing.assert_allclose(client.infer("mlp", [x])["output"], mlp_reference(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(client.infer("mlp", x)["output"], mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_infer_selects_version(client: Client) -> None:
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(client.infer("scale", {"x": x}, version=1)["y"], x * 2)
    np.testing.assert_array_equal(client.infer("scale", [x], version="2")["y"], x * 3)


def test_infer_outputs_filter(client: Client) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4) / 2
    b = np.arange(8, dtype=np.int64).reshape(2, 4)
    c = (b % 2 == 0)
    out = client.infer("mixed", {"a": a, "b": b, "c": c}, outputs=["sum", "a_half"])
    assert set(out) == {"sum", "a_half"}
    np.testing.assert_array_equal(out["sum"], a + b)
    assert out["a_half"].dtype == np.float16
    np.testing.assert_array_equal(out["a_half"], a.astype(np.float16))
    everything = client.infer("mixed", [a, b, c])
    assert set(everything) == {"sum", "b_next", "c_not", "a_half"}
    np.testing.assert_array_equal(everything["b_next"], b + 1)
    np.testing.assert_array_equal(everything["c_not"], ~c)


def test_infer_bytes(client: Client) -> None:
    out = client.infer("strings", {"text": np.array(["hello", "icow 2"])})
    assert out["upper"].dtype == object
    assert out["upper"].tolist() == [b"HELLO", b"ICOW 2"]
    out = client.infer("strings", [np.array([b"abc", b"", b"x y"], dtype=object)])
    assert out["upper"].tolist() == [b"ABC", b"", b"X Y"]


def test_infer_every_datatype_round_trips(client: Client) -> None:
    dtypes = {"BOOL": bool, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
              "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
              "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
    inputs = {f"in_{name}": (np.arange(6) % 5).astype(dtype).reshape(2, 3) for name, dtype in dtypes.items()}
    inputs["in_BYTES"] = np.array([[b"a", b"bc", b""], [b"\x00", b"e", b"f"]], dtype=object)
    out = client.infer("dtypes", inputs)
    for name, array in inputs.items():
        got = out["out_" + name[3:]]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        np.testing.assert_array_equal(got, array)


def test_infer_large_tensor(make_server, tmp_path: Path) -> None:
    """40 MiB in and out, ten times gRPC's default 4 MiB limit, through an
    FP32 identity without batching (the server's own limit is large by default)."""
    _write_identity(tmp_path / "repo")
    srv = make_server(tmp_path / "repo")
    x = np.random.default_rng(2).standard_normal((40 * 2**20 // 12, 3)).astype(np.float32)
    with Client(srv.url, timeout=120) as c:
        out = c.infer("identity", [x])["y"]
    np.testing.assert_array_equal(out, x)


def _write_identity(repo: Path) -> None:
    """``repo/identity``: y = x, FP32 [n, 3], max_batch_size 0 so n is free."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", make_models.OPSET)])
    model.ir_version = make_models.IR_VERSION
    make_models.write(model, repo, "identity")
    (repo / "identity" / "config.pbtxt").write_text("max_batch_size: 0\n")


def test_message_limit_is_the_clients_option(server) -> None:
    x = _mlp_input(2**20 // 64 + 1)  # just over 1 MiB
    with Client(server.url, max_message_bytes=2**20, retries=0) as small:
        with pytest.raises(InferenceServerError) as e:
            small.infer("mlp", {"input": x})
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------------------------------
# Errors


def test_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(InferenceServerError) as e:
        client.infer("no_such_model", {"x": np.zeros(4, np.float32)})
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in e.value.message
    with pytest.raises(InferenceServerError) as e:
        client.infer("no_such_model", [np.zeros(4, np.float32)])  # fails at the metadata lookup
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_unknown_version_is_not_found(client: Client) -> None:
    with pytest.raises(InferenceServerError) as e:
        client.infer("scale", {"x": np.zeros(4, np.float32)}, version=9)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert client.ready("scale", 9) is False


def test_wrong_dtype_is_invalid_argument(client: Client) -> None:
    with pytest.raises(InferenceServerError) as e:
        client.infer("mlp", {"input": _mlp_input().astype(np.float64)})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP32" in e.value.message and "FP64" in e.value.message  # the server's own words


def test_wrong_positional_count_is_invalid_argument(client: Client) -> None:
    with pytest.raises(InferenceServerError) as e:
        client.infer("mlp", [_mlp_input(), _mlp_input()])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes 1 inputs" in e.value.message


def test_unsupported_numpy_dtype_is_invalid_argument(client: Client) -> None:
    with pytest.raises(InferenceServerError) as e:
        client.infer("mlp", {"input": np.zeros((1, 16), dtype=np.complex64)})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unreachable_server_raises_unavailable_after_backoff() -> None:
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retries=3, backoff=0.1, timeout=5) as c:
        start = time.monotonic()
        with pytest.raises(InferenceServerError) as e:
            c.live()
        elapsed = time.monotonic() - start
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert 0.1 + 0.2 + 0.4 <= elapsed < 10, elapsed


def test_no_retries_fails_at_once() -> None:
    with Client(f"127.0.0.1:{free_port()}", retries=0, backoff=5.0, timeout=5) as c:
        start = time.monotonic()
        with pytest.raises(InferenceServerError) as e:
            c.ready()
        assert time.monotonic() - start < 5.0  # no pause of 5 s (the longest backoff), however busy the machine
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------
# Health, metadata, config, repository


def test_health(client: Client) -> None:
    assert client.live() is True
    assert client.ready() is True
    assert client.ready("mlp") is True
    assert client.ready("scale", 2) is True


def test_server_metadata(client: Client) -> None:
    meta = client.server_metadata()
    assert isinstance(meta, inference_pb2.ServerMetadataResponse)
    assert meta.name and meta.version


def test_model_metadata(client: Client) -> None:
    meta = client.metadata("mlp")
    assert isinstance(meta, inference_pb2.ModelMetadataResponse)
    assert meta.name == "mlp"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("output", "FP32", [-1, 4])]
    assert set(client.metadata("scale").versions) == {"1", "2"}
    assert client.metadata("scale", 1).versions


def test_model_config(client: Client) -> None:
    config = client.config("strings")
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.name == "strings"
    assert [(i.name, i.data_type) for i in config.input] == [("text", model_config_pb2.TYPE_STRING)]
    assert [o.name for o in client.config("mlp").output] == ["output"]


def test_repository_index(client: Client) -> None:
    index = client.repository_index()
    assert all(isinstance(row, ModelIndex) for row in index)
    names = {row.name for row in index}
    assert {"mlp", "scale", "mixed", "strings", "dtypes", "broken"} <= names
    assert all(row.state == "READY" for row in index if row.name == "mlp")
    broken = [row for row in index if row.name == "broken"]
    assert broken and all(row.state != "READY" and row.reason for row in broken)
    ready = client.repository_index(ready_only=True)
    assert "mlp" in {row.name for row in ready} and "broken" not in {row.name for row in ready}


def test_load_and_unload(make_server, test_repo: Path) -> None:
    srv = make_server(test_repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    with Client(srv.url, retries=0, timeout=30) as c:
        assert c.ready("mlp") is True
        assert c.ready("scale") is False
        assert _states(c, "scale") == {("", False)}

        c.load("scale")
        assert c.ready("scale") is True
        assert _states(c, "scale") == {("1", True), ("2", True)}
        x = np.ones(4, np.float32)
        np.testing.assert_array_equal(c.infer("scale", [x], version=2)["y"], x * 3)

        c.unload("scale")
        assert c.ready("scale") is False
        with pytest.raises(InferenceServerError) as e:
            c.infer("scale", {"x": x})
        assert e.value.code == grpc.StatusCode.UNAVAILABLE

        with pytest.raises(InferenceServerError) as e:
            c.load("broken")
        assert "broken" in e.value.message
        with pytest.raises(InferenceServerError) as e:
            c.load("no_such_model")
        assert e.value.code == grpc.StatusCode.NOT_FOUND


def _states(c: Client, model: str) -> set[tuple[str, bool]]:
    return {(row.version, row.state == "READY") for row in c.repository_index() if row.name == model}


def test_caller_owned_channel_stays_open(server) -> None:
    channel = grpc.insecure_channel(server.url)
    with Client(channel=channel) as c:
        assert c.live()
    with Client(channel=channel) as c:  # the first client left it open
        assert c.ready("mlp")
    channel.close()


# --------------------------------------------------------------------------
# asyncio


def test_async_client(server, mlp_reference) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, timeout=30) as c:
            assert await c.live() and await c.ready() and await c.ready("mlp")
            x = _mlp_input(4)
            named, positional = await asyncio.gather(
                c.infer("mlp", {"input": x}), c.infer("mlp", [x]))
            np.testing.assert_allclose(named["output"], mlp_reference(x), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(positional["output"], named["output"])
            y = await c.infer("scale", [np.ones(4, np.float32)], version=1)
            np.testing.assert_array_equal(y["y"], np.full(4, 2, np.float32))
            out = await c.infer("strings", {"text": np.array(["abc"])}, outputs=["upper"])
            assert out["upper"].tolist() == [b"ABC"]
            assert (await c.metadata("mlp")).inputs[0].name == "input"
            assert (await c.config("mlp")).name == "mlp"
            assert "mlp" in {row.name for row in await c.repository_index(ready_only=True)}
            assert (await c.server_metadata()).name
            with pytest.raises(InferenceServerError) as e:
                await c.infer("no_such_model", {"x": np.zeros(4, np.float32)})
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(InferenceServerError) as e:
                await c.infer("mlp", {"input": x.astype(np.float64)})
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(main())


def test_async_unreachable_server_raises_unavailable_after_backoff() -> None:
    async def main() -> float:
        async with AsyncClient(f"127.0.0.1:{free_port()}", retries=2, backoff=0.2, timeout=5) as c:
            start = time.monotonic()
            with pytest.raises(InferenceServerError) as e:
                await c.ready("mlp")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert 0.2 + 0.4 <= elapsed < 10, elapsed


def test_async_load_and_unload(make_server, test_repo: Path) -> None:
    srv = make_server(test_repo, "--model-control-mode", "explicit", "--load-model", "mlp")

    async def main() -> None:
        async with AsyncClient(srv.url, retries=0, timeout=30) as c:
            await c.load("scale")
            assert await c.ready("scale")
            await c.unload("scale")
            assert await c.ready("scale") is False

    asyncio.run(main())


# --------------------------------------------------------------------------
# Dependencies


def test_client_imports_without_server_dependencies() -> None:
    """The client, its admin CLI and the command line's entry point import with
    onnxruntime and onnx made unimportable."""
    code = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnxruntime", "onnx"):
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Block())
import icow
icow.Client, icow.AsyncClient
import icow.client.admin, icow.cli
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "onnx"))
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
