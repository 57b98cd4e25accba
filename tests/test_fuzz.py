"""Mutated ModelInfer requests: every one gets a status a client can act on,
none an INTERNAL or UNKNOWN, and the server keeps answering correctly."""

from __future__ import annotations

import random

import grpc
import numpy as np
import pytest

from icow._proto import inference_pb2 as pb

ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION}  # the last: shm parameters


def good_request() -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, 16])
    return pb.ModelInferRequest(
        model_name="mlp", id="fuzz", inputs=[tensor],
        raw_input_contents=[np.ones((2, 16), np.float32).tobytes()],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="output")],
    ).SerializeToString()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, delete, insert or cut bytes at 1-4 random places."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        pos = rng.randrange(len(out))
        kind = rng.random()
        if kind < 0.5:
            out[pos] = rng.randrange(256)
        elif kind < 0.7:
            del out[pos:pos + rng.randint(1, 8)]
        elif kind < 0.85:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:
            del out[pos:]
    return bytes(out)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_requests(server, seed):
    rng = random.Random(seed)
    good = good_request()
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        expected = call(good)
        for _ in range(500):
            try:
                call(mutate(good, rng), timeout=10)
            except grpc.RpcError as e:
                assert e.code() in ACCEPTABLE, f"{e.code()}: {e.details()}"
        assert call(good) == expected
