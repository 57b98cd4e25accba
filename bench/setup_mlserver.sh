#!/usr/bin/env bash
# Installs MLServer 1.7.1 (Seldon's KServe-v2 server: the peer a user would pick
# instead of icow) into bench/.mlserver-venv, apart from the project's venv: its
# pins (fastapi, grpcio, protobuf, ...) must not move the ones icow is tested with.
#
#   bash bench/setup_mlserver.sh     # then: python -m bench --client perf_analyzer
#                                    #       (mlserver_rest, mlserver_grpc join that set)
#
# The bench's runtime (bench/baselines/mlserver_onnx.py) needs onnxruntime and
# numpy in the same venv. Idempotent: a second run only checks.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.mlserver-venv"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# uvloop < 0.22: from 0.22 (Oct 2025) MLServer 1.7.1's inference worker dies at
# start (asyncio.get_event_loop() in worker.py; SeldonIO/MLServer issue 2286).
"$venv/bin/pip" install --quiet --disable-pip-version-check "mlserver==1.7.1" "uvloop<0.22" onnxruntime numpy

"$venv/bin/mlserver" --version
echo "mlserver ready: $venv/bin/mlserver"
