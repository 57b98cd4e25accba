"""BF16 inputs and outputs round-trip bit for bit, on every server kind, with
tritonclient (ml_dtypes.bfloat16 arrays) and icow's Client (BF16_BITS arrays):
NaN payloads, infinities, signed zeros and subnormals included."""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tc

from helpers import expect_error, infer_input
from icow import BF16_BITS, Client

# Bits that a conversion through float32 and back, or a cast, would change or lose.
SPECIAL = [
    0x7FC0, 0x7FC1, 0xFFA5, 0x7F81,  # quiet NaN, quiet NaNs with payloads, a signalling NaN
    0x7F80, 0xFF80, 0x0000, 0x8000,  # +-inf, +-0
    0x0001, 0x807F, 0x0040,  # subnormals
    0x3F80, 0x7F7F, 0x0080,  # 1.0, the largest finite, the smallest normal
]


def bits(rows: int = 5) -> np.ndarray:
    """[rows, 3] uint16 bit patterns: every special one, then random ones."""
    random = np.random.default_rng(7).integers(0, 2**16, rows * 3, dtype=np.uint16)
    random[:len(SPECIAL)] = SPECIAL
    return random.reshape(rows, 3)


@pytest.fixture(scope="module")
def client(server) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(server.url)


def test_tritonclient_round_trip(client: tc.InferenceServerClient) -> None:
    sent = bits()
    result = client.infer("identity_BF16", [infer_input("x", sent.view(ml_dtypes.bfloat16), "BF16")])
    assert result.get_output("y").datatype == "BF16"
    got = result.as_numpy("y")
    assert got.dtype == ml_dtypes.bfloat16 and got.shape == sent.shape
    np.testing.assert_array_equal(got.view(np.uint16), sent)


@pytest.mark.parametrize("rows", [5, 32])  # 32: the max_batch_size
def test_icow_client_round_trip(server, rows: int) -> None:
    sent = bits(rows)
    with Client(server.url) as icow:
        got = icow.infer("identity_BF16", {"x": sent.view(BF16_BITS)})["y"]
        assert got.dtype == BF16_BITS
        np.testing.assert_array_equal(got.view(np.uint16), sent)
        from_ml = icow.infer("identity_BF16", {"x": sent.view(ml_dtypes.bfloat16)})["y"]
        np.testing.assert_array_equal(from_ml.view(np.uint16), sent)


def test_metadata_and_config_say_bf16(client: tc.InferenceServerClient) -> None:
    meta = client.get_model_metadata("identity_BF16")
    assert [t.datatype for t in (*meta.inputs, *meta.outputs)] == ["BF16", "BF16"]
    config = client.get_model_config("identity_BF16").config
    assert config.input[0].data_type == config.output[0].data_type == 14  # TYPE_BF16


def test_uint16_is_not_bf16(client: tc.InferenceServerClient) -> None:
    """The same two bytes sent as UINT16 are refused: the datatype is checked, not only the size."""
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "input 'x'", "BF16", "UINT16"):
        client.infer("identity_BF16", [infer_input("x", bits(), "UINT16")])
