"""No config field silently ignored: every field of Triton's ModelConfig parses, and one
that icow does not act on is refused at load naming it, or logged as ignored
(runtime/config_fields.py, docs/config.md). The real server for what a user sees;
the table itself over every field of the message, generated from its descriptor."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

import make_models
from helpers import expect_error, infer_input, wait_for
from icow._proto import model_config_pb2 as mc
from icow.runtime import config_fields
from icow.runtime.config import ConfigError
from ops_helpers import pending

ROOT = Path(__file__).resolve().parent.parent

# -- the table, over every field of the message ---------------------------------


def _leaves(descriptor: Descriptor, prefix: str = "", trail: tuple = ()) -> Iterator[tuple[str, tuple]]:
    """(path, field descriptors from the root) of every field of ``descriptor`` that the
    table decides as a whole (scalars, lists, maps; not ACTED), walking into messages."""
    for field in descriptor.fields:
        path = prefix + field.name
        if path in config_fields.ACTED:
            continue
        if config_fields.walked(field, path):
            yield from _leaves(field.message_type, path + ".", (*trail, field))
        else:
            yield path, (*trail, field)


def _value(field: FieldDescriptor):
    """A value other than the field's default."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        return max(v.number for v in field.enum_type.values)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_STRING:
        return "x"
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.5
    return 1


def _config_setting(trail: tuple) -> mc.ModelConfig:
    """A config with only the last field of ``trail`` set (and the messages above it)."""
    config = mc.ModelConfig()
    message = config
    for field in trail[:-1]:
        message = getattr(message, field.name).add() if field.is_repeated else getattr(message, field.name)
    leaf = trail[-1]
    container = getattr(message, leaf.name)
    if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
        key_field, value_field = leaf.message_type.fields_by_name["key"], leaf.message_type.fields_by_name["value"]
        key = _value(key_field)
        if value_field.message_type is not None:
            container[key].SetInParent()
            first = value_field.message_type.fields[0]
            if first.type != FieldDescriptor.TYPE_MESSAGE:
                setattr(container[key], first.name, _value(first))
        else:
            container[key] = _value(value_field)
    elif leaf.message_type is not None:  # a list of messages: one element, nothing set in it
        container.add()
    elif leaf.is_repeated:
        container.append(_value(leaf))
    else:
        setattr(message, leaf.name, _value(leaf))
    return config


LEAVES = sorted(_leaves(mc.ModelConfig.DESCRIPTOR))


def _classified(path: str) -> str:
    """The path the table decides ``path`` by: its first prefix that is IGNORED or REFUSED."""
    parts = path.split(".")
    for n in range(1, len(parts) + 1):
        prefix = ".".join(parts[:n])
        if prefix in config_fields.IGNORED or prefix in config_fields.REFUSED:
            return prefix
    return path


def test_every_field_of_tritons_model_config_is_known():
    """The message has Triton's fields (names and numbers as Triton's clients decode them)."""
    fields = {f.name: f.number for f in mc.ModelConfig.DESCRIPTOR.fields}
    assert fields == {
        "name": 1, "platform": 2, "version_policy": 3, "max_batch_size": 4, "input": 5, "output": 6,
        "instance_group": 7, "default_model_filename": 8, "cc_model_filenames": 9, "metric_tags": 10,
        "dynamic_batching": 11, "optimization": 12, "sequence_batching": 13, "parameters": 14,
        "ensemble_scheduling": 15, "model_warmup": 16, "backend": 17, "model_operations": 18,
        "model_transaction_policy": 19, "batch_input": 20, "batch_output": 21, "model_repository_agents": 23,
        "response_cache": 24, "runtime": 25, "model_metrics": 26}
    assert len(LEAVES) > 40  # nested fields too, not just the top level


@pytest.mark.parametrize("path, trail", LEAVES, ids=[p for p, _ in LEAVES])
def test_a_field_icow_does_not_act_on_is_refused_naming_it_or_logged(path, trail, caplog):
    config = _config_setting(trail)
    decided_by = _classified(path)
    if decided_by in config_fields.IGNORED:
        with caplog.at_level(logging.WARNING, logger=config_fields.__name__):
            config_fields.check(config, "m")
        assert [r.getMessage() for r in caplog.records] == [
            f"model 'm': config field '{decided_by}' is ignored: {config_fields.IGNORED[decided_by]}"]
        return
    with pytest.raises(ConfigError, match=re.escape(f"config field '{decided_by}' ")):
        config_fields.check(config, "m")


@pytest.mark.parametrize("text", [
    "",
    'name: "m" platform: "onnxruntime_onnx" backend: "onnxruntime" max_batch_size: 8',
    'version_policy { specific { versions: [1, 2] } } default_model_filename: "other.onnx"',
    'input { name: "x" data_type: TYPE_FP32 dims: [4] reshape { shape: [2, 2] } } output { name: "y" dims: [-1] }',
    'instance_group { kind: KIND_GPU count: 2 gpus: [0, 1] }',
    'dynamic_batching { preferred_batch_size: [4] max_queue_delay_microseconds: 100 '
    'default_queue_policy { max_queue_size: 3 default_timeout_microseconds: 5 timeout_action: REJECT } }',
    'dynamic_batching { priority_levels: 3 default_priority_level: 2 '
    'default_queue_policy { allow_timeout_override: true } '
    'priority_queue_policy { key: 1 value { max_queue_size: 4 default_timeout_microseconds: 9 } } }',
    'optimization { execution_accelerators { gpu_execution_accelerator { name: "tensorrt" } } }',
    'parameters { key: "intra_op_thread_count" value { string_value: "2" } }',
    'model_warmup { name: "w" batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [4] zero_data: true '
    '} } } response_cache { enable: true }',
    'model_transaction_policy { decoupled: false } optimization { graph { level: 0 } }',  # defaults, stated
])
def test_fields_icow_acts_on_load_without_a_word(text, caplog):
    from google.protobuf import text_format

    with caplog.at_level(logging.WARNING, logger=config_fields.__name__):
        config_fields.check(text_format.Parse(text, mc.ModelConfig()), "m")
    assert not caplog.records


def test_the_docs_table_names_every_field_the_table_decides():
    doc = (ROOT / "docs" / "config.md").read_text()
    for path in (*config_fields.IGNORED, *config_fields.REFUSED):
        last = path.rsplit(".", 1)[-1]
        assert f"`{path}`" in doc or f".{last}`" in doc, path


# -- what a user sees: the real server ------------------------------------------

REFUSED_CONFIGS = {
    "stateful": ("max_batch_size: 8\nsequence_batching { max_sequence_idle_microseconds: 5000000 }\n",
                 "config field 'sequence_batching' is not supported by icow"),
    "pipeline": ('platform: "ensemble"\nmax_batch_size: 8\ninstance_group { count: 2 }\n'
                 'ensemble_scheduling { step { model_name: "mlp" '
                 'model_version: -1 input_map { key: "input" value: "input" } } }\n',
                 "config field 'instance_group' does not apply to an ensemble"),
    "ordered": ("max_batch_size: 8\ndynamic_batching { preserve_ordering: true }\n",
                "config field 'dynamic_batching.preserve_ordering' is not supported by icow"),
    "ragged": ('max_batch_size: 8\ninput { name: "input" data_type: TYPE_FP32 dims: [16] allow_ragged_batch: true }\n',
               "config field 'input.allow_ragged_batch' is not supported by icow"),
    "decoupled": ("model_transaction_policy { decoupled: true }\n",
                  "config field 'model_transaction_policy.decoupled' is not supported by icow"),
    "passive": ("instance_group { count: 1 kind: KIND_CPU passive: true }\n",
                "config field 'instance_group.passive' is not supported by icow"),
}

LOGGED_CONFIG = ('max_batch_size: 8\n'
                 'input { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [16] }\n'
                 'output { name: "output" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }\n'
                 'instance_group { name: "cpus" count: 1 kind: KIND_CPU }\n'
                 'parameters { key: "enable_mem_arena" value { string_value: "0" } }\n')


@pytest.fixture(scope="module")
def fields_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("fields") / "models"
    for name, (config, _) in REFUSED_CONFIGS.items():
        make_models.write(make_models.mlp(), repo, name)
        (repo / name / "config.pbtxt").write_text(config)
    make_models.write(make_models.mlp(), repo, "logged")
    (repo / "logged" / "config.pbtxt").write_text(LOGGED_CONFIG)
    return repo


@pytest.fixture(scope="module")
def fields_server(fields_repo, tmp_path_factory):
    from conftest import start_server

    srv = start_server(fields_repo, "--no-metrics", log_dir=tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()


def test_a_refused_field_makes_the_model_unavailable_with_a_reason_naming_it(fields_server):
    client = tc.InferenceServerClient(fields_server.url)
    reasons = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    for name, (_, words) in REFUSED_CONFIGS.items():
        state, reason = reasons[name]
        assert state == "UNAVAILABLE" and words in reason, (name, reason)
        assert f"model '{name}' is unavailable: {words}" in fields_server.log()
    with expect_error(grpc.StatusCode.UNAVAILABLE, "sequence_batching"):
        client.infer("stateful", [infer_input("input", np.zeros((1, 16), np.float32), "FP32")])
    http = th.InferenceServerClient(fields_server.http_url)
    index = {m["name"]: m for m in http.get_model_repository_index()}
    assert "does not apply to an ensemble" in index["pipeline"]["reason"]


def test_a_harmless_field_loads_is_logged_once_and_echoed(fields_server):
    client = tc.InferenceServerClient(fields_server.url)
    assert client.is_model_ready("logged")
    x = np.zeros((2, 16), np.float32)
    assert client.infer("logged", [infer_input("input", x, "FP32")]).as_numpy("output").shape == (2, 4)
    log = fields_server.log()
    for path in ("input.format", "output.label_filename", "instance_group.name"):
        assert log.count(f"model 'logged': config field '{path}' is ignored") == 1, log
    assert "model 'logged': config field 'parameters' is ignored: icow knows no key 'enable_mem_arena'" in log
    config = client.get_model_config("logged").config
    assert config.input[0].format == mc.ModelInput.FORMAT_NCHW and config.output[0].label_filename == "labels.txt"


def test_a_refused_field_on_load_request_is_an_error_naming_it(fields_repo, make_server):
    srv = make_server(fields_repo, "--no-metrics", "--model-control-mode", "explicit")
    # A failed load is INTERNAL, as every failed load is (services/oip.py), with the reason.
    with expect_error(grpc.StatusCode.INTERNAL, "model_transaction_policy.decoupled"):
        tc.InferenceServerClient(srv.url).load_model("decoupled")
    with pytest.raises(th.InferenceServerException, match="'sequence_batching' is not supported"):
        th.InferenceServerClient(srv.http_url).load_model("stateful")


def test_a_refused_field_in_a_reload_leaves_the_loaded_version_serving(tmp_path):
    from icow.repository.repository import Repository

    make_models.write(make_models.mlp(), tmp_path, "m")
    repository = Repository(tmp_path)
    assert repository.load("m").ready()
    (tmp_path / "m" / "config.pbtxt").write_text("sequence_batching { }\n")  # a bad edit
    reloaded = repository.load("m")
    assert reloaded.ready(), "the version loaded before no longer serves"
    assert "reload failed" in reloaded.versions[1].reason and "'sequence_batching'" in reloaded.versions[1].reason
    y = repository.get("m").run({"input": np.zeros((1, 16), np.float32)})["output"]
    assert y.shape == (1, 4)


# -- the queue policy holds inside a batch being formed, on both planes ---------
# A batch of one-row requests to a model of max_batch_size 8 with a delay of 30 s
# forms for 30 s: what these tests see happens long before it would leave.

LONG_DELAY = ("max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 30000000\n"
              "  default_queue_policy { %s } }\n")


@pytest.fixture(scope="module", params=["native", "grpcio"])
def forming_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from batching_helpers import lookup_model
    from conftest import start_server

    repo = tmp_path_factory.mktemp("forming") / "models"
    for name, policy in (("bounded", "max_queue_size: 2"), ("timed", "default_timeout_microseconds: 200000")):
        make_models.write(lookup_model(), repo, name)
        (repo / name / "config.pbtxt").write_text(LONG_DELAY % policy)
    srv = start_server(repo, "--data-plane", request.param, log_dir=tmp_path_factory.mktemp("logs"))
    if request.param == "native":
        assert "data plane: native" in srv.log(), srv.log()
    yield srv
    srv.stop()


def _lookup_request(model: str, index: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = infer_input("i", np.array([[index]], np.int64), "INT64")
    request.inputs.append(tensor._get_tensor())
    request.raw_input_contents.append(tensor._get_content())
    return request


def _stats(srv, model: str):
    return tc.InferenceServerClient(srv.url).get_inference_statistics(model).model_stats[0]


def test_max_queue_size_counts_the_requests_in_a_forming_batch(forming_server):
    """Two requests wait in a batch that forms for 30 s (max_queue_size 2): four more are
    refused at once, as a full queue refuses; cancelled, the two leave without running."""
    before = _stats(forming_server, "bounded")
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(forming_server.url))
    waiting = []
    for i in range(2):
        waiting.append(stub.ModelInfer.future(_lookup_request("bounded", i)))
        wait_for(f"call {i + 1} in the server", lambda n=i + 1: pending(forming_server, "bounded") == n)
    for i in range(4):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(_lookup_request("bounded", i), timeout=20)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "has 2 requests queued, its limit (max_queue_size)" in refused.value.details()
    assert not any(call.done() for call in waiting), "the batch left before the refusals: they prove nothing"
    for call in waiting:
        call.cancel()
    wait_for("the cancelled calls to leave the batch", lambda: pending(forming_server, "bounded") == 0)
    after = _stats(forming_server, "bounded")
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 6
    assert after.execution_count == before.execution_count  # none of them ran


def test_a_queue_timeout_fires_inside_a_forming_batch_not_when_its_delay_ends(forming_server):
    """A request alone in a batch that would leave after 30 s times out in the queue after
    200 ms (default_timeout_microseconds): UNAVAILABLE, never run."""
    before = _stats(forming_server, "timed")
    client = tc.InferenceServerClient(forming_server.url)
    started = time.monotonic()
    with expect_error(grpc.StatusCode.UNAVAILABLE, "timed out in the queue", "default_timeout_microseconds"):
        client.infer("timed", [infer_input("i", np.array([[3]], np.int64), "INT64")], client_timeout=60)
    assert time.monotonic() - started < 10  # a backstop: the batch's delay is 30 s
    after = _stats(forming_server, "timed")
    assert after.execution_count == before.execution_count
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    # The model still serves: a request of a full batch's rows leaves at once.
    eight = np.arange(8, dtype=np.int64).reshape(8, 1) % 10
    assert client.infer("timed", [infer_input("i", eight, "INT64")]).as_numpy("y").shape == (8, 1)
