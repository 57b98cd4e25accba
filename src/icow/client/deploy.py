"""``icow models deploy FILE.onnx --model NAME``: push a model file to a running server
(Triton's RepositoryModelLoad with ``config`` and ``file:<version>/model.onnx``), which
writes it into its repository as a new version and loads it; then, with ``--label``,
point a label at it. ``icow models deploy --model NAME --config ensemble.pbtxt`` sends an
ensemble's config alone (its versions hold no file).

The file travels in one gRPC message (as Triton's clients send it), so the progress
shown is by stage: read, sent and loaded (the server answers once the version is
checked and loaded), not a per-byte bar.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format, text_format

from .._proto import model_config_pb2 as mc
from ..protocol.errors import InferenceServerError
from .sync import Client

MODEL_FILE = "model.onnx"


def add_parser(actions: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    """Add ``deploy`` to the ``icow models`` actions."""
    deploy = actions.add_parser(
        "deploy", parents=[connection], help="push an ONNX file (or an ensemble's config) to the server",
        description="Send FILE to a server started with --allow-deploy: it is written into the server's "
                    "repository (folder or object store) as a new version, checked, and loaded; the model's "
                    "version policy and labels then govern it. A new model may omit --config (everything from the "
                    "graph); a model the server has needs --config, since a deploy replaces its config.pbtxt. "
                    "An ensemble (platform \"ensemble\") is its --config alone, with no FILE, deployed after "
                    "the models its steps run.")
    deploy.add_argument("file", type=Path, nargs="?", metavar="FILE.onnx",
                        help="the ONNX model file (none for an ensemble)")
    deploy.add_argument("--model", required=True, metavar="NAME", help="the model's name")
    deploy.add_argument("--version", type=int, metavar="N",
                        help="the version number (default: one above the highest the server lists)")
    deploy.add_argument("--config", type=Path, metavar="config.json|config.pbtxt",
                        help="the model's config, as JSON (Triton's) or text format (config.pbtxt)")
    deploy.add_argument("--label", metavar="LABEL", help="then point this label at the new version (e.g. canary)")


def deploy(client: Client, args: argparse.Namespace, progress: TextIO = sys.stderr) -> str:
    """Deploy ``args.file`` as ``args.model``; what to print (stages go to ``progress``)."""
    config = _config_json(args.config) if args.config is not None else None
    if args.file is None:
        return _deploy_ensemble(client, args, config, _Progress(progress))
    versions = _versions(client, args.model)
    if config is None:
        if versions is not None:
            raise ValueError(f"model '{args.model}' is on the server: give --config (a deploy replaces its "
                             "config.pbtxt with the one it brings, as Triton's load does)")
        config = "{}"  # a new model: inputs, outputs and batching from the graph
    version = args.version or max(versions or [0]) + 1
    if version < 1:
        raise ValueError(f"--version must be a positive number, not {version}")
    step = _Progress(progress)
    step(f"reading {args.file}")
    try:
        data = args.file.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {args.file}: {e.strerror or e}") from None
    step(f"read {_size(len(data))}; sending it to {args.url} as model '{args.model}' version {version} "
         "(one message; the server checks and loads it before it answers)")
    try:
        client.load(args.model, config=config, files={f"file:{version}/{MODEL_FILE}": data})
    except InferenceServerError as e:
        if e.code != grpc.StatusCode.RESOURCE_EXHAUSTED or "max" not in e.message:
            raise
        raise InferenceServerError(e.code, f"{e.message} (the model travels in one message: the server's "
                                   f"--max-message-mb must be above {_size(len(data))})") from None
    step(f"loaded: model '{args.model}' version {version} is in the server's repository")
    if args.label:
        client.set_routing(args.model, labels={args.label: version})
        step(f"label {args.label} -> version {version}")
    return f"deployed {args.file} as model '{args.model}' version {version}"


def _deploy_ensemble(client: Client, args: argparse.Namespace, config: str | None, step: _Progress) -> str:
    """An ensemble's config alone: the server writes it and an empty version folder."""
    if config is None or _platform(config) != "ensemble":
        raise ValueError("give FILE.onnx, or --config with an ensemble's config (platform \"ensemble\") to deploy "
                         "an ensemble, whose versions hold no file")
    if args.version is not None or args.label is not None:
        raise ValueError("an ensemble's versions come from its config (version 1, or its version_policy's "
                         "specific versions): --version and --label are for model files")
    step(f"sending the config of ensemble '{args.model}' to {args.url} (the server checks its steps against the "
         "models they run, then loads it)")
    client.load(args.model, config=config)
    step(f"loaded: ensemble '{args.model}' is in the server's repository")
    return f"deployed ensemble '{args.model}'"


def _platform(config: str) -> str:
    """The platform a JSON config names ("" where it names none or does not parse: the server says why)."""
    message = mc.ModelConfig()
    try:
        json_format.Parse(config, message)
    except json_format.ParseError:
        return ""
    return message.platform


def _config_json(path: Path) -> str:
    """The config file as JSON: a .pbtxt is converted, JSON sent as written (the server checks it)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read --config {path}: {e.strerror or e}") from None
    if path.suffix != ".pbtxt":
        return text
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ValueError(f"--config {path}: {e}") from None
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def _versions(client: Client, model: str) -> list[int] | None:
    """The versions the server lists for ``model``; None when its repository has no such model."""
    try:
        return [v.version for v in client.routing(model).versions]
    except InferenceServerError as e:
        if e.code == grpc.StatusCode.NOT_FOUND:
            return None
        if e.code == grpc.StatusCode.UNAVAILABLE:  # in the repository, not loaded: its versions are unknown
            return []
        raise


class _Progress:
    """Stages on stderr, each with the seconds since the first."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.start = out, time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", file=self.out, flush=True)


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"
