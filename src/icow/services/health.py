"""The standard gRPC health service (``grpc.health.v1.Health``).

Service names and what they report:

- ``""`` and ``inference.GRPCInferenceService``: SERVING once the startup
  loading is done (the server is ready), NOT_SERVING before and from the
  moment a shutdown begins.
- ``<model name>``: SERVING while the model has a ready version,
  NOT_SERVING when it is in the repository but not loaded or not ready.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..repository.repository import Repository

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Health:
    """Keeps the health statuses in step with the server and its repository."""

    def __init__(self, repository: Repository, inference_service: str) -> None:
        self.repository = repository
        self.inference_service = inference_service
        self.servicer = health.HealthServicer()
        self.ready = False
        self.refresh()

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def set_ready(self) -> None:
        self.ready = True
        self.refresh()

    def refresh(self, *_names: str) -> None:
        """Recompute every status (cheap: one dict lookup per model)."""
        overall = SERVING if self.ready else NOT_SERVING
        self.servicer.set("", overall)
        self.servicer.set(self.inference_service, overall)
        loaded = {m.name: m for m in self.repository.loaded()}
        for name in self.repository.model_names():
            model = loaded.get(name)
            self.servicer.set(name, SERVING if model is not None and model.ready() else NOT_SERVING)

    def shutdown(self) -> None:
        """NOT_SERVING for every service, for good: load balancers stop sending."""
        self.ready = False
        self.servicer.enter_graceful_shutdown()
