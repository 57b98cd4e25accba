"""icow: a gRPC inference server for ONNX models."""
from ._version import __version__

