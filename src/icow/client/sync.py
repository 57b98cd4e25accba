"""icow's client for the Open Inference Protocol (KServe v2) over gRPC.

Needs only grpcio, protobuf and numpy; works against icow and against any
server speaking the protocol (Triton Inference Server included).

    >>> with Client("127.0.0.1:8001") as client:
    ...     client.infer("mlp", {"input": np.zeros((2, 16), np.float32)})["output"]

Every failure is raised as `icow.InferenceServerError`, carrying the
gRPC status code and the server's message. Calls that fail with UNAVAILABLE
are retried with exponential backoff; see `Client`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import grpc
import numpy as np

from .._proto import inference_pb2 as pb
from .._proto import inference_pb2_grpc, model_config_pb2, rollout_pb2_grpc
from .._proto import rollout_pb2 as rp
from ..protocol.errors import InferenceServerError
from . import common
from .common import InferResult, Inputs, ModelIndex, StreamRequest, StreamResult, Version
from .shm import ShmTransport

__all__ = ["InferResult", "Client", "InferenceServerError", "ModelIndex", "StreamRequest", "StreamResult"]

T = TypeVar("T")


class Client:
    """A synchronous client of one inference server.

    Parameters
    ----------
    url
        ``host:port`` of the server's gRPC endpoint.
    channel
        A channel to use instead of opening one to ``url``; the caller keeps
        ownership (`close` leaves it open) and chooses its message limits.
    retries
        How many times a call failing with UNAVAILABLE is retried.
    backoff
        Pause before the first retry, in seconds; it doubles with each retry,
        up to 5 s.
    timeout
        Deadline of each attempt in seconds; None waits indefinitely.
    max_message_bytes
        Largest message sent or received (gRPC's default is 4 MiB).
    shared_memory
        ``"auto"``: when the server runs on this host and allows client shared
        memory (``icow serve --allow-client-shm``), tensors travel through
        shared-memory regions this client creates, reuses and removes on
        `close`, instead of inside gRPC messages; otherwise, and for BYTES
        tensors, they go as bytes. ``"off"`` (default): always bytes.

    Notes
    -----
    Thread-safe: calls from several threads share the channel.
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        channel: grpc.Channel | None = None,
        retries: int = 3,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_message_bytes: int = 2**31 - 1,
        shared_memory: str = "off",
    ) -> None:
        if shared_memory not in ("auto", "off"):
            raise ValueError(f"shared_memory must be 'auto' or 'off', got {shared_memory!r}")
        self._owns_channel = channel is None
        if channel is None:
            channel = grpc.insecure_channel(url, options=common.channel_options(max_message_bytes))
        self._channel = channel
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._rollout = rollout_pb2_grpc.ModelRolloutStub(channel)  # icow's own service
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._metadata: dict[tuple[str, str], pb.ModelMetadataResponse] = {}
        self._url = url
        self._shm_wanted = shared_memory == "auto"
        self._shm: ShmTransport | None = None
        self._shm_lock = threading.Lock()

    def close(self) -> None:
        """Remove this client's shared-memory regions; close the channel, unless it was passed in."""
        with self._shm_lock:
            shm, self._shm, self._shm_wanted = self._shm, None, False
        if shm is not None:
            shm.close()
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, call: common.Call[T]) -> T:
        method = getattr(self._rollout if call.service == "rollout" else self._stub, call.method)
        delays = common.retry_delays(self._retries, self._backoff)
        while True:
            try:
                response = method(call.request, timeout=self._timeout)
            except grpc.RpcError as e:
                time.sleep(common.next_delay(e, delays))
            else:
                return call.decode(response)

    def infer(
        self,
        model: str,
        inputs: Inputs,
        version: Version = None,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``.

        Parameters
        ----------
        model
            The model's name.
        inputs
            Arrays (or anything `numpy.asarray` takes) by input name, or a
            sequence of them in the order of the model's metadata (a single
            array is the model's one input). Each is
            sent with the protocol datatype of its dtype; str and bytes
            arrays are sent as BYTES, arrays of ``icow.BF16_BITS`` (uint16
            bits) or ``ml_dtypes.bfloat16`` as BF16.
        version
            The model version; None lets the server choose.
        outputs
            Names of the outputs to return; None returns all of them.

        Returns
        -------
        dict[str, numpy.ndarray]
            The outputs by name, as read-only arrays; BYTES outputs are
            object arrays of ``bytes``, BF16 outputs arrays of ``icow.BF16_BITS``
            (their bits: ``.view(numpy.uint16)``).

        Raises
        ------
        InferenceServerError
            With the server's status and message, or INVALID_ARGUMENT when
            the inputs cannot be sent.
        """
        if not isinstance(inputs, Mapping):
            meta = self._cached_metadata(model, version)
            inputs = common.name_inputs(common.positional(inputs), meta)
        shm = self._shared_memory()
        if shm is not None:
            arrays = {name: np.asarray(value) for name, value in inputs.items()}
            if shm.usable(arrays):
                names = [outputs] if isinstance(outputs, str) else list(outputs or ())
                names = names or [t.name for t in self._cached_metadata(model, version).outputs]
                return shm.infer(model, arrays, version, names)
        return self._run(common.infer(model, inputs, version, outputs))

    def _shared_memory(self) -> ShmTransport | None:
        """The shared-memory path, probed on first use; None: send bytes."""
        if not self._shm_wanted:
            return self._shm
        with self._shm_lock:
            if self._shm_wanted:  # probe once, on first use: the server may not be up at construction
                self._shm = ShmTransport.probe(self._run, self._url)
                self._shm_wanted = False
            return self._shm

    def _cached_metadata(self, model: str, version: Version) -> pb.ModelMetadataResponse:
        key = common.cache_key(model, version)
        if key not in self._metadata:
            self._metadata[key] = self.metadata(model, version)
        return self._metadata[key]

    def metadata(self, model: str, version: Version = None) -> pb.ModelMetadataResponse:
        """The model's metadata.

        Returns
        -------
        ModelMetadataResponse
            The protocol's message: ``name``, ``versions``, ``platform``, and
            ``inputs`` / ``outputs`` with ``name``, ``datatype``, ``shape``
            (-1 for a variable dimension).
        """
        return self._run(common.metadata(model, version))

    def config(self, model: str, version: Version = None) -> model_config_pb2.ModelConfig:
        """The model's configuration (Triton's ``ModelConfig`` message)."""
        return self._run(common.config(model, version))

    def ready(self, model: str | None = None, version: Version = None) -> bool:
        """Whether the server (``model`` None) or the model version is ready."""
        return self._run(common.ready(model, version))

    def live(self) -> bool:
        """Whether the server is live."""
        return self._run(common.live())

    def server_metadata(self) -> pb.ServerMetadataResponse:
        """The server's ``name``, ``version`` and ``extensions``."""
        return self._run(common.server_metadata())

    def repository_index(self, ready_only: bool = False) -> list[ModelIndex]:
        """The models of the repository with their versions and states.

        Parameters
        ----------
        ready_only
            List only the versions that are ready.

        Returns
        -------
        list[ModelIndex]
            ``(name, version, state, reason)`` rows.
        """
        return self._run(common.repository_index(ready_only))

    def load(self, model: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) ``model``; the server must allow explicit model control. With
        ``config`` (a model config in JSON) and ``files`` (``{"file:<version>/model.onnx": bytes}``):
        deploy them into the server's repository first (it must run with --allow-deploy)."""
        common.forget(self._metadata, model)
        self._run(common.load(model, config, files))

    def unload(self, model: str) -> None:
        """Unload ``model``; the server must allow explicit model control."""
        common.forget(self._metadata, model)
        self._run(common.unload(model))

    def infer_result(
        self,
        model: str,
        inputs: Inputs,
        version: Version = None,
        outputs: Sequence[str] | None = None,
        request_id: str = "",
    ) -> InferResult:
        """As `infer`, with the version that answered (``model_version``) and the
        request's ``id``. With a traffic split, a ``request_id`` makes the choice
        sticky: the same id gets the same version."""
        if not isinstance(inputs, Mapping):
            meta = self._cached_metadata(model, version)
            inputs = common.name_inputs(common.positional(inputs), meta)
        return self._run(common.infer_result(model, inputs, version, outputs, request_id))

    def stream_infer(self, requests: Iterable[StreamRequest]) -> Iterator[StreamResult]:
        """Send ``requests`` on one ModelStreamInfer stream; yield each answer as it comes.

        The server runs the requests concurrently, so the answers may come in another order
        than the requests: each names its request's id (``StreamRequest.id``, or "0", "1",
        ... in the order sent). A request that fails is answered with its error; the stream
        goes on. ``requests`` is read as the stream can take them, so it may be a generator
        that produces requests while answers come back. Tensors go as bytes (never shared
        memory); the stream is not retried, and ``timeout`` bounds the whole stream.
        Stopping the iteration early cancels the stream.

        Raises
        ------
        InferenceServerError
            When the stream itself fails (UNAVAILABLE, UNAUTHENTICATED, its deadline), or, after
            the answers to the requests before it, when a request cannot be sent (an input
            whose dtype has no protocol datatype).
        """
        failure: list[Exception] = []

        def messages() -> Iterator[pb.ModelInferRequest]:
            try:
                for index, request in enumerate(requests):
                    inputs = request.inputs
                    if not isinstance(inputs, Mapping):
                        meta = self._cached_metadata(request.model, request.version)
                        inputs = common.name_inputs(common.positional(inputs), meta)
                    yield common.stream_message(request, inputs, index)
            except Exception as e:  # raised in grpc's thread it would cancel the call: ends the stream instead
                failure.append(e)

        call = self._stub.ModelStreamInfer(messages(), timeout=self._timeout)
        try:
            for response in call:
                yield common.stream_result(response)
        except grpc.RpcError as e:
            raise common.to_error(e) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; otherwise the caller stopped early
        if failure:
            raise failure[0]

    def routing(self, model: str) -> rp.Routing:
        """The model's versions (state, labels, requests in flight), labels and
        traffic split, as icow's ModelRollout service reports them."""
        return self._run(common.routing(model))

    def set_routing(
        self,
        model: str,
        *,
        labels: Mapping[str, int] | None = None,
        remove_labels: Sequence[str] = (),
        split: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
        expected_generation: int = 0,
    ) -> rp.Routing:
        """Change the model's routing in one atomic step.

        Parameters
        ----------
        labels
            Labels to set or move, to version numbers.
        remove_labels
            Labels to remove.
        split
            The new traffic split (version numbers or labels to weights); None
            keeps it, empty removes it.
        expected_generation
            Non-zero: apply only if the routing is still at this generation.

        Returns
        -------
        Routing
            The routing now in force.
        """
        common.forget(self._metadata, model)
        return self._run(common.set_routing(model, labels, remove_labels, split, expected_generation))
