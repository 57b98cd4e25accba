#!/usr/bin/env bash
# Install the Debian/Ubuntu packages icow needs, by group (default: all):
#   bash scripts/install-system-deps.sh [plane] [test]
#   plane  what `pip install .` needs to build both extensions, the native gRPC data plane
#          (icow._plane) included: a C++ compiler, pkg-config, the gRPC C++ libraries, and the
#          Python headers and venv module where the python3 in use has none (Debian's own python3)
#   test   a C++ gRPC client generated from proto/ (tests/test_cpp_client.py) and the parser
#          fuzzer (scripts/fuzz.sh)
# Idempotent: installs only what is missing, quietly; `sudo` when not root.
set -euo pipefail

groups=("$@")
[ "${#groups[@]}" -gt 0 ] || groups=(plane test)

PACKAGES=()
for group in "${groups[@]}"; do
  case "$group" in
    plane)
      PACKAGES+=(g++ pkg-config libgrpc++-dev)
      # Debian's python3 keeps its headers and venv in packages of their own.
      if ! python3 -c 'import os, sysconfig; assert os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
        PACKAGES+=(python3-dev)
      fi
      if ! python3 -c 'import ensurepip' 2>/dev/null; then
        PACKAGES+=(python3-venv)
      fi
      ;;
    test)
      PACKAGES+=(
        protobuf-compiler        # protoc
        protobuf-compiler-grpc   # grpc_cpp_plugin
        libprotobuf-dev
        libgrpc++-dev            # grpc++.pc for pkg-config
        pkg-config
        g++
        clang-14                 # the parser fuzzer (scripts/fuzz.sh): libFuzzer, ASan, UBSan
        libclang-rt-14-dev
      )
      ;;
    *)
      echo "install-system-deps: unknown group '$group' (plane, test)" >&2
      exit 2
      ;;
  esac
done

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1 && [[ ! " ${missing[*]} " == *" $pkg "* ]]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Quiet on success; show apt's output when something fails.
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-system-deps: apt-get failed" >&2
  exit 1
fi
