"""icow._plane: the native gRPC data plane's spike (issue 8; docs/native-plane.md).

A grpc++ callback server (generic service on raw bytes) built only where the
gRPC C++ libraries are found at build time; ``import icow._plane`` fails
otherwise. Experimental, off by default: icow's server does not use it."""

from collections.abc import Callable

GRPC_VERSION: str
"""The version of the gRPC C++ library the module runs on."""

MODEL_INFER: str
"""'/inference.GRPCInferenceService/ModelInfer'."""

Answer = bytes | tuple[int, str]
"""A handler's answer: the response bytes, or (gRPC status code number, message)."""

class RequestSlice:
    """A request's bytes (read-only buffer) held in gRPC's own slice."""

class Server:
    """A grpc++ server on ``address`` ("127.0.0.1:0" picks a port).

    ModelInfer: ``handler(data)`` under the GIL, ``data`` a read-only memoryview
    of the request, not copied where gRPC holds it in one slice; with no handler,
    the request is echoed in C++ without touching Python. Every other method:
    ``other(method, data)``, or UNIMPLEMENTED with no ``other``. An exception in
    a handler becomes INTERNAL with its text."""

    def __init__(self, address: str, handler: Callable[[memoryview], Answer] | None = None,
                 other: Callable[[str, memoryview], Answer] | None = None,
                 max_message_bytes: int = 268435456) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def calls(self) -> int:
        """ModelInfer calls received so far."""
    def stop(self, grace: float = 0.0) -> None:
        """Stop serving; calls in flight get ``grace`` seconds to finish. Idempotent."""
