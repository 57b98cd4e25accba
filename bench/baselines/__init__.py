"""Floors that icow is compared against: compute (in-process onnxruntime) and
transport (a gRPC echo server on the same stack)."""
