#!/usr/bin/env bash
# Install the Debian packages needed to generate and build a C++ gRPC client from proto/
# (tests/test_cpp_client.py) and to fuzz the parser (scripts/fuzz.sh). Idempotent: installs only what is missing; quiet.
set -euo pipefail

PACKAGES=(
  protobuf-compiler        # protoc
  protobuf-compiler-grpc   # grpc_cpp_plugin
  libprotobuf-dev
  libgrpc++-dev            # grpc++.pc for pkg-config
  pkg-config
  g++
  clang-14                 # the parser fuzzer (scripts/fuzz.sh): libFuzzer, ASan, UBSan
  libclang-rt-14-dev
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
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
