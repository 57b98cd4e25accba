"""Builds the gRPC server, loads the repository and runs until stopped."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from . import litecow
from .repository import Repository
from .v2 import SERVICE, InferenceService, method_handlers

log = logging.getLogger("icow.server")


@dataclass
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    port: int = 8001
    model_control_mode: str = "none"  # none: load everything at start; explicit: on request
    load_models: list[str] = field(default_factory=list)  # with explicit; "*" for all
    workers: int = 16  # gRPC threads; ONNX Runtime releases the GIL while it runs
    max_message_bytes: int = 2**31 - 1
    default_max_batch_size: int = 32
    grace_seconds: float = 5.0
    store: str | None = None  # s3://bucket/prefix: the repository then is its local cache folder
    s3_endpoint: str | None = None


class InferenceServer:
    """icow's gRPC server over one model repository."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        store = None
        if options.store:
            from .object_store import ObjectStore, StoreLocation  # boto3 only when a store is used

            store = ObjectStore(StoreLocation.parse(options.store), options.repository, endpoint=options.s3_endpoint)
            store.check()
        self.repository = Repository(options.repository, default_max_batch_size=options.default_max_batch_size,
                                     store=store)
        self.service = InferenceService(self.repository, explicit_control=options.model_control_mode == "explicit")
        grpc_options = [("grpc.max_send_message_length", options.max_message_bytes),
                        ("grpc.max_receive_message_length", options.max_message_bytes),
                        ("grpc.so_reuseport", 0)]  # a second server on a taken port must fail, not share it
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.workers,
                                                               thread_name_prefix="icow-rpc"), options=grpc_options)
        self._server.add_registered_method_handlers(SERVICE, method_handlers(self.service))
        # lIteCOW's ICOW service on the same port, over the same repository
        self._server.add_registered_method_handlers(litecow.SERVICE, litecow.method_handlers(
            litecow.LitecowService(self.repository, store.location if store is not None else None)))
        address = f"{options.host}:{options.port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from None
        self.address = f"{options.host}:{self.port}"

    def start(self) -> None:
        """Listen (live at once), then load the models (ready when done)."""
        self._server.start()
        log.info("icow listening on %s (gRPC, Open Inference Protocol)", self.address)
        self.repository.load_all(self._startup_models())
        ready = [f"{e.name}:{e.version}" for e in self.repository.index() if e.state == "READY"]
        log.info("ready: %d model version(s): %s", len(ready), ", ".join(ready) or "none")
        self.service.ready = True

    def _startup_models(self) -> list[str] | None:
        names = self.options.load_models
        if self.options.model_control_mode != "explicit" or "*" in names:
            return None
        return names

    def stop(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls, let running ones finish for ``grace`` seconds."""
        self.service.ready = False
        return self._server.stop(self.options.grace_seconds if grace is None else grace)

    def wait(self) -> None:
        self._server.wait_for_termination()


def serve(options: ServerOptions) -> None:
    """Run a server until SIGINT or SIGTERM, then shut it down gracefully."""
    server = InferenceServer(options)

    def shutdown(signum, frame) -> None:
        log.info("received %s, stopping (grace %.0fs)", signal.Signals(signum).name, options.grace_seconds)
        server.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    server.start()
    server.wait()
    log.info("stopped")
