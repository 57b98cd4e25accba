"""icow's asyncio client: `client.Client`'s API on ``grpc.aio``, every call a coroutine.

    >>> async with AsyncClient("127.0.0.1:8001") as client:
    ...     outputs = await client.infer("mlp", [np.zeros((2, 16), np.float32)])

Requests, responses, retries and errors behave exactly as in `client.Client`
(both are built on ``_client_common``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import TypeVar

import grpc
import grpc.aio
import numpy as np

from .._proto import inference_pb2 as pb
from .._proto import inference_pb2_grpc, model_config_pb2, rollout_pb2_grpc
from .._proto import rollout_pb2 as rp
from ..protocol.errors import InferenceServerError
from . import common
from .common import InferResult, Inputs, ModelIndex, StreamRequest, StreamResult, Version

__all__ = ["InferResult", "AsyncClient", "InferenceServerError", "ModelIndex", "StreamRequest", "StreamResult"]

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of one inference server.

    Create it inside the event loop that uses it (``grpc.aio`` channels
    belong to one loop).

    Parameters
    ----------
    url
        ``host:port`` of the server's gRPC endpoint.
    channel
        A ``grpc.aio`` channel to use instead of opening one to ``url``; the
        caller keeps ownership (`close` leaves it open).
    retries
        How many times a call failing with UNAVAILABLE is retried.
    backoff
        Pause before the first retry, in seconds; it doubles with each retry,
        up to 5 s.
    timeout
        Deadline of each attempt in seconds; None waits indefinitely.
    max_message_bytes
        Largest message sent or received (gRPC's default is 4 MiB).
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        channel: grpc.aio.Channel | None = None,
        retries: int = 3,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_message_bytes: int = 2**31 - 1,
    ) -> None:
        self._owns_channel = channel is None
        if channel is None:
            options = common.channel_options(max_message_bytes)
            channel = grpc.aio.insecure_channel(url, options=options)
        self._channel = channel
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._rollout = rollout_pb2_grpc.ModelRolloutStub(channel)  # icow's own service
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._metadata: dict[tuple[str, str], pb.ModelMetadataResponse] = {}

    async def close(self) -> None:
        """Close the channel, unless it was passed in."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, call: common.Call[T]) -> T:
        method = getattr(self._rollout if call.service == "rollout" else self._stub, call.method)
        delays = common.retry_delays(self._retries, self._backoff)
        while True:
            try:
                response = await method(call.request, timeout=self._timeout)
            except grpc.RpcError as e:
                await asyncio.sleep(common.next_delay(e, delays))
            else:
                return call.decode(response)

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        version: Version = None,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; see `icow.client.Client.infer`."""
        if not isinstance(inputs, Mapping):
            meta = await self._cached_metadata(model, version)
            inputs = common.name_inputs(common.positional(inputs), meta)
        return await self._run(common.infer(model, inputs, version, outputs))

    async def _cached_metadata(self, model: str, version: Version) -> pb.ModelMetadataResponse:
        key = common.cache_key(model, version)
        if key not in self._metadata:
            self._metadata[key] = await self.metadata(model, version)
        return self._metadata[key]

    async def metadata(self, model: str, version: Version = None) -> pb.ModelMetadataResponse:
        """The model's metadata; see `icow.client.Client.metadata`."""
        return await self._run(common.metadata(model, version))

    async def config(self, model: str, version: Version = None) -> model_config_pb2.ModelConfig:
        """The model's configuration (Triton's ``ModelConfig`` message)."""
        return await self._run(common.config(model, version))

    async def ready(self, model: str | None = None, version: Version = None) -> bool:
        """Whether the server (``model`` None) or the model version is ready."""
        return await self._run(common.ready(model, version))

    async def live(self) -> bool:
        """Whether the server is live."""
        return await self._run(common.live())

    async def server_metadata(self) -> pb.ServerMetadataResponse:
        """The server's ``name``, ``version`` and ``extensions``."""
        return await self._run(common.server_metadata())

    async def repository_index(self, ready_only: bool = False) -> list[ModelIndex]:
        """The models of the repository as ``(name, version, state, reason)`` rows."""
        return await self._run(common.repository_index(ready_only))

    async def load(self, model: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) ``model``; the server must allow explicit model control. With
        ``config`` (a model config in JSON) and ``files`` (``{"file:<version>/model.onnx": bytes}``):
        deploy them into the server's repository first (it must run with --allow-deploy)."""
        common.forget(self._metadata, model)
        await self._run(common.load(model, config, files))

    async def unload(self, model: str) -> None:
        """Unload ``model``; the server must allow explicit model control."""
        common.forget(self._metadata, model)
        await self._run(common.unload(model))

    async def infer_result(
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
            meta = await self._cached_metadata(model, version)
            inputs = common.name_inputs(common.positional(inputs), meta)
        return await self._run(common.infer_result(model, inputs, version, outputs, request_id))

    async def stream_infer(
        self, requests: Iterable[StreamRequest] | AsyncIterable[StreamRequest]
    ) -> AsyncIterator[StreamResult]:
        """`icow.client.Client.stream_infer` on asyncio: ``async for answer in client.stream_infer(requests)``;
        ``requests`` may be an async iterable."""
        failure: list[Exception] = []

        async def messages() -> AsyncIterator[pb.ModelInferRequest]:
            try:
                index = 0
                async for request in _aiter(requests):
                    inputs = request.inputs
                    if not isinstance(inputs, Mapping):
                        meta = await self._cached_metadata(request.model, request.version)
                        inputs = common.name_inputs(common.positional(inputs), meta)
                    yield common.stream_message(request, inputs, index)
                    index += 1
            except Exception as e:  # it would cancel the call: ends the stream instead, raised after it
                failure.append(e)

        call = self._stub.ModelStreamInfer(messages(), timeout=self._timeout)
        try:
            async for response in call:
                yield common.stream_result(response)
        except grpc.RpcError as e:
            raise common.to_error(e) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; otherwise the caller stopped early
        if failure:
            raise failure[0]

    async def routing(self, model: str) -> rp.Routing:
        """The model's versions (state, labels, requests in flight), labels and
        traffic split, as icow's ModelRollout service reports them."""
        return await self._run(common.routing(model))

    async def set_routing(
        self,
        model: str,
        *,
        labels: Mapping[str, int] | None = None,
        remove_labels: Sequence[str] = (),
        split: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
        expected_generation: int = 0,
    ) -> rp.Routing:
        """`Client.set_routing`: change the model's routing in one atomic step."""
        common.forget(self._metadata, model)
        return await self._run(common.set_routing(model, labels, remove_labels, split, expected_generation))


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
