"""The peer: an MLServer 1.7 custom runtime serving a workload's model.onnx, as a
user who picks MLServer instead of icow would write it (MLServer ships no ONNX
runtime of its own).

Loaded by MLServer, in bench/.mlserver-venv (``bash bench/setup_mlserver.sh``),
from the model-settings.json that ``bench/scenarios/mlserver.py`` writes:
``"implementation": "bench.baselines.mlserver_onnx.OnnxModel"`` and
``"parameters": {"uri": ".../model.onnx"}``. It imports mlserver, so the bench's
own process (the project's venv) never imports it.

Two things a plain runtime would not do, both for Triton's perf_analyzer over
REST (README, "MLServer"): it answers ``GET /v2/models/NAME/config`` (Triton's
model configuration, which perf_analyzer reads before it starts; MLServer has no
such endpoint) from a custom handler, off the inference path; and its outputs
carry no ``parameters`` (NumpyCodec sets ``content_type``; Triton's C++ HTTP
client then looks for ``binary_data_size`` in them and fails the call).
"""

from __future__ import annotations

import os

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers.custom import CustomHandler, register_custom_handler
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

# onnxruntime's type names -> the V2 protocol's datatypes (those the bench's models use, and a few more)
DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
             "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(uint8)": "UINT8",
             "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}


class OnnxModel(MLModel):
    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        # An instance's handler, for this model's own path (MLServer registers a
        # custom handler's path as it is: one static path would serve every model).
        async def triton_config() -> dict:
            return self.config_json

        register_custom_handler(CustomHandler(rest_path=f"/v2/models/{self.name}/config", rest_method="GET"),
                                triton_config)
        # Found by MLServer's inspect.getmembers; the parallel worker calls it by its __name__.
        self.triton_config = triton_config
        self.config_json: dict = {}

    async def load(self) -> bool:
        options = ort.SessionOptions()
        # As icow's model.py: one intra-op thread per CPU the process may use (the
        # bench pins servers to one). Left at 0, onnxruntime would start a pool
        # sized to the machine and pin its threads outside the server's CPU.
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        path = await get_model_uri(self.settings)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.inputs = [_tensor(i) for i in self.session.get_inputs()]  # model metadata, as MLServer serves it
        self.outputs = [_tensor(o) for o in self.session.get_outputs()]
        self.config_json = {"name": self.name, "platform": "onnxruntime_onnx", "max_batch_size": 0,
                              "input": [_triton(t) for t in self.inputs],
                              "output": [_triton(t) for t in self.outputs]}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # MLServer's own codec, as its docs show: a V2 tensor (JSON list, typed
        # contents or raw bytes from gRPC) to a numpy array of its datatype and
        # shape, and back.
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        arrays = self.session.run(self.output_names, feeds)
        outputs = [NumpyCodec.encode_output(name, array) for name, array in zip(self.output_names, arrays)]
        for output in outputs:
            output.parameters = None  # see the module's docstring: perf_analyzer's HTTP client
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)


def _tensor(node: ort.NodeArg) -> MetadataTensor:
    shape = [d if isinstance(d, int) else -1 for d in node.shape]  # a named or unknown dimension is dynamic
    return MetadataTensor(name=node.name, datatype=DATATYPES.get(node.type, node.type), shape=shape)


def _triton(tensor: MetadataTensor) -> dict:
    """The tensor in Triton's model configuration JSON (max_batch_size 0: dims are the whole shape)."""
    return {"name": tensor.name, "data_type": "TYPE_" + tensor.datatype.replace("BYTES", "STRING"),
            "dims": tensor.shape}
