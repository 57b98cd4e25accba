"""Call icow with its own client: pip install icow (grpcio, protobuf, numpy only).

    icow serve &            # the bundled example models on 127.0.0.1:8001
    python examples/clients/with_icow.py
"""

import numpy as np

import icow

with icow.Client("127.0.0.1:8001") as client:
    out = client.infer("mlp", {"input": np.random.default_rng(0).random((2, 16), dtype=np.float32)})
    print("mlp:", out["output"])
    x = np.arange(4, dtype=np.float32)
    print("scale v1:", client.infer("scale", [x], version="1")["y"], "newest:", client.infer("scale", [x])["y"])
    try:
        client.infer("scale", [x.astype(np.float64)])
    except icow.InferenceServerError as e:
        print("error:", e.code.name, e.message)
