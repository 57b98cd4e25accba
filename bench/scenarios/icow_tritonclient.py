"""icow's server through ``tritonclient.grpc``, the client Triton users have:
each call builds its InferInput from the numpy array and reads the output back
as numpy, as an application would. Compared with ``icow_native``, the gap is the
client library's own cost. Not in the default set."""

from __future__ import annotations

import tritonclient.grpc as triton

from ..harness import Env, Server
from ..workloads import Workload
from . import icow_server


class IcowTritonClient:
    name = "icow_tritonclient"
    description = "icow serve --codec native through tritonclient.grpc (InferInput in, as_numpy out)"
    server: Server | None = None

    def setup(self, workload: Workload, env: Env) -> None:
        self.server = icow_server(env, "native")
        self.client = triton.InferenceServerClient(self.server.address)  # its defaults allow 2 GiB messages
        self.workload = workload
        env.check(self.name, workload, self._infer())

    def _infer(self):
        w = self.workload
        tensor = triton.InferInput(w.input, list(w.shape), "FP32")
        tensor.set_data_from_numpy(w.array)
        return self.client.infer(w.model, [tensor]).as_numpy(w.output)

    def call(self) -> None:
        self._infer()

    def teardown(self) -> None:
        self.client.close()
