"""Call icow with Triton's client: pip install "tritonclient[grpc]".

    icow serve &            # the bundled example models on 127.0.0.1:8001
    python examples/clients/with_tritonclient.py
"""

import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient("127.0.0.1:8001")
print("ready:", client.is_server_ready(), "models:", [m.name for m in client.get_model_repository_index().models])

x = tc.InferInput("input", [2, 16], "FP32")
x.set_data_from_numpy(np.random.default_rng(0).random((2, 16), dtype=np.float32))
result = client.infer("mlp", [x], outputs=[tc.InferRequestedOutput("output")])
print("mlp:", result.as_numpy("output"))

text = tc.InferInput("text", [2], "BYTES")
text.set_data_from_numpy(np.array([b"hello", b"icow"], dtype=object))
print("strings:", client.infer("strings", [text]).as_numpy("upper"))
