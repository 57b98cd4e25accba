"""gRPC server reflection, so that generic tools (grpcurl, grpcui, Postman)
list the services and call them without the .proto files."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from .._proto import inference_pb2, litecow_pb2, model_config_pb2, rollout_pb2


def _pool() -> descriptor_pool.DescriptorPool:
    """A pool holding every served service's files. icow's descriptors live in a
    private pool (see _proto/_pool.py) and health's and reflection's in the default
    one; reflection answers from a single pool, so it gets one with all of them."""
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, inference_pb2, litecow_pb2, rollout_pb2, health_pb2,
                   reflection_pb2):  # dependencies first
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def enable(server: grpc.Server, service_names: list[str]) -> None:
    """Serve reflection for ``service_names`` and for reflection itself."""
    reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME], server, pool=_pool())
