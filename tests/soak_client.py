"""A client process of the soak test (tests/test_soak.py).

    python soak_client.py URL steady SECONDS OUT.json   calls mlp and scale in a loop, checks every answer
    python soak_client.py URL victim                    starts a long call and waits to be killed
    python soak_client.py URL burst SECONDS OUT.json    fires many long calls at once, again and again
"""

from __future__ import annotations

import collections
import functools
import json
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

# The clear errors a well-formed call may get while the test unloads models and
# overfills the server; anything else is a fault.
EXPECTED = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"}


@functools.lru_cache
def mlp_weights() -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    import make_models  # the example model's weights, as make_models builds them

    return {w.name: numpy_helper.to_array(w) for w in make_models.mlp().graph.initializer}


def mlp_reference(x: np.ndarray) -> np.ndarray:
    weights = mlp_weights()
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0)
    return hidden @ weights["w2"] + weights["b2"]


def steady(url: str, seconds: float, out: str) -> None:
    client = tc.InferenceServerClient(url)
    rng = np.random.default_rng()
    counts: collections.Counter = collections.Counter()
    faults: list[str] = []
    end = time.monotonic() + seconds
    calls = 0
    while time.monotonic() < end and calls < 1_000_000:
        calls += 1
        try:
            if calls % 2:
                x = rng.random((int(rng.integers(1, 9)), 16), dtype=np.float32)
                tensor = tc.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                y = client.infer("mlp", [tensor]).as_numpy("output")
                good = np.allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-4)
            else:
                x = rng.random(4, dtype=np.float32)
                tensor = tc.InferInput("x", [4], "FP32")
                tensor.set_data_from_numpy(x)
                y = client.infer("scale", [tensor], model_version="1").as_numpy("y")
                good = np.allclose(y, 2 * x)
            counts["ok" if good else "wrong"] += 1
            if not good:
                faults.append(f"wrong answer on call {calls}")
        except InferenceServerException as e:
            counts[e.status()] += 1
            if e.status() not in EXPECTED:
                faults.append(f"{e.status()}: {e.message()}")
    with open(out, "w") as f:
        json.dump({"counts": counts, "faults": faults[:20]}, f)


def victim(url: str) -> None:
    client = tc.InferenceServerClient(url)
    x = np.ones(4 << 20, dtype=np.float32)  # 16 MiB in, 16 MiB out: killed mid-transfer or mid-run
    tensor = tc.InferInput("x", [x.size], "FP32")
    tensor.set_data_from_numpy(x)
    print("sending", flush=True)
    for _ in range(1000):
        client.infer("big", [tensor])


def burst(url: str, seconds: float, out: str) -> None:
    client = tc.InferenceServerClient(url)
    counts: collections.Counter = collections.Counter()
    faults: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end and rounds < 10_000:
        rounds += 1
        done = threading.Semaphore(0)

        def callback(result, error, done=done):
            with lock:
                if error is None:
                    counts["ok"] += 1
                else:
                    counts[error.status()] += 1
                    if error.status() not in EXPECTED:
                        faults.append(f"{error.status()}: {error.message()}")
            done.release()

        for _ in range(12):
            inputs = [tc.InferInput("x", [1], "FP32"), tc.InferInput("n", [2], "INT64")]
            inputs[0].set_data_from_numpy(np.ones(1, np.float32))
            inputs[1].set_data_from_numpy(np.array([300, 300], np.int64))
            client.async_infer("slow", inputs, callback=callback)
        for _ in range(12):
            done.acquire()
    with open(out, "w") as f:
        json.dump({"counts": counts, "faults": faults[:20]}, f)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "examples"))
    url, mode = sys.argv[1], sys.argv[2]
    if mode == "victim":
        victim(url)
    else:
        {"steady": steady, "burst": burst}[mode](url, float(sys.argv[3]), sys.argv[4])
