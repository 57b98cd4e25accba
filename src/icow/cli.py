"""The ``icow`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from ._version import __version__
from .client import admin as admin_cli
from .repository import model_import
from .repository.object_store import StoreLocation, default_cache, is_store_url


def bundled_examples() -> Path:
    """The example model repository shipped inside the package."""
    return Path(str(resources.files("icow._examples") / "models"))


def _device(text: str) -> str:
    from .runtime.execution import parse_device

    try:
        parse_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icow",
        description="icow: serve ONNX models over gRPC with the Open Inference Protocol "
                    "(KServe v2), compatible with Triton's clients.",
        epilog="Run 'icow serve --help' for the server's options, 'icow models --help' for operating a "
               "running server.",
    )
    parser.add_argument("--version", action="version", version=f"icow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve a model repository over gRPC",
        description="Serve the ONNX models of a repository (<dir>/<model>/<version>/model.onnx, "
                    "optional <dir>/<model>/config.pbtxt) over gRPC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model-repository", metavar="DIR|s3://BUCKET[/PREFIX]", action="append",
                       help="the model repository: a folder or an object store (default: the bundled examples); "
                            "one: given twice, the server refuses to start")
    serve.add_argument("--s3-endpoint", metavar="URL",
                       help="the object store's URL when it is not AWS, e.g. http://127.0.0.1:8333 "
                            "(credentials and region: the usual AWS_* environment variables)")
    serve.add_argument("--model-cache", type=Path, metavar="DIR",
                       help="with an s3:// repository: where its models are downloaded "
                            "(default: under $XDG_CACHE_HOME/icow or ~/.cache/icow)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    serve.add_argument("--port", type=int, default=8001, help="gRPC port (Triton's is 8001)")
    serve.add_argument("--http-port", type=int, default=8000,
                       help="HTTP/REST port of the same protocol (KServe v2 REST, Triton's binary tensors; "
                            "Triton's is 8000); 0: no HTTP")
    serve.add_argument("--http-read-timeout-secs", type=float, default=60.0, metavar="SECONDS",
                       help="an HTTP request's head (request line and headers) must arrive within this time of "
                            "the connection or the request starting, and its body may not pause longer; "
                            "else 408 and the connection is closed (slow or stalled clients hold no resources)")
    serve.add_argument("--model-control-mode", choices=["none", "explicit", "poll"],
                       help="none (default): load every model at start, no load/unload requests; "
                            "explicit (the default with --allow-deploy): load the --load-model ones, then on "
                            "request; poll: load every model, then follow changes of the repository's folders")
    serve.add_argument("--allow-deploy", action="store_true",
                       help="let load requests bring a model config and model files (Triton's 'config' and "
                            "'file:<version>/<file>' parameters, 'icow models deploy'), written into the repository "
                            "as new versions; with tokens, only for those marked +deploy. Sets --model-control-mode "
                            "explicit (refuses another) and, without --load-model, loads every model at start")
    serve.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
                       help="with poll: how often the repository is looked at for changes")
    serve.add_argument("--routing-in-memory", action="store_true",
                       help="keep label and split changes (icow models promote|split) in this replica's memory "
                            "instead of writing them to the model's routing.json for every replica to follow")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="with explicit control: a model to load at start (repeatable; '*' for all)")
    serve.add_argument("--workers", type=int, default=16,
                       help="threads answering gRPC calls, and HTTP requests that may wait (a pool of its own)")
    serve.add_argument("--max-message-mb", type=int, default=2047,
                       help="largest request or response message, in MiB")
    serve.add_argument("--default-max-batch-size", type=int, default=32,
                       help="max_batch_size given to a model without config whose tensors all "
                            "start with a dynamic dimension")
    serve.add_argument("--max-queue-size", type=int, default=0,
                       help="requests that may wait for a model version's instances, where its config sets "
                            "no max_queue_size; beyond it RESOURCE_EXHAUSTED (0: no limit but --workers)")
    serve.add_argument("--cache-size-mb", type=int, default=0, metavar="MB",
                       help="the response cache, in MiB, for models whose config enables response_cache "
                            "(LRU, shared by all models; 0: no cache)")
    serve.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N", type=_device,
                       help="where models run unless their instance_group says otherwise (cuda needs icow[gpu])")
    serve.add_argument("--codec", choices=["native", "protobuf"], default="native",
                       help="how ModelInfer messages are read and written: native (compiled, zero-copy) "
                            "or protobuf (the generated classes; the baseline)")
    serve.add_argument("--data-plane", choices=["native", "grpcio"], default="native",
                       help="the gRPC server on the port: native (grpc++ in icow's extension; ModelInfer answered "
                            "in C++, other calls passed to grpcio) or grpcio. Without icow._plane: grpcio, and a "
                            "warning")
    serve.add_argument("--no-fast-path", action="store_true",
                       help="answer every ModelInfer on the Python path (else those it can be are answered in C++ "
                            "by icow._plane, on either data plane); for comparison and debugging")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="debug also logs every request (the access log)")
    ops = serve.add_argument_group("operations")
    ops.add_argument("--log-format", default="text", choices=["text", "json"],
                     help="json: one JSON object per line, requests with request_id, model, version, status, "
                          "duration_ms")
    ops.add_argument("--metrics-port", type=int, default=8002,
                     help="Prometheus metrics over HTTP at /metrics on --host (Triton's is 8002; 0: any free port)")
    ops.add_argument("--no-metrics", action="store_true", help="serve no metrics endpoint")
    ops.add_argument("--shutdown-grace-secs", type=float, default=5.0,
                     help="on SIGTERM/SIGINT, how long running calls may take to finish")
    ops.add_argument("--max-concurrent-requests", type=int, default=0,
                     help="calls handled at once, counted apart on gRPC and on HTTP; more get RESOURCE_EXHAUSTED "
                          "(HTTP: 429) (0: no limit)")
    ops.add_argument("--max-loaded-models", type=int, default=0,
                     help="models loaded at once; loading one more gets RESOURCE_EXHAUSTED (0: no limit)")
    ops.add_argument("--buffer-pool-mb", type=int, default=256,
                     help="native plane: MiB of large request/response blocks kept for reuse between calls "
                          "(blocks idle for --memory-trim-secs go back to the system)")
    ops.add_argument("--memory-trim-secs", type=float, default=10.0,
                     help="how often memory that large calls left behind goes back to the system: pooled blocks "
                          "idle that long, and free heap (0: never)")
    shm = serve.add_argument_group("shared memory (Triton's system and CUDA shared-memory extensions)")
    shm.add_argument("--allow-client-shm", action="store_true",
                     help="let clients register shared-memory regions for tensors (same host only). Off by default: "
                          "any client that can reach the port could then have the server map host shared memory")
    shm.add_argument("--shm-max-regions", type=int, default=64, help="shared-memory regions registered at once")
    shm.add_argument("--shm-max-mapped-mb", type=int, default=4096,
                     help="MiB of shared memory mapped at once, over every region")
    security = serve.add_argument_group("TLS and authentication")
    security.add_argument("--tls-cert", type=Path, metavar="PEM",
                          help="server certificate (chain): TLS on the gRPC port")
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="the server certificate's private key")
    security.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                          help="mutual TLS: clients must present a certificate signed by this CA")
    security.add_argument("--auth-tokens-file", type=Path, metavar="FILE",
                          help="bearer tokens, one per line, each optionally followed by the models it may use")
    security.add_argument("--auth-tokens-env", metavar="VAR",
                          help="an environment variable holding tokens in the same format")
    security.add_argument("--auth-open-health", action="store_true",
                          help="with tokens: leave health, liveness, readiness and metadata calls open")
    model_import.add_commands(commands)
    admin_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("import-model", "export-model"):
        return model_import.run(args)
    if args.command == "models":
        return admin_cli.run(args)
    if args.command != "serve":
        parser.print_help()
        return 0 if args.command is None else 2
    from .services import logs

    logs.configure(args.log_level, args.log_format)
    try:
        from .server import ServerOptions, serve
    except ImportError as e:
        print(f"icow serve needs the server's dependencies ({e.name} is missing): "
              "pip install 'icow[server]'", file=sys.stderr)
        return 1
    if args.model_repository and len(args.model_repository) > 1:  # never the last one silently
        print(f"icow serve: --model-repository is given {len(args.model_repository)} times "
              f"({', '.join(args.model_repository)}); icow serves one repository: put the models "
              "into one folder or store prefix", file=sys.stderr)
        return 2
    args.model_repository = args.model_repository[0] if args.model_repository else None
    store = None
    if args.model_repository and is_store_url(args.model_repository):
        store = args.model_repository
        try:
            location = StoreLocation.parse(store)
        except ValueError as e:
            print(f"icow serve: --model-repository: {e}", file=sys.stderr)
            return 2
        repository = args.model_cache or default_cache(location, args.s3_endpoint)  # the store's local copy
    else:
        repository = Path(args.model_repository) if args.model_repository else bundled_examples()
        if not repository.is_dir():
            print(f"icow serve: model repository {repository} is not a directory", file=sys.stderr)
            return 1
    if args.allow_deploy and args.model_control_mode not in (None, "explicit"):
        print(f"icow serve: --allow-deploy needs --model-control-mode explicit, not {args.model_control_mode}",
              file=sys.stderr)
        return 2
    args.model_control_mode = args.model_control_mode or ("explicit" if args.allow_deploy else "none")
    if args.allow_deploy and not args.load_model:
        args.load_model = ["*"]  # what was deployed before a restart serves again
    if args.load_model and args.model_control_mode != "explicit":
        print("icow serve: --load-model needs --model-control-mode explicit", file=sys.stderr)
        return 2
    if args.repository_poll_secs <= 0:
        print("icow serve: --repository-poll-secs must be > 0", file=sys.stderr)
        return 2
    if not 0 < args.http_read_timeout_secs < 86400:
        print("icow serve: --http-read-timeout-secs must be > 0 and under a day", file=sys.stderr)
        return 2
    if args.buffer_pool_mb < 0 or args.memory_trim_secs < 0 or args.cache_size_mb < 0:
        print("icow serve: --buffer-pool-mb, --memory-trim-secs and --cache-size-mb must be >= 0", file=sys.stderr)
        return 2
    from .services.auth import AuthError, load_tokens
    from .shm.registry import Limits

    try:
        tokens = load_tokens(args.auth_tokens_file, args.auth_tokens_env, dict(os.environ))
    except AuthError as e:
        print(f"icow serve: {e}", file=sys.stderr)
        return 2
    if args.auth_open_health and not tokens:
        print("icow serve: --auth-open-health needs --auth-tokens-file or --auth-tokens-env", file=sys.stderr)
        return 2
    options = ServerOptions(
        repository=repository, host=args.host, port=args.port, model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs, routing_in_memory=args.routing_in_memory,
        load_models=args.load_model, workers=args.workers, max_message_bytes=min(args.max_message_mb, 2047) << 20,
        default_max_batch_size=args.default_max_batch_size, max_queue_size=args.max_queue_size,
        device=args.device, cache_bytes=args.cache_size_mb << 20,
        codec=args.codec,
        data_plane=args.data_plane, fast_path=not args.no_fast_path,
        grace_seconds=args.shutdown_grace_secs, metrics_port=None if args.no_metrics else args.metrics_port,
        http_port=args.http_port or None, http_read_timeout_s=args.http_read_timeout_secs,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, auth_tokens=tokens,
        auth_open_health=args.auth_open_health, max_concurrent_requests=args.max_concurrent_requests,
        max_loaded_models=args.max_loaded_models, buffer_pool_bytes=args.buffer_pool_mb << 20,
        memory_trim_secs=args.memory_trim_secs, store=store, s3_endpoint=args.s3_endpoint,
        shm=Limits(args.allow_client_shm, args.shm_max_regions, args.shm_max_mapped_mb << 20),
        allow_deploy=args.allow_deploy,
    )
    try:
        serve(options)
    except OSError as e:
        print(f"icow serve: {e}", file=sys.stderr)
        return 1
    return 0
