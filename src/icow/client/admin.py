"""``icow models list|load|unload|promote|split|deploy``: operate a running server over gRPC.

Works against any icow server it can reach (``--url``), with TLS and a bearer
token when the server asks for them. Needs only the client's dependencies.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from .._proto import rollout_pb2 as rp
from ..protocol.errors import InferenceServerError
from ..protocol.pairs import parse_pairs
from . import common, deploy
from .sync import Client

TOKEN_ENV = "ICOW_AUTH_TOKEN"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``models`` and its subcommands to the ``icow`` command line."""
    models = commands.add_parser(
        "models", help="list, load, unload, promote, split and deploy models of a running server",
        description="Operate the models of a running icow server over gRPC.")
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=os.environ.get("ICOW_URL", "127.0.0.1:8001"), metavar="HOST:PORT",
                            help="the server's gRPC address (default: $ICOW_URL or 127.0.0.1:8001)")
    connection.add_argument("--tls", action="store_true", help="use TLS (implied by the --tls-* options)")
    connection.add_argument("--tls-ca", type=Path, metavar="PEM",
                            help="CA bundle to check the server's certificate (default: the system's)")
    connection.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    connection.add_argument("--tls-key", type=Path, metavar="PEM", help="the client certificate's private key")
    connection.add_argument("--auth-token-env", default=TOKEN_ENV, metavar="VAR",
                            help=f"environment variable holding a bearer token, sent when set (default: {TOKEN_ENV})")
    connection.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, in seconds")
    listing = actions.add_parser("list", parents=[connection], help="models, versions, states, labels and traffic")
    listing.add_argument("model", nargs="?", help="only this model")
    for action, text in (("load", "load (or reload) a model"), ("unload", "unload a model: its requests finish")):
        actions.add_parser(action, parents=[connection], help=text).add_argument("model")
    promote = actions.add_parser(
        "promote", parents=[connection], help="point a label at a version (default label: stable)",
        description="Point LABEL at VERSION in one atomic step; requests in flight finish where they started. "
                    "VERSION may be another label (promote canary: stable takes canary's version).")
    promote.add_argument("model")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument("--label", default="stable", help="the label to move or create (default: stable)")
    split = actions.add_parser(
        "split", parents=[connection], help="set the traffic split for requests naming no version",
        description="Weigh versions or labels for requests that name no version, e.g. stable=90 canary=10.")
    split.add_argument("model")
    split.add_argument("weights", nargs="*", metavar="TARGET=WEIGHT", help="a version or label and its weight")
    split.add_argument("--off", action="store_true", help="remove the split: the highest ready version answers")
    deploy.add_parser(actions, connection)


def run(args: argparse.Namespace) -> int:
    """Run one ``icow models`` action; the exit status."""
    try:
        channel = _channel(args)
    except (OSError, ValueError) as e:
        print(f"icow models: {e}", file=sys.stderr)
        return 2
    try:
        with Client(channel=channel, timeout=args.timeout, retries=1) as client:
            print(_act(client, args))
    except InferenceServerError as e:
        print(f"icow models {args.action}: {e.code.name}: {e.message}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"icow models {args.action}: {e}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    return 0


def _act(client: Client, args: argparse.Namespace) -> str:
    if args.action == "deploy":
        return deploy.deploy(client, args)
    if args.action == "list":
        return _list(client, args.model)
    if args.action == "load":
        client.load(args.model)
        return _list(client, args.model)
    if args.action == "unload":
        client.unload(args.model)
        return f"unloaded model '{args.model}': running requests finish, then its versions close"
    if args.action == "promote":
        version = args.version
        if not version.isdigit():  # another label: take the version it names now
            labels = client.routing(args.model).labels
            if version not in labels:
                raise ValueError(f"model '{args.model}' has no label '{version}'")
            version = str(labels[version])
        return routing_table([client.set_routing(args.model, labels={args.label: int(version)})])
    if args.off == bool(args.weights):
        raise ValueError("give TARGET=WEIGHT pairs, or --off")
    weights = parse_pairs(",".join(args.weights))
    return routing_table([client.set_routing(args.model, split=[] if args.off else weights)])


def _list(client: Client, model: str | None) -> str:
    if model is not None:
        return routing_table([client.routing(model)])
    rows, routings = [], []
    index = client.repository_index()
    for name in dict.fromkeys(m.name for m in index):
        entries = [m for m in index if m.name == name]
        if any(m.version for m in entries):
            routings.append(client.routing(name))
        else:  # not loaded, or broken as a whole
            rows += [(m.name, "-", m.state, "", "", "", m.reason) for m in entries]
    return routing_table(routings, rows)


HEADERS = ("MODEL", "VERSION", "STATE", "LABELS", "TRAFFIC", "IN FLIGHT", "REASON")


def routing_table(routings: Sequence[rp.Routing], extra: Sequence[tuple] = ()) -> str:
    """The table ``icow models`` prints: one row per version, then a line per model's split."""
    rows: list[tuple] = []
    notes = []
    for routing in routings:
        shares = traffic_shares(routing)
        for v in routing.versions:
            share = f"{shares[v.version]:.0%}" if v.version in shares else ""
            rows.append((routing.model_name, str(v.version), v.state, ",".join(v.labels), share,
                         str(v.in_flight) if v.state == "READY" else "", v.reason))
        if routing.split:
            split = " ".join(f"{w.target}={w.weight}" for w in routing.split)
            notes.append(f"{routing.model_name}: split {split} (generation {routing.generation})")
        if routing.kept_in == "memory":  # other replicas do not follow it: say so where it is read
            notes.append(f"{routing.model_name}: routing {routing.kept_note or 'kept in memory only'}")
    rows += extra
    widths = [max(len(str(r[i])) for r in (HEADERS, *rows)) for i in range(len(HEADERS))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (HEADERS, *rows)]
    return "\n".join(lines + notes)


def traffic_shares(routing: rp.Routing) -> dict[int, float]:
    """Each ready version's share of the requests that name no version, as the server
    routes them: the split over its ready targets, else all to the highest version."""
    ready = {v.version for v in routing.versions if v.state == "READY"}
    shares: dict[int, float] = {}
    for w in routing.split:
        version = int(w.target) if w.target.isdigit() else routing.labels.get(w.target)
        if version in ready and w.weight:
            shares[version] = shares.get(version, 0) + w.weight
    total = sum(shares.values())
    if not total:
        return {max(ready): 1.0} if ready else {}
    return {v: n / total for v, n in shares.items()}


def _channel(args: argparse.Namespace) -> grpc.Channel:
    options = common.channel_options(2**31 - 1 if args.action == "deploy" else 64 << 20)  # a model in one message
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None)
        channel = grpc.secure_channel(args.url, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.url, options=options)
    token = os.environ.get(args.auth_token_env, "").strip()
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call, as icow's --auth-tokens-* expect."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation, details: grpc.ClientCallDetails, request):
        metadata = [*(details.metadata or ()), self.header]
        return continuation(details._replace(metadata=metadata), request)
