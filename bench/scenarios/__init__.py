"""icow measured as users meet it: its server in a subprocess, called over gRPC."""

from __future__ import annotations

import os
import shlex

import grpc

from icow._proto import inference_pb2, inference_pb2_grpc

from ..harness import Env, Server

CODECS = ("native", "protobuf")


def icow_server(env: Env, codec: str = "native", *options: str) -> Server:
    """The icow server with ``codec`` on the bench repository, shared by every
    workload and every scenario that uses that codec. On the grpcio data plane
    unless ``options`` say ``--data-plane native`` (the ``icow_plane`` target).

    ICOW_BENCH_SERVER_ARGS adds server options (e.g. ``--no-metrics``); metrics
    are on, as by default, but on a free port unless those options say otherwise."""
    extra = shlex.split(os.environ.get("ICOW_BENCH_SERVER_ARGS", ""))
    if not {"--metrics-port", "--no-metrics"} & {a.split("=")[0] for a in extra}:
        extra += ["--metrics-port", "0"]
    if "--http-port" not in {a.split("=")[0] for a in extra}:
        extra += ["--http-port", "0"]  # off: 8000 may be taken, and only HTTP scenarios need it
    if env.device != "cpu":
        extra += ["--device", env.device]
    plane = [] if "--data-plane" in options else ["--data-plane", "grpcio"]
    name = "-".join(["icow", codec, *(o.lstrip("-") for o in options)])
    if name not in env.servers:  # started once, for every workload
        env.notes.append(f"{name} server options: {' '.join([*options, *extra])}")
    return env.server(name, lambda port: ["-m", "icow", "serve", "--model-repository", str(env.repo),
                                          "--host", "127.0.0.1", "--port", str(port),
                                          "--codec", codec, *plane, *options, *extra], _ready)


def _ready(channel: grpc.Channel) -> bool:
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=1).ready
