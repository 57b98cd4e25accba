"""The ``icow`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

from . import model_import
from ._version import __version__
from .object_store import StoreLocation, default_cache, is_store_url


def bundled_examples() -> Path:
    """The example model repository shipped inside the package."""
    return Path(str(resources.files("icow._examples") / "models"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icow",
        description="icow: serve ONNX models over gRPC with the Open Inference Protocol "
                    "(KServe v2), compatible with Triton's clients.",
        epilog="Run 'icow serve --help' for the server's options.",
    )
    parser.add_argument("--version", action="version", version=f"icow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve a model repository over gRPC",
        description="Serve the ONNX models of a repository (<dir>/<model>/<version>/model.onnx, "
                    "optional <dir>/<model>/config.pbtxt) over gRPC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model-repository", metavar="DIR|s3://BUCKET[/PREFIX]",
                       help="the model repository: a folder or an object store (default: the bundled examples)")
    serve.add_argument("--s3-endpoint", metavar="URL",
                       help="the object store's URL when it is not AWS, e.g. http://127.0.0.1:8333 "
                            "(credentials and region: the usual AWS_* environment variables)")
    serve.add_argument("--model-cache", type=Path, metavar="DIR",
                       help="with an s3:// repository: where its models are downloaded "
                            "(default: under $XDG_CACHE_HOME/icow or ~/.cache/icow)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    serve.add_argument("--port", type=int, default=8001, help="gRPC port (Triton's is 8001)")
    serve.add_argument("--model-control-mode", choices=["none", "explicit"], default="none",
                       help="none: load every model at start, no load/unload requests; "
                            "explicit: load the --load-model ones, then on request")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="with explicit control: a model to load at start (repeatable; '*' for all)")
    serve.add_argument("--workers", type=int, default=16, help="threads answering gRPC calls")
    serve.add_argument("--max-message-mb", type=int, default=2047,
                       help="largest request or response message, in MiB")
    serve.add_argument("--default-max-batch-size", type=int, default=32,
                       help="max_batch_size given to a model without config whose tensors all "
                            "start with a dynamic dimension")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    model_import.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("import-model", "export-model"):
        return model_import.run(args)
    if args.command != "serve":
        parser.print_help()
        return 0 if args.command is None else 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from .server import ServerOptions, serve
    except ImportError as e:
        print(f"icow serve needs the server's dependencies ({e.name} is missing): "
              "pip install 'icow[server]'", file=sys.stderr)
        return 1
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
    if args.load_model and args.model_control_mode != "explicit":
        print("icow serve: --load-model needs --model-control-mode explicit", file=sys.stderr)
        return 2
    options = ServerOptions(
        repository=repository, host=args.host, port=args.port, model_control_mode=args.model_control_mode,
        load_models=args.load_model, workers=args.workers, max_message_bytes=min(args.max_message_mb, 2047) << 20,
        default_max_batch_size=args.default_max_batch_size, store=store, s3_endpoint=args.s3_endpoint,
    )
    try:
        serve(options)
    except OSError as e:
        print(f"icow serve: {e}", file=sys.stderr)
        return 1
    return 0
