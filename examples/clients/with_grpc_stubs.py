"""Call icow with nothing but gRPC stubs generated from proto/:

    python -m grpc_tools.protoc -Iproto --python_out=examples/clients --grpc_python_out=examples/clients \
        inference.proto model_config.proto
    icow serve &
    python examples/clients/with_grpc_stubs.py
"""

import grpc
import inference_pb2 as pb
import inference_pb2_grpc
import numpy as np

stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel("127.0.0.1:8001"))
x = np.arange(4, dtype=np.float32)
request = pb.ModelInferRequest(
    model_name="scale",
    inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[4])],
    raw_input_contents=[x.tobytes()],
)
response = stub.ModelInfer(request)
print(response.model_name, response.model_version, np.frombuffer(response.raw_output_contents[0], dtype="<f4"))
