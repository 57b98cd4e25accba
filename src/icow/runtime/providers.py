"""Where a session runs: ONNX Runtime execution providers for a CPU or a CUDA
device, checked against what the session really got.

ONNX Runtime does not fail when a provider it was asked for cannot start (no
CUDA in the installed package, no driver, no device): it logs and runs on the
CPU. A model that was meant for a GPU and silently runs on the CPU is slower by
orders of magnitude, so icow compares the session's own providers with the ones
it asked for and refuses the model, unless its config allows the fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from .._proto import model_config_pb2 as mc
from .config import ConfigError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
FALLBACK_PARAMETER = "allow_cpu_fallback"  # config.pbtxt parameters: "true" lets a GPU model run on the CPU


def wanted(device: int | None, config: mc.ModelConfig) -> list:
    """The providers to ask for, in order of preference."""
    if device is None:
        return [CPU]
    options = {"device_id": device}
    chain: list = [(CUDA, options), CPU]
    if _tensorrt(config):
        chain.insert(0, (TENSORRT, options))
    return chain


def create_session(path: Path, options: ort.SessionOptions, device: int | None,
                   config: mc.ModelConfig) -> tuple[ort.InferenceSession, int | None]:
    """A session on ``device`` (None: the CPU), and the device it really runs on.

    Raises ConfigError when a GPU was asked for and the session did not get one,
    unless the config's ``allow_cpu_fallback`` parameter is "true"."""
    if device is not None and CUDA not in ort.get_available_providers():
        return _fallback(path, options, config, device,
                         f"this onnxruntime ({ort.__version__}) has no {CUDA} (it offers "
                         f"{', '.join(ort.get_available_providers())}); install icow[gpu] instead of "
                         "icow[server] (README: Running on a GPU)")
    session = ort.InferenceSession(str(path), options, providers=wanted(device, config))
    if device is not None and CUDA not in session.get_providers():
        return _fallback(path, options, config, device,
                         f"onnxruntime could not start {CUDA} on device {device} (no driver, no such "
                         "device, or a CUDA/cuDNN version onnxruntime-gpu does not support; its log says which)")
    if _tensorrt(config) and device is not None and TENSORRT not in session.get_providers():
        log.warning("%s: TensorRT was asked for but is not in use; running with %s", path,
                    ", ".join(session.get_providers()))
    return session, device


def _fallback(path: Path, options: ort.SessionOptions, config: mc.ModelConfig, device: int,
              reason: str) -> tuple[ort.InferenceSession, None]:
    parameter = config.parameters.get(FALLBACK_PARAMETER)
    if parameter is None or parameter.string_value.lower() != "true":
        raise ConfigError(f"the model is to run on GPU {device}, but {reason}. To let it run on the CPU "
                          f"instead, set parameters {{ key: \"{FALLBACK_PARAMETER}\" value: {{ string_value: "
                          "\"true\" } }")
    log.warning("%s: running on the CPU, as its config allows: %s", path, reason)
    return ort.InferenceSession(str(path), options, providers=[CPU]), None


def _tensorrt(config: mc.ModelConfig) -> bool:
    """TensorRT is opted into as in Triton: optimization { execution_accelerators {
    gpu_execution_accelerator: [ { name: "tensorrt" } ] } }."""
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    return any(a.name == "tensorrt" for a in accelerators)
