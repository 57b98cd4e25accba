"""The standard health service, server reflection and ServerMetadata."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_server_and_models_are_serving_when_ready(server):
    with grpc.insecure_channel(server.url) as channel:
        assert check(channel, "") == SERVING
        assert check(channel, "inference.GRPCInferenceService") == SERVING
        assert check(channel, "mlp") == SERVING
        assert check(channel, "broken") == NOT_SERVING  # in the repository, no version loads
        with pytest.raises(grpc.RpcError) as e:
            check(channel, "no-such-model")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_health_follows_unload_and_load(make_server, ops_repo):
    srv = make_server(ops_repo, "--model-control-mode", "explicit", "--load-model", "mlp")
    client = tc.InferenceServerClient(srv.url)
    with grpc.insecure_channel(srv.url) as channel:
        assert check(channel, "") == SERVING
        assert check(channel, "mlp") == SERVING
        assert check(channel, "scale") == NOT_SERVING  # not loaded at start
        client.load_model("scale")
        assert check(channel, "scale") == SERVING
        client.unload_model("mlp")
        assert check(channel, "mlp") == NOT_SERVING
        assert check(channel, "") == SERVING  # the server as a whole still serves


def test_watch_turns_not_serving_on_sigterm(make_server, ops_repo):
    srv = make_server(ops_repo, "--no-metrics")
    with grpc.insecure_channel(srv.url) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        srv.proc.terminate()
        assert next(watch).status == NOT_SERVING
        watch.cancel()
    assert srv.proc.wait(timeout=30) == 0


def _reflect(channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=10))


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.url) as channel:
        (answer,) = _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in answer.list_services_response.service}
    assert names == {"inference.GRPCInferenceService", "ICOW", "icow.rollout.ModelRollout", "grpc.health.v1.Health",
                     "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize("symbol, file, dependency", [
    ("inference.GRPCInferenceService", "inference.proto", "model_config.proto"),
    ("ICOW", "litecow.proto", None),
    ("icow.rollout.ModelRollout", "rollout.proto", None),
    ("grpc.health.v1.Health", health_pb2.DESCRIPTOR.name, None),
    ("grpc.reflection.v1alpha.ServerReflection", reflection_pb2.DESCRIPTOR.name, None),
])
def test_reflection_gives_each_service_file(server, symbol, file, dependency):
    with grpc.insecure_channel(server.url) as channel:
        (answer,) = _reflect(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
    files = {}
    for data in answer.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(data)
        files[proto.name] = proto
    assert file in files
    package, _, service = symbol.rpartition(".")
    assert files[file].package == package and service in [s.name for s in files[file].service]
    if dependency:  # the imports come along, so a tool can resolve every message
        assert dependency in files


def test_reflection_describes_model_infer(server):
    with grpc.insecure_channel(server.url) as channel:
        (answer,) = _reflect(channel, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="inference.ModelInferRequest"))
    protos = [descriptor_pb2.FileDescriptorProto.FromString(d)
              for d in answer.file_descriptor_response.file_descriptor_proto]
    (service,) = next(p for p in protos if p.name == "inference.proto").service
    infer = next(m for m in service.method if m.name == "ModelInfer")
    assert (infer.input_type, infer.output_type) == (".inference.ModelInferRequest", ".inference.ModelInferResponse")


def test_server_metadata_lists_only_served_extensions(server):
    client = tc.InferenceServerClient(server.url)
    metadata = client.get_server_metadata()
    assert metadata.name == "icow"
    assert sorted(metadata.extensions) == ["model_configuration", "model_repository", "schedule_policy", "statistics"]
    # each one answers
    assert client.get_model_config("mlp").config.name == "mlp"
    assert client.get_model_repository_index().models
    assert client.get_inference_statistics("mlp").model_stats[0].name == "mlp"
