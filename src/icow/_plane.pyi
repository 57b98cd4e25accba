"""icow._plane: the native gRPC data plane (docs/native-plane.md; used by
``icow serve --data-plane native``, through ``icow.services.plane``), and its fast
path in grpcio's handler (``Direct``, on ``--data-plane grpcio``).

A grpc++ callback server (one generic service on raw bytes) built only where the
gRPC C++ libraries are found at build time; ``import icow._plane`` fails
otherwise. ModelInfer requests that the published model table serves are
answered in C++; every other call goes through to the ``backend`` server."""

from collections.abc import Callable, Sequence

from typing_extensions import Buffer

GRPC_VERSION: str
"""The version of the gRPC C++ library the module runs on."""

MODEL_INFER: str
"""'/inference.GRPCInferenceService/ModelInfer'."""

# (name, datatype, itemsize, request shape (-1: any), graph dims (>= 0 fixed, -1 unknown,
# -2-k the k-th symbol), numpy scalar type)
TensorSpec = tuple[str, str, int, Sequence[int], Sequence[int], type]
# An ensemble's graph in slots (0..n-1 its inputs, then the steps' outputs): ([(model, version
# key, label for messages, [(model input, slot)], [(model output, slot)])] in dependency order,
# slot count, [slot of each ensemble output]).
EnsembleGraph = tuple[list[tuple[str, str, str, list[tuple[str, int]], list[tuple[str, int]]]], int, list[int]]

def staged_bytes() -> int:
    """Tensor bytes copied into and out of staging buffers by bound runs since start: the
    only copies of tensor data the fast path's runs make (small requests only)."""

class Tally:
    """The fast path's statistics of one model version, counted with no GIL."""

    def __init__(self, bounds_us: Sequence[int]) -> None:
        """``bounds_us``: the latency histogram's upper bounds (stats.LATENCY_BUCKETS_US)."""
    def take(self) -> tuple[int, int, int, int, int, int, int, int, list[int], list[tuple[int, int, int, int, int]]]:
        """What was counted since the last take, and counting from zero again: (requests, rows,
        last inference ms, success ns, queue ns, input ns, infer ns, output ns, [requests per
        latency bucket, the last +Inf], [(batch size, runs, input ns, infer ns, output ns)])."""

class ModelEntry:
    """One ready model version as the fast path sees it. ``instances``: per ONNX Runtime
    session (its C session ``session._sess``, ``SessionIOBinding``, the CPU device object, the
    ``RunOptions`` its runs pass).
    ``tally``: the version's (VersionStats.tally); ``record_failure``: VersionStats.record_failure,
    called under the GIL with ``begun=False``. ``batching``: (max rows, preferred sizes, max
    delay ns) or None. ``ensemble``: an ensemble's graph (no instances; its steps run on the
    entries its steps name, looked up per request), or None."""

    def __init__(self, name: str, version: int, max_batch_size: int, inputs: list[TensorSpec],
                 outputs: list[TensorSpec], instances: list[tuple[object, type, object, object]], tally: Tally,
                 record_failure: Callable[..., None], max_queue: int = 0, queue_timeout_ns: int = 0,
                 batching: tuple[int, list[int], int] | None = None,
                 ensemble: EnsembleGraph | None = None) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def is_ensemble(self) -> bool: ...
    @property
    def pending(self) -> int:
        """Calls queued or running on the fast path."""
    def disable(self) -> None:
        """Leave the model to the full path from now on (its outputs cannot be bound before the run)."""

class Direct:
    """The fast path on the caller's thread, for grpcio's ModelInfer handler (``icow serve
    --data-plane grpcio``): the same parse, checks and bound run as the plane's, with
    its own model table; or the HTTP and stream lanes of a ``Server``, on its entries
    (``share_queues``)."""

    def __init__(self, max_message_bytes: int) -> None: ...
    def publish(self, entries: dict[str, ModelEntry]) -> None:
        """Replace the model table: keys are name, newline, version, label or ""."""
    def share_queues(self, server: Server) -> None:
        """Requests to batching models (and ensembles' batching steps) wait in ``server``'s
        C++ queues and batch with its calls; ``server`` serves the entries published here."""
    def serve(self, data: bytes, deadline_ns: int,
              alive: Callable[[], bool]) -> bytes | tuple[int, str, str, str] | None:
        """Call with the GIL held (it is released while the call waits for an instance).
        The serialized ModelInferResponse; (gRPC status code number, message, model,
        version) when the request left the model's line without running (full, timed
        out, past ``deadline_ns`` on time.monotonic_ns()'s clock, 0 none, or ``alive()``
        false); None where the full path must serve the request."""
    def serve_http(self, model: str, version: str, id: str, inputs: Sequence[tuple[str, str, Sequence[int], int, int]],
                   outputs: Sequence[str], body: Buffer, deadline_ns: int, alive: Callable[[], bool],
                   may_wait: bool, brief_only: bool) -> tuple[bytes, int] | tuple[int, str, str, str] | None:
        """An HTTP inference request (icow.http) whose JSON header was parsed in Python,
        every input binary: ``inputs`` as (name, datatype, shape, offset, size) of their
        bytes in ``body``, ``outputs`` the names asked for (empty: all), all binary. The
        answer and the length of its JSON header; a refusal as ``serve``'s; None where
        the full path must serve it. ``may_wait`` False: None also when no instance is
        idle now; ``brief_only`` (the HTTP event loop): None also when the model's runs
        are not brief."""
    @property
    def served_fast(self) -> int:
        """Calls answered or refused here."""
    @property
    def handed_on(self) -> int:
        """Calls left to the full path (None returned)."""

class Server:
    """A grpc++ server on ``address`` ("127.0.0.1:0" picks a port); other calls go to
    ``backend`` ("unix:PATH" or "host:port"; "" answers them UNIMPLEMENTED). ``echo``:
    ModelInfer returns its request, in C++ (the plane's floor). ``tls``: (key PEM,
    certificate chain PEM, client CA PEM or None). ``max_concurrent``: calls at once,
    beyond that RESOURCE_EXHAUSTED; 0 no limit."""

    def __init__(self, address: str, backend: str = "", echo: bool = False, workers: int = 16,
                 max_message_bytes: int = 2147483647, max_concurrent: int = 0,
                 tls: tuple[bytes, bytes, bytes | None] | None = None) -> None: ...
    @property
    def port(self) -> int: ...
    fast: bool
    """Whether ModelInfer may be answered in C++ (off: everything goes to the backend)."""
    def publish(self, entries: dict[str, ModelEntry]) -> None:
        """Replace the model table: keys are name, newline, version, label or ""."""
    def set_tokens(self, tokens: list[tuple[bytes, list[str] | None]]) -> None:
        """Before serving: (sha256 digest, models or None) per bearer token."""
    @property
    def served_fast(self) -> int:
        """ModelInfer calls answered in C++ (echoed ones included)."""
    @property
    def handed_on(self) -> int:
        """Calls passed through to the backend."""
    @property
    def in_flight(self) -> int: ...
    def stop(self, grace: float = 0.0) -> None:
        """Stop serving; calls in flight get ``grace`` seconds to finish. Idempotent."""

def set_buffer_pool_limit(bytes: int) -> None:
    """Keep at most ``bytes`` of idle large request/response blocks (ext/plane/buffers.hpp);
    what is over it is unmapped now."""

def trim_buffer_pool(idle_seconds: float) -> int:
    """Unmap the pooled blocks no call has taken for ``idle_seconds``; the bytes given back."""

def buffer_pool_bytes() -> int:
    """Bytes of blocks the pool keeps idle now."""

def buffer_pool_limit() -> int:
    """The most bytes the pool keeps idle."""
