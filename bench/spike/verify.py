"""Checks an echo server's answers with Triton's own HTTP client (perf_analyzer
does not look at outputs): every binary/JSON input × output pairing at 3×4,
and 12 MiB binary, must come back equal to what was sent.

    python -m bench.spike.verify PORT
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.http as http


def verify(port: int) -> dict[str, bool]:
    client = http.InferenceServerClient(f"127.0.0.1:{port}")
    results: dict[str, bool] = {}
    for shape in [(3, 4), (3072, 1024)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        for binary_in in (True, False):
            for binary_out in (True, False):
                if shape[0] > 3 and not (binary_in and binary_out):
                    continue  # 12 MiB as JSON text is not a case anyone should meet
                tensor = http.InferInput("INPUT0", list(shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary_in)
                reply = client.infer("identity", [tensor],
                                     outputs=[http.InferRequestedOutput("OUTPUT0", binary_data=binary_out)])
                y = reply.as_numpy("OUTPUT0")
                key = f"{shape[0]}x{shape[1]} {'bin' if binary_in else 'json'}->{'bin' if binary_out else 'json'}"
                results[key] = y is not None and np.array_equal(y.reshape(shape), x)
    return results


if __name__ == "__main__":
    out = verify(int(sys.argv[1]))
    print(out)
    sys.exit(0 if all(out.values()) else 1)
