"""icow's server, called with pre-serialized ModelInferRequest bytes and no
response parsing: the client does as little as gRPC allows, so the figure is
the server's (plus the transport that ``echo_server`` measures alone).

On the grpcio data plane: ``icow_native`` (ModelInfer's fast path in C++ in
grpcio's handler, else the compiled zero-copy codec with IOBinding),
``icow_python`` (the same with ``--no-fast-path``: the codec driven from Python)
and ``icow_protobuf`` (generated protobuf classes and numpy: the baseline the
native codec must beat); and ``icow_plane``, the default ``icow serve``: the
native data plane (grpc++, ModelInfer answered in C++)."""

from __future__ import annotations

import grpc
import numpy as np

from icow._proto import inference_pb2 as pb

from ..harness import CHANNEL_OPTIONS, MODEL_INFER, BenchError, Env, Server
from ..workloads import Workload
from . import icow_server


class IcowGrpc:
    name = "icow_grpc"
    codec = "native"
    options: tuple[str, ...] = ()
    description = "icow serve, raw ModelInferRequest bytes over a bare grpcio channel"
    server: Server | None = None

    def setup(self, workload: Workload, env: Env) -> None:
        self.server = icow_server(env, self.codec, *self.options)
        self.channel = grpc.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes both ways
        self.request = workload.request_bytes
        env.check(self.name, workload, output(self.stub(self.request), workload.output))

    def call(self) -> None:
        self.stub(self.request)

    def teardown(self) -> None:
        self.channel.close()


class IcowNative(IcowGrpc):
    name = "icow_native"
    codec = "native"
    description = "icow serve --codec native --data-plane grpcio (compiled codec, IOBinding), raw request bytes"


class IcowPython(IcowGrpc):
    name = "icow_python"
    options = ("--no-fast-path",)
    description = ("icow serve --data-plane grpcio --no-fast-path (native codec, ModelInfer on the Python path), "
                   "raw request bytes")


class IcowPlane(IcowGrpc):
    name = "icow_plane"
    options = ("--data-plane", "native")
    description = "icow serve (--data-plane native: grpc++, ModelInfer parsed, run and built in C++), raw request bytes"


class IcowProtobuf(IcowGrpc):
    name = "icow_protobuf"
    codec = "protobuf"
    description = "icow serve --codec protobuf --data-plane grpcio (generated classes + numpy), raw request bytes"


def output(data: bytes, name: str) -> np.ndarray:
    """The one FP32 output ``name`` of a serialized ModelInferResponse."""
    response = pb.ModelInferResponse.FromString(data)
    if len(response.outputs) != 1 or len(response.raw_output_contents) != 1:
        raise BenchError(f"icow answered with {len(response.outputs)} outputs and "
                         f"{len(response.raw_output_contents)} raw contents; want 1 and 1")
    tensor = response.outputs[0]
    if tensor.name != name or tensor.datatype != "FP32":
        raise BenchError(f"icow answered with output '{tensor.name}' of {tensor.datatype}; want '{name}' of FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
