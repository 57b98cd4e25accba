"""Where models run: --device and instance_group, the providers a session really
got, and what happens when CUDA is asked for and cannot be had.

The tests marked ``gpu`` need onnxruntime-gpu and a CUDA device; elsewhere they
skip and say so. The others run everywhere: on a machine without CUDA they check
the refusal and the fallback."""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

import make_models
from helpers import expect_error, infer_input, reference
from icow.protocol.datatypes import DATATYPES
from icow.repository.repository import Repository

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu (icow[gpu]) and a CUDA device; "
                                                    f"this onnxruntime offers {ort.get_available_providers()}")
no_cuda_here = pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
FALLBACK = 'parameters { key: "allow_cpu_fallback" value: { string_value: "true" } }\n'


def _mlp_repo(root: Path, config: str = "") -> Path:
    make_models.write(make_models.mlp(), root, "mlp")
    if config:
        (root / "mlp" / "config.pbtxt").write_text(config)
    return root


def test_model_config_shows_where_the_model_runs(server):
    config = tc.InferenceServerClient(server.url).get_model_config("mlp").config
    assert [(g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [(2, 1, [])]  # KIND_CPU
    assert config.parameters["execution_providers"].string_value == "CPUExecutionProvider"


def test_the_device_flag_is_checked(capsys):
    from icow.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["serve", "--device", "gpu0"])
    assert exit.value.code == 2
    assert "device must be cpu, cuda or cuda:N, not 'gpu0'" in capsys.readouterr().err


@no_cuda_here
def test_a_gpu_model_without_cuda_is_unavailable_with_the_reason(make_server, tmp_path):
    srv = make_server(_mlp_repo(tmp_path / "models"), "--device", "cuda")
    client = tc.InferenceServerClient(srv.url)
    [entry] = client.get_model_repository_index().models
    assert entry.state == "UNAVAILABLE"
    assert "has no CUDAExecutionProvider" in entry.reason and "icow[gpu]" in entry.reason
    assert "allow_cpu_fallback" in entry.reason
    with expect_error(grpc.StatusCode.UNAVAILABLE, "has no CUDAExecutionProvider"):
        client.infer("mlp", [infer_input("input", np.zeros((1, 16), np.float32), "FP32")])


@no_cuda_here
def test_kind_gpu_falls_back_to_the_cpu_only_when_the_config_allows(tmp_path):
    config = "instance_group { kind: KIND_GPU gpus: [ 1 ] }\n"
    refused = Repository(_mlp_repo(tmp_path / "a", config)).load("mlp")
    assert "is to run on GPU 1" in refused.versions[1].reason
    repository = Repository(_mlp_repo(tmp_path / "b", config + FALLBACK))
    repository.load("mlp")
    model = repository.get("mlp")
    assert model.instances[0].device is None
    assert model.config.parameters["execution_providers"].string_value == "CPUExecutionProvider"
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(model.run({"input": x})["output"],
                               reference(tmp_path / "b" / "mlp" / "1" / "model.onnx", {"input": x})["output"],
                               rtol=1e-6)


def test_instance_groups_place_instances_per_device():
    from icow._proto import model_config_pb2 as mc
    from icow.runtime import execution as scheduling

    config = mc.ModelConfig()
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    plan = scheduling.instances(config, cpus=10)
    assert plan.devices == (0, 1, 0, 1, None)
    assert plan.intra_op_threads == 2
    assert scheduling.instances(mc.ModelConfig(), cpus=4, default_device=3).devices == (3,)
    assert scheduling.parse_device("cuda:2") == 2 and scheduling.parse_device("cpu") is None


# -- on a GPU ---------------------------------------------------------------------

@gpu
@needs_gpu
def test_gpu_results_equal_the_cpu_results(make_server, tmp_path):
    repo = _mlp_repo(tmp_path / "models")
    for name in ("FP16", "FP32", "FP64", "INT64", "UINT8", "BOOL"):
        make_models.write(make_models.identity(name), repo, f"identity_{name}")
    srv = make_server(repo, "--device", "cuda:0")
    client = tc.InferenceServerClient(srv.url)
    config = client.get_model_config("mlp").config
    assert config.parameters["execution_providers"].string_value.startswith("CUDAExecutionProvider")
    x = np.random.default_rng(0).standard_normal((8, 16), dtype=np.float32)
    y = client.infer("mlp", [infer_input("input", x, "FP32")]).as_numpy("output")
    np.testing.assert_allclose(y, reference(repo / "mlp" / "1" / "model.onnx", {"input": x})["output"],
                               rtol=1e-5, atol=1e-5)  # GPU kernels sum in another order
    for name in ("FP16", "FP32", "FP64", "INT64", "UINT8", "BOOL"):
        array = np.arange(6).reshape(2, 3).astype(DATATYPES[name].numpy)
        got = client.infer(f"identity_{name}", [infer_input("x", array, name)]).as_numpy("y")
        assert got.dtype == array.dtype and np.array_equal(got, array)


@gpu
@needs_gpu
def test_many_concurrent_clients_on_the_gpu(make_server, tmp_path):
    batching = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    repo = _mlp_repo(tmp_path / "models", batching)
    srv = make_server(repo, "--device", "cuda", "--workers", "32")
    path = repo / "mlp" / "1" / "model.onnx"

    def call(i):
        client = tc.InferenceServerClient(srv.url)
        x = np.random.default_rng(i).standard_normal((1 + i % 4, 16), dtype=np.float32)
        for _ in range(20):
            y = client.infer("mlp", [infer_input("input", x, "FP32")]).as_numpy("output")
            np.testing.assert_allclose(y, reference(path, {"input": x})["output"], rtol=1e-4, atol=1e-4)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(16)))
    stats = tc.InferenceServerClient(srv.url).get_inference_statistics("mlp").model_stats[0]
    assert stats.execution_count < stats.inference_stats.success.count


def _gpu_memory_mib(pid: int) -> int:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(used) for p, used in (line.split(",") for line in out.splitlines() if line.strip())
               if int(p) == pid)


@gpu
@needs_gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi to read device memory")
def test_device_memory_returns_after_unload(make_server, tmp_path):
    from bench.models import MLP1024_LAYERS, perceptron

    repo = tmp_path / "models"
    make_models.write(perceptron(MLP1024_LAYERS, "big"), repo, "big")
    srv = make_server(repo, "--device", "cuda", "--model-control-mode", "explicit")
    client = tc.InferenceServerClient(srv.url)
    idle = _gpu_memory_mib(srv.proc.pid)
    for _ in range(3):
        client.load_model("big")
        client.infer("big", [infer_input("x", np.ones((4, 1024), np.float32), "FP32")])
        assert _gpu_memory_mib(srv.proc.pid) > idle + 90  # 100 MB of weights on the device
        client.unload_model("big")
        deadline = time.monotonic() + 60  # an unload drains first, then releases the sessions
        while _gpu_memory_mib(srv.proc.pid) > idle + 64 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gpu_memory_mib(srv.proc.pid) <= idle + 64  # the arena of an unloaded session goes with it
