#!/usr/bin/env bash
# icow from this checkout, with the native gRPC data plane, on a fresh machine:
#   bash scripts/install.sh [PIP INSTALL ARGUMENTS]      (default: ".[server]")
# 1. With apt-get (Debian, Ubuntu): the system packages the build needs
#    (scripts/install-system-deps.sh plane: g++, pkg-config, libgrpc++-dev, Python headers).
# 2. A virtualenv in .venv, unless one is active (then icow goes into that one).
# 3. pip install, then one line that says which data plane `icow serve` will use.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  bash scripts/install-system-deps.sh plane
else
  echo "install: no apt-get: for the native data plane, install a C++ compiler, pkg-config and" \
       "the gRPC C++ libraries (so that 'pkg-config grpc++' finds them) before this" >&2
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

python -m pip install -q --upgrade pip
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(".[server]")
python -m pip install -q "${args[@]}"
python - <<'PY'  # icow._plane alone: `install.sh .` (the client only) has no onnxruntime
try:
    import icow._plane  # noqa: F401
except ImportError as e:
    print(f"install: icow serve will use the grpcio data plane, not the native one: icow._plane cannot be imported ({e})")
else:
    print("install: icow serve will use the native data plane (icow._plane)")
PY
