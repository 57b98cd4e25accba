"""icow's server, called with pre-serialized ModelInferRequest bytes and no
response parsing: the client does as little as gRPC allows, so the figure is
the server's (plus the transport that ``echo_server`` measures alone)."""

from __future__ import annotations

import grpc
import numpy as np

from icow._proto import inference_pb2 as pb

from ..harness import CHANNEL_OPTIONS, MODEL_INFER, BenchError, Env
from ..workloads import Workload
from . import icow_server


class IcowGrpc:
    name = "icow_grpc"
    baseline = "echo_server"
    description = "icow serve, raw ModelInferRequest bytes over a bare grpcio channel"

    def setup(self, workload: Workload, env: Env) -> None:
        server = icow_server(env)
        self.channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes both ways
        self.request = workload.request_bytes
        env.check(self.name, workload, _output(self.stub(self.request)))

    def call(self) -> None:
        self.stub(self.request)

    def teardown(self) -> None:
        self.channel.close()


def _output(data: bytes) -> np.ndarray:
    response = pb.ModelInferResponse.FromString(data)
    if len(response.outputs) != 1 or len(response.raw_output_contents) != 1:
        raise BenchError(f"icow answered with {len(response.outputs)} outputs and "
                         f"{len(response.raw_output_contents)} raw contents; want 1 and 1")
    tensor = response.outputs[0]
    if tensor.datatype != "FP32":
        raise BenchError(f"icow answered with datatype {tensor.datatype}; want FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
