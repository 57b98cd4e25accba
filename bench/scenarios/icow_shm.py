"""icow with tensors in system shared memory (issue 9), next to the same server
taking them as gRPC bytes. One server, ``icow serve --allow-client-shm``, for all four.

- ``icow_shm_bytes``: pre-serialized request bytes over a raw stub (the tensor in
  the message), as ``icow_native`` but on the shm-enabled server: the denominator.
- ``icow_shm``: what tritonclient's shared-memory API does, with a raw stub. Each
  client thread owns one region holding its input (written once at setup, as a
  producer on the same host would) and its output; the request names both. The
  server reads the input where it lies and ONNX Runtime writes the output into
  the region: the tensor never enters a gRPC message.
- ``icow_client_bytes`` / ``icow_client_shm``: ``icow.Client.infer`` with numpy in
  and out, ``shared_memory="off"`` and ``"auto"``: what an application sees,
  the client's copy into and out of its region included.
"""

from __future__ import annotations

import queue
import secrets
from multiprocessing import shared_memory

import grpc
import numpy as np

import icow
from icow._proto import inference_pb2 as pb

from ..harness import CHANNEL_OPTIONS, MODEL_INFER, Env, Server
from ..workloads import Workload
from . import icow_server
from .icow_grpc import IcowGrpc, output

SHM_OPTIONS = ("--allow-client-shm",)


class IcowShmBytes(IcowGrpc):
    name = "icow_shm_bytes"
    description = "icow serve --allow-client-shm, tensors as raw ModelInferRequest bytes over grpcio"

    def setup(self, workload: Workload, env: Env) -> None:
        self.server = icow_server(env, "native", *SHM_OPTIONS)
        self.channel = grpc.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.stub = self.channel.unary_unary(MODEL_INFER)
        self.request = workload.request_bytes
        env.check(self.name, workload, output(self.stub(self.request), workload.output))


class _ThreadRegion:
    """One client thread's region: input at 0, output after it."""

    def __init__(self, stub, workload: Workload) -> None:
        nbytes = workload.tensor_bytes
        self.name = f"bench-{secrets.token_hex(6)}"
        self.shm = shared_memory.SharedMemory(self.name, create=True, size=2 * nbytes)
        np.frombuffer(self.shm.buf, np.float32, workload.array.size)[:] = workload.array.ravel()
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name=self.name, key="/" + self.name, byte_size=2 * nbytes))
        request = pb.ModelInferRequest(model_name=workload.model)
        tensor = request.inputs.add(name=workload.input, datatype="FP32", shape=workload.shape)
        _place(tensor, self.name, 0, nbytes)
        _place(request.outputs.add(name=workload.output), self.name, nbytes, nbytes)
        self.request = request.SerializeToString()
        self.nbytes = nbytes

    def output(self, workload: Workload) -> np.ndarray:
        return np.frombuffer(self.shm.buf, np.float32, workload.array.size, offset=self.nbytes).reshape(
            workload.output_shape).copy()

    def close(self, stub) -> None:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=self.name))
        self.shm.close()
        self.shm.unlink()


def _place(tensor, region: str, offset: int, size: int) -> None:
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_offset"].int64_param = offset
    tensor.parameters["shared_memory_byte_size"].int64_param = size


class IcowShm:
    name = "icow_shm"
    description = "icow serve --allow-client-shm, input and output in a system shared-memory region per thread"
    server: Server | None = None

    def setup(self, workload: Workload, env: Env) -> None:
        from icow._proto import inference_pb2_grpc

        self.server = icow_server(env, "native", *SHM_OPTIONS)
        self.workload = workload
        self.channel = grpc.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.infer = self.channel.unary_unary(MODEL_INFER)
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        # One region per client thread, made before the timed window (the bench's
        # threads are new in each phase): a call takes one and puts it back.
        self.regions = [_ThreadRegion(self.stub, workload) for _ in range(workload.concurrency)]
        self.pool: queue.SimpleQueue[_ThreadRegion] = queue.SimpleQueue()
        for region in self.regions:
            self.infer(region.request)  # the server's first touch of the pages is not timed either
            env.check(self.name, workload, region.output(workload))
            self.pool.put(region)

    def call(self) -> None:
        region = self.pool.get()
        try:
            response = self.infer(region.request)
        finally:
            self.pool.put(region)
        if len(response) > 4096:  # the tensor must not have come back in the message
            raise RuntimeError(f"a {len(response)}-byte response: the output did not go to shared memory")

    def teardown(self) -> None:
        for region in self.regions:
            region.close(self.stub)
        self.channel.close()


class IcowClientBytes:
    name = "icow_client_bytes"
    description = "icow.Client(shared_memory='off').infer: numpy in, numpy out, tensors in gRPC messages"
    mode = "off"
    server: Server | None = None

    def setup(self, workload: Workload, env: Env) -> None:
        self.server = icow_server(env, "native", *SHM_OPTIONS)
        self.client = icow.Client(self.server.address, shared_memory=self.mode)
        self.workload = workload
        env.check(self.name, workload, self._infer())

    def _infer(self) -> np.ndarray:
        w = self.workload
        return self.client.infer(w.model, {w.input: w.array})[w.output]

    def call(self) -> None:
        self._infer()

    def teardown(self) -> None:
        self.client.close()


class IcowClientShm(IcowClientBytes):
    name = "icow_client_shm"
    description = "icow.Client(shared_memory='auto').infer: numpy in, numpy out, tensors through its regions"
    mode = "auto"

    def setup(self, workload: Workload, env: Env) -> None:
        super().setup(workload, env)
        self._infer()  # the first call learns the output's size; from the second on it is in the region
        if self.client._shm is None:
            raise RuntimeError("icow.Client did not take the shared-memory path")
