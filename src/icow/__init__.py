"""icow: a gRPC inference server for ONNX models (Open Inference Protocol, KServe v2).

This package's top level is the client side, which needs only grpcio, protobuf
and numpy; the server lives in icow.server and needs the ``server`` extra.
"""

from ._version import __version__
from .aio_client import AsyncClient
from .client import Client
from .errors import InferenceServerError

__all__ = ["AsyncClient", "Client", "InferenceServerError", "__version__"]
