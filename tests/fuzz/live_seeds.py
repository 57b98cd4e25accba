"""The live fuzzer's repository and its valid requests (seeds), one or more per
method a client can call: inference of every datatype (raw and typed contents,
strings, a batching model, shared memory), metadata, configuration, the
repository, shared-memory registration, lIteCOW's ICOW service, rollout,
health and reflection; and the same over HTTP/REST (http_seeds). Each inference seed knows its model file and inputs,
so its answer can be compared with in-process ONNX Runtime."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import orjson
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from onnx import TensorProto, helper, numpy_helper

import make_models
from icow import _wire
from icow._proto import inference_pb2 as pb
from icow._proto import litecow_pb2 as lc
from icow._proto import rollout_pb2 as rp
from icow.protocol.datatypes import DATATYPES

ROOT = Path(__file__).resolve().parents[2]
OIP = "/inference.GRPCInferenceService/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
BATCHED = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"


@dataclass
class Seed:
    method: str  # the gRPC method path
    message: Message
    stream: bool = False  # a stream-stream method: sent as a stream of this one request
    model: Path | None = None  # inference seeds: the model file, ...
    feeds: dict[str, np.ndarray] = field(default_factory=dict)  # ... its inputs, ...
    outputs: list[str] = field(default_factory=list)  # ... and the outputs asked for, in order

    @property
    def data(self) -> bytes:
        return self.message.SerializeToString()


def build_repository(repo: Path) -> Path:
    """The examples, ``dtypes`` (identity of every datatype), ``batched`` (FP32
    identity with dynamic batching), ``spare`` (a model the seeds unload) and two ensembles
    of OUT = IN * 2 + 1: ``chain`` (``double`` then ``batched_inc``, a batching step) and
    ``pair`` (``double`` then ``inc``), whose one-model equivalent, for the answer's check,
    lies beside the repository (chain_reference)."""
    shutil.copytree(ROOT / "examples" / "models", repo)
    make_models.write(make_models.identity_all_types(), repo, "dtypes")
    make_models.write(make_models.identity("FP32"), repo, "batched")
    (repo / "batched" / "config.pbtxt").write_text(BATCHED)
    make_models.write(make_models.scale(5.0), repo, "spare")
    make_models.write(make_models.elementwise("Mul", 2.0), repo, "double")
    make_models.write(make_models.elementwise("Add", 1.0), repo, "batched_inc")
    (repo / "batched_inc" / "config.pbtxt").write_text(BATCHED)
    make_models.write(make_models.elementwise("Add", 1.0), repo, "inc")
    for name, second in (("chain", "batched_inc"), ("pair", "inc")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(CHAIN.replace("STEP2", second))
    chain_reference(repo).write_bytes(make_models._model(
        [helper.make_node("Mul", ["IN", "two"], ["d"]), helper.make_node("Add", ["d", "one"], ["OUT"])],
        [helper.make_tensor_value_info("IN", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")]).SerializeToString())
    return repo


CHAIN = """platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "double" model_version: -1 input_map { key: "x" value: "IN" } output_map { key: "y" value: "D" } },
  { model_name: "STEP2" model_version: -1 input_map { key: "x" value: "D" } output_map { key: "y" value: "OUT" } }
] }
"""


def chain_reference(repo: Path) -> Path:
    """``chain`` and ``pair`` as one ONNX model (OUT = IN * 2 + 1), outside the repository."""
    return repo.parent / "chain-reference.onnx"


def words(shm_key: str) -> list[str]:
    """Strings a hostile client would put in a name, version, datatype or key."""
    names = ["mlp", "scale", "mixed", "strings", "dtypes", "batched", "spare", "chain", "pair", "nope", "../mlp",
             "mlp/1", "s3://bucket/mlp.onnx", "s3://", "http://x/mlp"]
    versions = ["1", "2", "0", "-1", "18446744073709551616", "stable", " 1"]
    tensors = ["input", "output", "x", "y", "a", "b", "c", "sum", "text", "upper", "in_FP32", "out_BYTES", "IN", "OUT"]
    params = ["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size", "binary_data",
              "classification", "priority", "timeout", "binary_data_output", "sequence_id"]
    return [*names, *versions, *tensors, *params, *DATATYPES, "FP8", "fp32", "region", shm_key, "/", "/nope"]


def _infer(repo: Path, model: str, inputs: dict[str, np.ndarray], outputs: list[str], *, version: str = "",
           typed: bool = False) -> Seed:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=f"seed-{model}")
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else next(
            d.name for d in DATATYPES.values() if d.numpy == array.dtype)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        contents = DATATYPES[datatype].contents
        if typed and contents:
            values = array.ravel().tolist()
            getattr(tensor.contents, contents).extend(values)
        elif datatype == "BYTES":
            request.raw_input_contents.append(_wire.pack_bytes(array.ravel().tolist()))
        else:
            request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    path = repo / model / (version or str(max(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())))
    return Seed(OIP + "ModelInfer", request, model=path / "model.onnx", feeds=inputs, outputs=outputs)


def _dtype_inputs() -> dict[str, np.ndarray]:
    """Inputs of ``dtypes``: every type numpy and ONNX Runtime's Python API share (not BF16)."""
    out = {}
    for name in make_models.ALL_TYPES:
        datatype = DATATYPES[name]
        if name == "BYTES":
            out[f"in_{name}"] = np.array([[b"a", b"", b"xyz"]], dtype=object)
        else:
            out[f"in_{name}"] = (np.arange(3) % 2 if name == "BOOL" else np.arange(3)).astype(datatype.numpy)[None]
    return out


def infer_seeds(repo: Path) -> list[Seed]:
    rng = np.random.default_rng(0)
    dtypes = _dtype_inputs()
    return [
        _infer(repo, "mlp", {"input": rng.standard_normal((2, 16)).astype(np.float32)}, ["output"]),
        _infer(repo, "scale", {"x": np.arange(4, dtype=np.float32)}, ["y"], version="1"),
        _infer(repo, "scale", {"x": np.arange(4, dtype=np.float32)}, [], version="2", typed=True),
        _infer(repo, "mixed", {"a": np.ones((1, 4), np.float32), "b": np.arange(4, dtype=np.int64)[None],
                               "c": np.array([[True, False, True, False]])}, ["sum", "b_next", "c_not", "a_half"]),
        _infer(repo, "strings", {"text": np.array([b"abc", b"", b"Hello"], dtype=object)}, ["upper"]),
        _infer(repo, "strings", {"text": np.array([b"abc", b"q"], dtype=object)}, ["upper"], typed=True),
        _infer(repo, "dtypes", dtypes, [f"out_{d}" for d in make_models.ALL_TYPES]),
        _infer(repo, "mixed", {"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.int64),
                               "c": np.zeros((2, 4), bool)}, ["c_not"], typed=True),
        _infer(repo, "batched", {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, ["y"]),
        _ensemble_seed(repo, "chain"),
        _ensemble_seed(repo, "pair"),
    ]


def _ensemble_seed(repo: Path, name: str) -> Seed:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = pb.ModelInferRequest(model_name=name, id=f"seed-{name}", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="IN", datatype="FP32", shape=[2, 4])
    request.outputs.add(name="OUT")
    return Seed(OIP + "ModelInfer", request, model=chain_reference(repo), feeds={"IN": x}, outputs=["OUT"])


def shm_seeds(repo: Path, region: shared_memory.SharedMemory) -> list[Seed]:
    """Register the region, infer ``scale`` from and into it, ask its status, unregister."""
    key = "/" + region.name
    np.ndarray((4,), np.float32, region.buf)[:] = np.arange(4, dtype=np.float32)
    infer = pb.ModelInferRequest(model_name="scale", model_version="1")
    tensor = infer.inputs.add(name="x", datatype="FP32", shape=[4])
    output = infer.outputs.add(name="y")
    for params, offset in ((tensor.parameters, 0), (output.parameters, 16)):
        params["shared_memory_region"].string_param = "region"
        params["shared_memory_offset"].int64_param = offset
        params["shared_memory_byte_size"].int64_param = 16
    return [
        Seed(OIP + "SystemSharedMemoryRegister",
             pb.SystemSharedMemoryRegisterRequest(name="region", key=key, offset=0, byte_size=64)),
        Seed(OIP + "ModelInfer", infer),
        Seed(OIP + "SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(name="region")),
        Seed(OIP + "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name="region")),
        Seed(OIP + "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest()),  # all of them
        Seed(OIP + "CudaSharedMemoryRegister",
             pb.CudaSharedMemoryRegisterRequest(name="gpu", raw_handle=bytes(64), device_id=0, byte_size=64)),
        Seed(OIP + "CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest()),
        Seed(OIP + "CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest(name="gpu")),
    ]


def control_seeds() -> list[Seed]:
    """Everything but inference: metadata, repository, ICOW, rollout, health, reflection."""
    icow = lc.InferenceRequest(model_key="s3://models/mlp.onnx", outputs=["output"])
    array = icow.named_inputs.name_to_array["input"]
    array.shape.extend([1, 16])
    array.float_array.values.extend([0.5] * 16)
    unnamed = lc.InferenceRequest(model_key="scale", model_version="2")
    item = unnamed.unnamed_inputs.arrays.add(shape=[4])
    item.float_array.values.extend([1.0, 2.0, 3.0, 4.0])
    routing = rp.SetRoutingRequest(model_name="scale", labels={"stable": 1}, replace_split=True)
    routing.split.add(target="stable", weight=1)
    return [
        Seed(OIP + "ServerLive", pb.ServerLiveRequest()),
        Seed(OIP + "ServerReady", pb.ServerReadyRequest()),
        Seed(OIP + "ServerMetadata", pb.ServerMetadataRequest()),
        Seed(OIP + "ModelReady", pb.ModelReadyRequest(name="mlp", version="1")),
        Seed(OIP + "ModelMetadata", pb.ModelMetadataRequest(name="dtypes")),
        Seed(OIP + "ModelConfig", pb.ModelConfigRequest(name="scale", version="2")),
        Seed(OIP + "ModelStatistics", pb.ModelStatisticsRequest(name="batched")),
        Seed(OIP + "RepositoryIndex", pb.RepositoryIndexRequest(ready=True)),
        Seed(OIP + "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="spare")),
        Seed(OIP + "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="spare")),
        Seed(OIP + "TraceSetting", pb.TraceSettingRequest(model_name="mlp")),
        Seed(OIP + "ModelStreamInfer", pb.ModelInferRequest(model_name="mlp"), stream=True),
        Seed("/ICOW/get_inference", icow),
        Seed("/ICOW/get_inference", unnamed),
        Seed("/icow.rollout.ModelRollout/GetRouting", rp.GetRoutingRequest(model_name="scale")),
        Seed("/icow.rollout.ModelRollout/SetRouting", routing),
        Seed("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service="mlp")),
        Seed(REFLECTION, reflection_pb2.ServerReflectionRequest(list_services=""), stream=True),
        Seed(REFLECTION, reflection_pb2.ServerReflectionRequest(file_containing_symbol="ICOW"), stream=True),
    ]


def seeds(repo: Path, region: shared_memory.SharedMemory) -> list[Seed]:
    return [*infer_seeds(repo), *shm_seeds(repo, region), *control_seeds()]


# -- HTTP/REST --------------------------------------------------------------------

@dataclass
class HttpSeed:
    method: str
    path: str
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def raw(self) -> bytes:
        """The request as bytes on the wire, Content-Length counted."""
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: fuzz", *(f"{k}: {v}" for k, v in self.headers)]
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _json_infer(model: str, inputs: dict[str, np.ndarray], **parameters) -> bytes:
    tensors = [{"name": n, "datatype": "BYTES" if a.dtype == object else next(
        d.name for d in DATATYPES.values() if d.numpy == a.dtype), "shape": list(a.shape),
        "data": [v.decode() for v in a.ravel()] if a.dtype == object else a.tolist()} for n, a in inputs.items()]
    request = {"id": f"http-{model}", "inputs": tensors}
    if parameters:
        request["parameters"] = parameters
    return orjson.dumps(request)


def http_seeds(region: shared_memory.SharedMemory) -> list[HttpSeed]:
    """Valid REST requests: JSON and binary inference, metadata, the index, the
    repository, shared-memory registration and inference from it."""
    key = "/" + region.name
    x = np.arange(4, dtype=np.float32)
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                     "parameters": {"binary_data_size": 16}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    shm = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {
        "shared_memory_region": "region", "shared_memory_byte_size": 16}}], "outputs": [{"name": "y", "parameters": {
            "shared_memory_region": "region", "shared_memory_offset": 16, "shared_memory_byte_size": 16}}]})
    pair_head = orjson.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [2, 4],
                                          "parameters": {"binary_data_size": 32}}],
                              "outputs": [{"name": "OUT", "parameters": {"binary_data": True}}]})
    json_type = [("Content-Type", "application/json")]
    return [
        HttpSeed("POST", "/v2/models/scale/versions/1/infer", _json_infer("scale", {"x": x}), json_type),
        HttpSeed("POST", "/v2/models/mixed/infer", _json_infer(
            "mixed", {"a": np.ones((1, 4), np.float32), "b": np.arange(4, dtype=np.int64)[None],
                      "c": np.array([[True, False, True, False]])}, binary_data_output=True)),
        HttpSeed("POST", "/v2/models/strings/infer", _json_infer("strings", {"text": np.array([b"ab", b""], object)})),
        HttpSeed("POST", "/v2/models/dtypes/infer", _json_infer("dtypes", _dtype_inputs())),
        HttpSeed("POST", "/v2/models/scale/versions/2/infer", head + x.tobytes(),
                 [("Inference-Header-Content-Length", str(len(head))), ("Content-Type", "application/octet-stream")]),
        HttpSeed("POST", "/v2/models/pair/infer", pair_head + x.tobytes() + x.tobytes(),
                 [("Inference-Header-Content-Length", str(len(pair_head)))]),
        HttpSeed("POST", "/v2/models/batched/infer", _json_infer("batched", {"x": np.ones((2, 3), np.float32)},
                                                                 timeout=1000000)),
        HttpSeed("GET", "/v2"),
        HttpSeed("GET", "/v2/health/ready"),
        HttpSeed("GET", "/v2/models/dtypes"),
        HttpSeed("GET", "/v2/models/scale/versions/2/ready"),
        HttpSeed("GET", "/v2/models/scale/config"),
        HttpSeed("GET", "/v2/models/batched/stats"),
        HttpSeed("POST", "/v2/repository/index", b'{"ready": true}', json_type),
        HttpSeed("POST", "/v2/repository/models/spare/load", b"{}"),
        HttpSeed("POST", "/v2/repository/models/spare/unload", b'{"parameters": {"unload_dependents": false}}'),
        HttpSeed("POST", "/v2/systemsharedmemory/region/region/register",
                 orjson.dumps({"key": key, "offset": 0, "byte_size": 64}), json_type),
        HttpSeed("GET", "/v2/systemsharedmemory/status"),
        HttpSeed("POST", "/v2/models/scale/versions/1/infer", shm, json_type),
        HttpSeed("POST", "/v2/systemsharedmemory/region/region/unregister"),
        HttpSeed("POST", "/v2/cudasharedmemory/region/gpu/register",
                 b'{"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}'),
    ]
