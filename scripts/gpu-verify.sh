#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the GPU tests and the GPU benchmarks, in one go.
#   bash scripts/gpu-verify.sh [results prefix]
# Needs icow installed with onnxruntime-gpu and the test tools (README: Running on a
# GPU), e.g. `pip install -e ".[gpu,bench]"` after `pip uninstall -y onnxruntime`.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"

python - <<'EOF'
import onnxruntime as ort
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    raise SystemExit("no CUDAExecutionProvider: install onnxruntime-gpu (pip install 'icow[gpu]')")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# The GPU tests must run, not skip: -rs lists any skip with its reason.
python -m pytest -m gpu -v -rs tests/test_gpu.py
python -m bench --device cuda --output "$prefix" \
  --scenarios ort_inprocess,echo_server,icow_native \
  --workloads convnet-b1-c1,convnet-b1-c16,convnet-batched-b1-c16,mlp1024-b1-c16,mlp1024-batched-b1-c16,identity-12MiB-c1
# An ensemble of three GPU models against three round trips and the in-process floor: its
# intermediate tensors cross the host between steps today (docs/native-plane.md, "Ensembles").
python -m bench.ensemble --device cuda --output "$prefix"
