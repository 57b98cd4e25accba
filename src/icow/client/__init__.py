"""icow's clients, which need only grpcio, protobuf and numpy: ``Client`` (sync.py),
``AsyncClient`` (aio.py), what both share (common.py), the same-host shared-memory
transport (shm.py) and ``icow models ...``, the admin command line (admin.py; its
``deploy`` action: deploy.py).

May import: icow.protocol (and the compiled base: icow._wire, icow._proto).
"""

from .aio import AsyncClient
from .common import InferResult, Inputs, ModelIndex, StreamRequest, StreamResult, Version
from .sync import Client

__all__ = ["AsyncClient", "Client", "InferResult", "Inputs", "ModelIndex", "StreamRequest", "StreamResult",
           "Version"]
