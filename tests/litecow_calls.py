"""Runs inside the litecow 0.1.0 virtualenv (see litecow_client.py), never under
pytest: reads {"url", "calls"} as JSON on stdin, makes each call with
``litecow.client.ICOWClient`` exactly as a lIteCOW user would, and prints the
results as JSON: outputs, or the gRPC error, or the client's own exception."""

import json
import sys

import grpc
import numpy as np
from litecow.client import ICOWClient


def decode(data):
    return np.array(data["values"], dtype=data["dtype"]).reshape(data["shape"])


def encode(array):
    return {"dtype": str(array.dtype), "shape": list(array.shape), "values": array.ravel().tolist()}


def main():
    request = json.load(sys.stdin)
    client = ICOWClient(grpc.insecure_channel(request["url"]))
    results = []
    for call in request["calls"]:
        sent = call["inputs"]
        if "dict" in sent:
            inputs = {name: decode(a) for name, a in sent["dict"].items()}
        elif "list" in sent:
            inputs = [decode(a) for a in sent["list"]]
        else:
            inputs = decode(sent["array"])
        try:
            outputs = client.get_inference(call["model_key"], inputs, outputs=call["outputs"],
                                           model_version=call["model_version"])
        except grpc.RpcError as e:
            results.append({"code": e.code().name, "details": e.details()})
        except Exception as e:  # the client's own failure, e.g. on a message it cannot read
            results.append({"exception": f"{type(e).__name__}: {e}"})
        else:
            results.append({"outputs": {name: encode(np.asarray(a)) for name, a in outputs.items()}})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
