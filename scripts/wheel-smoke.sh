#!/usr/bin/env bash
# The wheel, as a user gets it:
# 1. icow's manylinux wheel (scripts/build-wheel.sh) in a fresh virtualenv: icow._plane
#    imports and finds the gRPC C++ libraries in the wheel's icow.libs/, not the system's;
#    `icow serve` from there (bundled examples) completes one inference with tritonclient
#    and one through lIteCOW's ICOW service, and two over HTTP/REST (JSON and binary).
# 2. A source build where pkg-config finds no grpc++ (as on a machine without the gRPC C++
#    libraries): it says it skips icow._plane, installs, has no native plane and serves
#    the same two inferences.
# 3. The wheel without extras (the client's dependencies only): icow.Client and
#    `icow models --help` work, and nothing imports onnxruntime.
# Needs what build-wheel.sh needs, libgrpc++-dev included (scripts/install-system-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "wheel-smoke: FAIL: $*" >&2
  exit 1
}

bash scripts/build-wheel.sh "$work/dist" >/dev/null
wheel="$(ls "$work"/dist/icow-*.whl)"
echo "wheel-smoke: built $(basename "$wheel")"
# The same build without the libraries: an empty pkg-config search path hides grpc++.
mkdir "$work/no-pkgconfig"
PKG_CONFIG_LIBDIR="$work/no-pkgconfig" bash scripts/build-wheel.sh "$work/dist-nogrpc" >/dev/null 2>"$work/nogrpc.log" \
  || { cat "$work/nogrpc.log" >&2; fail "the build without grpc++ failed"; }
skipped="$(grep -m1 '^icow: not building icow._plane' "$work/nogrpc.log")" \
  || { cat "$work/nogrpc.log" >&2; fail "the build without grpc++ did not say that it skips icow._plane"; }
echo "wheel-smoke: the build without grpc++ says: $skipped"
wheel_nogrpc="$(ls "$work"/dist-nogrpc/icow-*.whl)"

python3 -m venv "$work/env"
py="$work/env/bin/python"
"$py" -m pip install -q "${wheel}[server]" "tritonclient[grpc]==2.73.0"
cd "$work"  # nothing from the checkout on the path: only the installed wheel

# icow._plane loads, and every library it needs beyond what manylinux lets a wheel take
# from the system (libc, libm, libstdc++, libgcc_s, libz, ...) comes from the wheel's
# icow.libs/: libgrpc++, libgrpc, libgpr, abseil, and what they pull in.
plane_so="$("$py" -c 'import icow._plane as p; print(p.__file__)')" \
  || fail "import icow._plane fails in a fresh virtualenv with the manylinux wheel"
libs_dir="$(realpath "$(dirname "$plane_so")/../icow.libs")"
ldd "$plane_so" >"$work/ldd.txt"
vendored=""  # the names resolved into icow.libs/, one a line
while read -r name arrow path _; do
  [ "$arrow" = "=>" ] || continue  # linux-vdso, the loader's absolute path
  [ "$path" != not ] || { cat "$work/ldd.txt" >&2; fail "$name: not found"; }
  resolved="$(realpath -e "$path")"
  if [ "$(dirname "$resolved")" = "$libs_dir" ]; then
    vendored+="$name"$'\n'
    continue
  fi
  case "$name" in libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|libz.so.*|libpthread.so.*|libdl.so.*|librt.so.*) ;;
    *) cat "$work/ldd.txt" >&2
       fail "icow._plane takes $name from $resolved, not from the wheel's $libs_dir" ;;
  esac
done <"$work/ldd.txt"
for lib in 'libgrpc++[-.]' 'libgrpc[-.]' 'libgpr[-.]' 'libabsl_'; do
  grep -q "^$lib" <<<"$vendored" || { cat "$work/ldd.txt" >&2; fail "ldd of $plane_so resolves no $lib in $libs_dir"; }
done
echo "wheel-smoke: icow._plane loads, with its $(grep -c . <<<"$vendored") libraries from the wheel's icow.libs/"

cat >"$work/client.py" <<'PY'
import sys, time
import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
for _ in range(300):
    try:
        if client.is_server_ready():
            break
    except Exception:
        pass
    time.sleep(0.1)
else:
    sys.exit("icow serve did not become ready")
x = tc.InferInput("x", [4], "FP32")
x.set_data_from_numpy(np.arange(4, dtype=np.float32))
y = client.infer("scale", [x]).as_numpy("y")
assert y.tolist() == [0.0, 3.0, 6.0, 9.0], y
print("wheel-smoke: inference through the installed wheel OK:", y.tolist())

# lIteCOW's ICOW service, on the same port, with the stubs the wheel carries
import grpc
from icow._proto import litecow_pb2 as lc, litecow_pb2_grpc

stub = litecow_pb2_grpc.ICOWStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}"))
x = lc.Array(shape=[4], float_array=lc.FloatArray(values=[0, 1, 2, 3]))
reply = stub.get_inference(lc.InferenceRequest(model_key="s3://models/scale", model_version="1",
                                               unnamed_inputs=lc.ArrayList(arrays=[x])))
assert list(reply.name_to_array["y"].float_array.values) == [0.0, 2.0, 4.0, 6.0], reply
print("wheel-smoke: ICOW/get_inference through the installed wheel OK")

# HTTP/REST on its port: JSON tensors, and binary ones (answered by icow._plane where it loads)
import json, urllib.request

def post(body: bytes, headers: dict) -> tuple[bytes, str | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[2]}/v2/models/scale/infer", body, headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read(), answer.headers.get("Inference-Header-Content-Length")

data, _ = post(json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0, 1, 2, 3]}]}).encode(),
               {"Content-Type": "application/json"})
assert json.loads(data)["outputs"][0]["data"] == [0.0, 3.0, 6.0, 9.0], data
header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}],
                     "parameters": {"binary_data_output": True}}).encode()
data, length = post(header + np.arange(4, dtype=np.float32).tobytes(), {"Inference-Header-Content-Length": str(len(header))})
assert np.frombuffer(data[int(length):], dtype="<f4").tolist() == [0.0, 3.0, 6.0, 9.0], data
print("wheel-smoke: HTTP/REST inference (JSON and binary) through the installed wheel OK")
PY

# Start `icow serve` from the virtualenv, run client.py against it, stop it.
serve_and_infer() {
  local port http_port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  http_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$work/env/bin/icow" serve --port "$port" --metrics-port 0 --http-port "$http_port" >"$work/server.log" 2>&1 &
  server_pid=$!
  "$py" "$work/client.py" "$port" "$http_port" || { cat "$work/server.log" >&2; fail "inference through the installed wheel"; }
}

serve_and_infer
# `icow serve` is on the native data plane by default where icow._plane loads
grep -q "serving on the native data plane" "$work/server.log" || { cat "$work/server.log" >&2; fail "not ready on the native data plane"; }
kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
server_pid=""

# The build without grpc++, in place of the manylinux wheel (same dependencies).
"$py" -m pip install -q --force-reinstall --no-deps "$wheel_nogrpc"
[ ! -e "$libs_dir" ] || fail "$libs_dir is still there after the wheel without icow._plane replaced the manylinux wheel"
"$py" - <<'PY' || fail "the build without grpc++ has a native plane, or says nothing about it"
from icow.services import plane as native_plane

assert native_plane.available() is False
assert "icow._plane cannot be imported" in native_plane.UNAVAILABLE_REASON, native_plane.UNAVAILABLE_REASON
print("wheel-smoke: without grpc++:", native_plane.UNAVAILABLE_REASON)
PY
serve_and_infer
# without it, the server falls back to grpcio and says so
grep -q "serving on the grpcio data plane (icow._plane is not built: bash scripts/install.sh" "$work/server.log" \
  || { cat "$work/server.log" >&2; fail "no fallback to the grpcio data plane in the ready line"; }
kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
server_pid=""

# The client alone: the wheel with its base dependencies (grpcio, protobuf, numpy) and nothing else.
python3 -m venv "$work/client-env"
"$work/client-env/bin/python" -m pip install -q "$wheel"
"$work/client-env/bin/python" - <<'PY' || fail "the client needs more than grpcio, protobuf and numpy"
import sys

import icow

icow.Client, icow.AsyncClient, icow.InferenceServerError
import icow.cli, icow.client.admin  # icow models ... runs here too

assert not any(m.split(".")[0] in ("onnxruntime", "onnx") for m in sys.modules), sorted(sys.modules)
print("wheel-smoke: the client imports with the base dependencies only, and no onnxruntime")
PY
"$work/client-env/bin/icow" models --help >/dev/null || fail "icow models --help without the server extra"
