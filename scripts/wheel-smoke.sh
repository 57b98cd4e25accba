#!/usr/bin/env bash
# Build icow's wheel, install it into a fresh virtualenv, start `icow serve` from
# there (bundled examples) and complete one inference with tritonclient and one
# through lIteCOW's ICOW service.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

python3 -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install -q build
"$work/build-env/bin/python" -m build -q --wheel --outdir "$work/dist" . >/dev/null
wheel="$(ls "$work"/dist/icow-*.whl)"
echo "wheel-smoke: built $(basename "$wheel")"

python3 -m venv "$work/env"
"$work/env/bin/python" -m pip install -q "${wheel}[server]" "tritonclient[grpc]==2.73.0"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cd "$work"  # nothing from the checkout on the path: only the installed wheel
"$work/env/bin/icow" serve --port "$port" --metrics-port 0 >"$work/server.log" 2>&1 &
server_pid=$!

"$work/env/bin/python" - "$port" <<'PY'
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
PY
