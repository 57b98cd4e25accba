"""icow: a gRPC inference server for ONNX models (Open Inference Protocol, KServe v2).

This package's top level is the client side, which needs only grpcio, protobuf
and numpy; the server is assembled in icow.server and needs the ``server`` extra.

The folders, each one concern (its docstring says what it may import):

- ``protocol/``   the protocol's vocabulary, shared by both sides: datatypes, tensor contents, the error type
- ``client/``     the sync and asyncio clients, client-side shared memory, the admin CLI
- ``runtime/``    one model version: its config, ONNX Runtime session and binding, scheduler, statistics
- ``repository/`` which versions serve: folders, object store, polling, draining, labels and splits, import
- ``shm/``        the server's shared-memory regions (system and CUDA) and the tensors in them
- ``codecs/``     ModelInfer bytes to requests and back: native (compiled) and protobuf
- ``services/``   the front ends, which translate and decide nothing: OIP, lIteCOW, rollout admin,
                  health, reflection, auth, access log, metrics, the native plane's wiring
- ``cli.py``, ``server.py``: the assembly, which may import everything
"""

from ._version import __version__
from .client import AsyncClient, Client
from .protocol.datatypes import BF16_BITS
from .protocol.errors import InferenceServerError

__all__ = ["AsyncClient", "BF16_BITS", "Client", "InferenceServerError", "__version__"]
