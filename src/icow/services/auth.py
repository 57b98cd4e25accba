"""Bearer-token authentication and per-token model allow-lists, as a gRPC
server interceptor.

Tokens come from a file or an environment variable, in one format: one token
per line, optionally followed by the models it may use and its permissions
(words starting with ``+``); ``#`` starts a comment::

    # token                           models (none, or *: every model)  permissions
    3f9c1d0e6b2a4c8d9e7f              *
    team-a-7d41e0c2b9                 mlp scale
    ci-deployer-51c0a9e3f2            mlp                               +deploy

``+deploy``: the token may deploy over the wire (RepositoryModelLoad with a
``config`` or ``file:`` parameter, on a server with --allow-deploy), for the
models it may use. Without it such a load gets PERMISSION_DENIED.

A client sends ``authorization: Bearer <token>`` metadata. A missing or wrong
token gets UNAUTHENTICATED; a known token asking for a model outside its list
gets PERMISSION_DENIED. A token limited to some models may not use the calls
that span every model (RepositoryIndex, ModelStatistics without a name). On
ModelStreamInfer the token is checked once, when the stream opens, and each
request's model against its list: a refused one is answered in the stream
(services/stream.py), which stays open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .._wire import model_name
from ..protocol.errors import InferenceServerError
from ..protocol.names import shorten
from .handlers import like

INFERENCE = "/inference.GRPCInferenceService/"
ROLLOUT = "/icow.rollout.ModelRollout/"
# Left open by --auth-open-health: liveness, readiness and metadata, which probes
# and service discovery call without credentials.
HEALTH_AND_METADATA = frozenset({
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    INFERENCE + "ServerLive", INFERENCE + "ServerReady", INFERENCE + "ModelReady",
    INFERENCE + "ServerMetadata", INFERENCE + "ModelMetadata",
})
# The calls about one model, and how to read its name from the request.
_MODEL_OF: dict[str, Callable[[Any], str]] = {
    INFERENCE + "ModelInfer": model_name,  # from the raw bytes: ModelInfer has no deserializer
    **{INFERENCE + m: (lambda r: r.name) for m in ("ModelReady", "ModelMetadata", "ModelConfig")},
    **{INFERENCE + m: (lambda r: r.model_name) for m in ("RepositoryModelLoad", "RepositoryModelUnload")},
    INFERENCE + "ModelStatistics": lambda r: r.name or None,  # None: every model
    **{ROLLOUT + m: (lambda r: r.model_name) for m in ("GetRouting", "SetRouting")},
}
PERMISSIONS = ("+deploy",)
DEPLOY = INFERENCE + "RepositoryModelLoad"  # with parameters: a deploy, for +deploy tokens only
# The stream of inference requests: each request's model checked (services/stream.py's check).
_STREAM = INFERENCE + "ModelStreamInfer"
# The calls about every model at once.
_ALL_MODELS = frozenset({INFERENCE + "RepositoryIndex"})


class AuthError(ValueError):
    """A token file or variable that cannot be used."""


@dataclass(frozen=True)
class Token:
    digest: bytes  # sha256 of the token: compared in constant time, at a fixed length
    models: frozenset[str] | None  # None: every model
    line: int
    deploy: bool = False  # +deploy: load requests may bring a config and model files


def parse_tokens(text: str, source: str) -> list[Token]:
    """Tokens from the text of a token file (or variable) named ``source``."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        secret, models = words[0], [w for w in words[1:] if not w.startswith("+")]
        unknown = [w for w in words[1:] if w.startswith("+") and w not in PERMISSIONS]
        if unknown:
            raise AuthError(f"{source} line {number}: unknown permission {unknown[0]!r}; "
                            f"the permissions are: {', '.join(PERMISSIONS)}")
        if len(secret) < 16:
            raise AuthError(f"{source} line {number}: a token needs at least 16 characters; "
                            "make one with: python -c 'import secrets; print(secrets.token_hex(24))'")
        tokens.append(Token(_digest(secret), None if not models or "*" in models else frozenset(models), number,
                            "+deploy" in words[1:]))
    if not tokens:
        raise AuthError(f"{source} holds no token")
    return tokens


def load_tokens(file: Path | None, env_name: str | None, environ: dict[str, str]) -> list[Token]:
    """Tokens of ``--auth-tokens-file`` and ``--auth-tokens-env`` (either or both)."""
    tokens: list[Token] = []
    if file is not None:
        try:
            tokens += parse_tokens(file.read_text(), f"token file {file}")
        except OSError as e:
            raise AuthError(f"cannot read token file {file}: {e.strerror or e}") from None
    if env_name:
        if not environ.get(env_name, "").strip():
            raise AuthError(f"environment variable {env_name} (--auth-tokens-env) is empty or not set")
        tokens += parse_tokens(environ[env_name], f"environment variable {env_name}")
    return tokens


def _digest(secret: str | bytes) -> bytes:
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).digest()


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token of every call except ``open_methods``."""

    def __init__(self, tokens: Iterable[Token], open_methods: Iterable[str] = ()) -> None:
        self.tokens = tuple(tokens)
        self.open_methods = frozenset(open_methods)

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Token | str:
        """The caller's token, or why there is none."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return "missing credentials: send the metadata 'authorization: Bearer <token>'"
        scheme, _, secret = (values[0].decode() if isinstance(values[0], bytes) else values[0]).partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return "the 'authorization' metadata must be 'Bearer <token>'"
        digest = _digest(secret.strip())
        found = None
        for token in self.tokens:  # every token is compared: the time does not say which matched
            if hmac.compare_digest(token.digest, digest):
                found = token
        return found if found is not None else "invalid bearer token"

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        if details.method in self.open_methods:
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        token = self.authenticate(details.invocation_metadata)
        if isinstance(token, str):
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, token)
        if details.method == DEPLOY and not token.deploy:
            handler = _deploy_checked(handler, token)
        if token.models is None:
            return handler
        if details.method in _ALL_MODELS:
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, _limited(token, "this call spans every model"))
        if details.method == _STREAM:
            return _checking_each(handler, token)
        model_of = _MODEL_OF.get(details.method)
        if model_of is None or handler.unary_unary is None:
            return handler  # not about one model (server metadata, health, ...)
        behavior = handler.unary_unary

        def checked(request, context: grpc.ServicerContext):
            try:
                model = model_of(request)
            except ValueError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {e}")
            if model is None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, _limited(token, "name a model"))
            if model not in token.models:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              _limited(token, f"model '{shorten(model)}' is not among them"))
            return behavior(request, context)

        return like(handler, checked)


def deploy_refusal(token: Token) -> str:
    """Why ``token`` may not deploy."""
    return (f"the token (line {token.line} of the token list) may not deploy models (load with a 'config' or "
            "'file:' parameter): give it the +deploy permission in the token list")


def _deploy_checked(handler: grpc.RpcMethodHandler, token: Token) -> grpc.RpcMethodHandler:
    """``handler``, refusing a load request with parameters (a deploy)."""
    behavior = handler.unary_unary

    def checked(request, context: grpc.ServicerContext):
        if request.parameters:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, deploy_refusal(token))
        return behavior(request, context)

    return like(handler, checked)


def _checking_each(handler: grpc.RpcMethodHandler, token: Token) -> grpc.RpcMethodHandler:
    """The stream handler, told to refuse each request for a model outside the token's list."""
    behavior = handler.stream_stream

    def check(model: str) -> None:
        if model not in (token.models or ()):
            raise InferenceServerError(grpc.StatusCode.PERMISSION_DENIED,
                                       _limited(token, f"model '{shorten(model)}' is not among them"))

    return like(handler, lambda requests, context: behavior(requests, context, check=check))


def _limited(token: Token, why: str) -> str:
    return f"the token (line {token.line} of the token list) may use only the models " \
           f"{', '.join(sorted(token.models or ()))}: {why}"


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails every call."""

    def refuse(request, context: grpc.ServicerContext):
        context.abort(code, message)

    return like(handler, refuse)
