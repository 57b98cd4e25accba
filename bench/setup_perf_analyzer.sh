#!/usr/bin/env bash
# Installs Triton's C++ load generator perf_analyzer into bench/.perf-venv, apart
# from the project's venv: it ships only in the tritonclient 2.41.0 wheel, which
# must not replace the tritonclient the tests use.
#
#   bash bench/setup_perf_analyzer.sh        # then: python -m bench --client perf_analyzer
#
# What the binary needs on a CPU-only machine (see shared DESIGN.md):
#   - Debian's libb64-0d (installed with apt-get when missing and we are root);
#   - libcudart.so.12 from the PyPI package nvidia-cuda-runtime-cu12, whose folder
#     goes on LD_LIBRARY_PATH (bench/perf_analyzer.py does that when it runs it).
# Idempotent: a second run only checks.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.perf-venv"
python="${PYTHON:-python3}"

if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y --no-install-recommends libb64-0d >/dev/null \
            || { apt-get update >/dev/null && apt-get install -y --no-install-recommends libb64-0d >/dev/null; }
    else
        echo "perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d" >&2
        exit 1
    fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# 2.41.0's [grpc] extra does not pull protobuf; perf_analyzer itself needs none
# of the Python packages, but the wheel's tritonclient module would.
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    "tritonclient[grpc]==2.41.0" "protobuf<5" nvidia-cuda-runtime-cu12

cudart="$("$venv/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')"
LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$venv/bin/perf_analyzer" --version
echo "perf_analyzer ready: $venv/bin/perf_analyzer (LD_LIBRARY_PATH needs $cudart)"
