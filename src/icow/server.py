"""Builds the gRPC server, loads the repository and runs until stopped."""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .repository.poll import RepositoryPoller
from .repository.repository import Repository
from .runtime.cache import ResponseCache
from .runtime.execution import parse_device
from .services import litecow, logs, reflection
from .services import plane as native_plane
from .services import rollout as rollout_service
from .services.auth import HEALTH_AND_METADATA, AuthInterceptor, Token
from .services.health import SERVICE_NAME as HEALTH_SERVICE
from .services.health import Health
from .services.logs import RequestLog
from .services.malformed import MalformedRequests
from .services.memory import MemoryKeeper
from .services.oip import SERVICE, InferenceService, method_handlers
from .services.stream import METHOD as STREAM_INFER
from .services.stream import StreamInfer
from .shm.registry import Limits

log = logging.getLogger(__name__)


@dataclass
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    port: int = 8001
    model_control_mode: str = "none"  # none: load everything at start; explicit: on request; poll: follow the folder
    repository_poll_secs: float = 15.0  # with poll: how often the repository is looked at
    load_models: list[str] = field(default_factory=list)  # with explicit; "*" for all
    workers: int = 16  # gRPC threads; ONNX Runtime releases the GIL while it runs
    max_message_bytes: int = 2**31 - 1
    default_max_batch_size: int = 32
    max_queue_size: int = 0  # per model version unless its config says; 0: bounded by the workers only
    device: str = "cpu"  # where models without instance_group run: cpu, cuda or cuda:N
    cache_bytes: int = 0  # the response cache (models whose config enables it); 0: none
    grace_seconds: float = 5.0
    codec: str = "native"  # or "protobuf": the baseline
    data_plane: str = "native"  # native (grpc++, where icow._plane loads; else grpcio, with a warning) or grpcio
    fast_path: bool = True  # ModelInfer in C++ where it can be (icow._plane); False: always the Python path
    metrics_port: int | None = 8002  # Prometheus endpoint over HTTP; None: off
    http_port: int | None = None  # the REST binding (icow.http); 0: any free port; None: off (the CLI's default: 8000)
    http_read_timeout_s: float = 60.0  # a request's head must come within it, and its body not pause longer
    tls_cert: Path | None = None  # PEM server certificate (chain) and key: TLS on the gRPC port
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA bundle: clients must present a certificate it signed
    auth_tokens: list[Token] = field(default_factory=list)  # empty: no authentication
    auth_open_health: bool = False  # health, readiness and metadata calls need no token
    max_concurrent_requests: int = 0  # calls handled at once, beyond that RESOURCE_EXHAUSTED; 0: no limit
    max_loaded_models: int = 0  # 0: no limit
    buffer_pool_bytes: int = 256 << 20  # the native plane's large blocks kept idle for reuse, at most
    memory_trim_secs: float = 10.0  # how often memory left by large calls goes back (services/memory.py); 0: never
    store: str | None = None  # s3://bucket/prefix: the repository then is its local cache folder
    s3_endpoint: str | None = None
    shm: Limits = field(default_factory=Limits)  # client shared memory: off unless --allow-client-shm
    allow_deploy: bool = False  # load requests may write a config and model files into the repository
    routing_in_memory: bool = False  # routing changes stay in this replica (not written to routing.json)


class InferenceServer:
    """icow's gRPC server over one model repository."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        store = None
        if options.store:
            from .repository.object_store import ObjectStore, StoreLocation  # boto3 only when a store is used

            store = ObjectStore(StoreLocation.parse(options.store), options.repository, endpoint=options.s3_endpoint)
            store.check()
        self.repository = Repository(options.repository, default_max_batch_size=options.default_max_batch_size,
                                     max_models=options.max_loaded_models, max_queue_size=options.max_queue_size,
                                     cache=ResponseCache(options.cache_bytes) if options.cache_bytes > 0 else None,
                                     device=parse_device(options.device), store=store,
                                     routing_in_memory=options.routing_in_memory)
        self.service = InferenceService(self.repository, control_mode=options.model_control_mode,
                                        codec=options.codec, max_message_bytes=options.max_message_bytes,
                                        shm=options.shm, allow_deploy=options.allow_deploy)
        self.poller = RepositoryPoller(self.repository, options.repository_poll_secs) \
            if options.model_control_mode == "poll" else None
        self.health = Health(self.repository, SERVICE)
        self.repository.listeners.append(self.health.refresh)
        self.requests = RequestLog()
        # Parsing first: a request that does not parse is INVALID_ARGUMENT, not grpcio's INTERNAL.
        interceptors: list[grpc.ServerInterceptor] = [MalformedRequests(), self.requests]
        if options.auth_tokens:
            interceptors.append(AuthInterceptor(options.auth_tokens,
                                                HEALTH_AND_METADATA if options.auth_open_health else ()))
        native = _use_native_plane(options.data_plane)
        self.data_plane = "native" if native else "grpcio"
        grpc_options = [("grpc.max_send_message_length", options.max_message_bytes),
                        ("grpc.max_receive_message_length", options.max_message_bytes),
                        ("grpc.so_reuseport", 0)]  # a second server on a taken port must fail, not share it
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.workers,
                                                               thread_name_prefix="icow-rpc"), options=grpc_options,
                                   interceptors=interceptors,  # the native plane limits the calls itself
                                   maximum_concurrent_rpcs=None if native else options.max_concurrent_requests or None)
        # A stream's requests: at most --workers (and --max-concurrent-requests) taken at once per stream.
        per_stream = min(options.workers, options.max_concurrent_requests or options.workers)
        self.stream = StreamInfer(self.service, self.requests, workers=options.workers, max_in_flight=per_stream)
        self._server.add_registered_method_handlers(SERVICE, {**method_handlers(self.service),
                                                              STREAM_INFER: self.stream.handler()})
        # lIteCOW's ICOW service on the same port, over the same repository
        self._server.add_registered_method_handlers(litecow.SERVICE, litecow.method_handlers(
            litecow.LitecowService(self.repository, store.location if store is not None else None)))
        rollout_service.add_to(self._server, self.repository)  # labels and traffic split
        self.health.add_to(self._server)
        reflection.enable(self._server, [SERVICE, litecow.SERVICE, rollout_service.SERVICE, HEALTH_SERVICE])
        address = f"{options.host}:{options.port}"
        tls = _tls_files(options)
        self.plane: native_plane.NativePlane | None = None
        self._stopped, self._stopping = threading.Event(), False  # the native plane's shutdown
        self._stop_lock = threading.RLock()  # re-entrant: a signal handler may run inside it
        self._cut = 0
        if native:
            self._listen_native(address, tls)
        else:
            self.port = _listen(self._server, address, tls)
        self.address = f"{options.host}:{self.port}"
        self.metrics = None
        self.memory: MemoryKeeper | None = None
        if options.metrics_port is not None:
            from .services.metrics import MetricsServer  # prometheus-client is needed only with metrics on

            self.metrics = MetricsServer(self.repository, options.host, options.metrics_port)
        self.http = self._http_listener(tls is not None) if options.http_port is not None else None
        self.http_port = self.http.port if self.http is not None else None

    def _http_listener(self, tls: bool):
        from .http.app import HttpApp, HttpLimits  # uvicorn and orjson only when HTTP is served
        from .http.listener import HttpListener

        o = self.options
        app = HttpApp(self.service, HttpLimits(max_body_bytes=o.max_message_bytes,
                                               max_concurrent=o.max_concurrent_requests, tokens=o.auth_tokens,
                                               open_health=o.auth_open_health), workers=o.workers)
        files = (o.tls_cert, o.tls_key, o.tls_client_ca) if tls else None
        return HttpListener(app, o.host, o.http_port, tls=files, read_timeout_s=o.http_read_timeout_s)

    def _listen_native(self, address: str, tls: tuple[bytes, bytes, bytes | None] | None) -> None:
        """The plane on ``address``; the grpcio server behind it on a Unix socket of a private
        folder (mode 0700: only this user reaches it, and the plane's TLS is not bypassed)."""
        self._backend_dir = tempfile.mkdtemp(prefix="icow-backend-")
        backend = f"unix:{self._backend_dir}/grpc.sock"
        _listen(self._server, backend, None)
        self._server.start()  # the plane passes calls on from the moment it listens
        try:
            self.plane = native_plane.NativePlane(
                self.repository, address, backend, workers=self.options.workers,
                max_message_bytes=self.options.max_message_bytes,
                max_concurrent=self.options.max_concurrent_requests, tls=tls, tokens=self.options.auth_tokens)
        except RuntimeError as e:
            self._server.stop(0)
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            raise OSError(f"cannot listen on {address}: {e}") from None
        self.port = self.plane.port
        native_plane.cap_buffer_pool(self.options.buffer_pool_bytes)

    def start(self) -> None:
        """Listen (live at once), then load the models (ready when done)."""
        if self.plane is None:
            self._server.start()
        log.info("icow listening on %s (gRPC%s, Open Inference Protocol)", self.address,
                 ", TLS" + (" with client certificates" if self.options.tls_client_ca else "")
                 if self.options.tls_cert else "")
        log.info("data plane: %s", self._describe_plane())
        if self.http is not None:
            self.http.start()
            log.info("icow listening on %s:%d (HTTP/REST%s, Open Inference Protocol)", self.options.host,
                     self.http_port, ", TLS" if self.options.tls_cert else "")
        self.repository.load_all(self._startup_models())
        ready = [f"{e.name}:{e.version}" for e in self.repository.index() if e.state == "READY"]
        log.info("ready: %d model version(s): %s; serving on the %s", len(ready), ", ".join(ready) or "none",
                 self._plane_in_a_word())
        self.service.ready = True
        self.health.set_ready()
        if self.plane is not None:
            self.plane.refresh()
            self.plane.serve_fast(self._fast_path_matches())
            if self._fast_path_matches():  # a stream goes to grpcio whole: its requests come back to C++ here
                self.stream.fast = self.plane.stream_lane(self.options.max_message_bytes)
        elif self._fast_in_handler():
            self.service.fast = native_plane.DirectPath(self.repository, self.options.max_message_bytes)
            self.service.fast.refresh()
        if self.http is not None:
            self.http.app.dispatcher.fast = self._http_lane()
        if self.poller is not None:
            self.poller.start()
        if self.options.memory_trim_secs > 0:
            self.memory = MemoryKeeper(self.options.memory_trim_secs, native_plane.buffer_pool(self.plane is not None))
            self.memory.start()

    def _http_lane(self):
        """Binary HTTP requests answered in C++, in the same line as gRPC's fast path:
        on the native plane's entries, or beside grpcio's fast path; none where that is off."""
        from .http.fast import FastLane

        if self.plane is not None and self.options.fast_path:
            return FastLane(self.plane.http_lane(self.options.max_message_bytes))
        if self.service.fast is not None:
            return FastLane(self.service.fast.serve_http)
        return None

    def _startup_models(self) -> list[str] | None:
        names = self.options.load_models
        if self.options.model_control_mode != "explicit" or "*" in names:
            return None
        return names

    def stop(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls, let running ones finish for ``grace`` seconds."""
        self.service.ready = False
        self.health.shutdown()  # first, so that health watchers hear NOT_SERVING
        if self.poller is not None:
            self.poller.stop()
        if self.memory is not None:
            self.memory.stop()
        if self.metrics is not None:
            self.metrics.stop()
        grace = self.options.grace_seconds if grace is None else grace
        http_done = self.http.stop(grace) if self.http is not None else None
        stopped = self._stop_native(grace) if self.plane is not None else self._server.stop(grace)
        if http_done is not None:
            stopped = _both(stopped, http_done)
        # Regions still held by running calls stay mapped until those calls end.
        threading.Thread(target=lambda: (stopped.wait(), self.stream.close(), self.service.shm.close()),
                         daemon=True).start()
        return stopped

    def _stop_native(self, grace: float) -> threading.Event:
        with self._stop_lock:  # a signal and a caller may both stop the server: one shutdown
            first, self._stopping = not self._stopping, True
        if first:

            def stop() -> None:
                cut = threading.Timer(grace, self._count_cut)  # what is still running when the grace ends
                cut.start()
                self.plane.stop(grace)  # calls passed on finish through the backend meanwhile
                cut.cancel()
                self._server.stop(0).wait()
                shutil.rmtree(self._backend_dir, ignore_errors=True)
                self._stopped.set()

            threading.Thread(target=stop, name="icow-stop", daemon=True).start()
        return self._stopped

    def _count_cut(self) -> None:
        try:
            self._cut = self.plane.counts["in_flight"]
        except RuntimeError:  # stopped meanwhile: nothing was cut
            pass

    def calls_cut(self) -> int:
        """After wait(): how many calls the end of the grace period cut short."""
        return self._cut if self.plane is not None else self.requests.in_flight

    def wait(self) -> None:
        if self.plane is not None:
            while not self._stopped.wait(1.0):  # a timeout, so that signals are handled
                pass
        else:
            self._server.wait_for_termination()
        if self.http is not None:
            while not self.http.stopped.wait(1.0):
                pass

    def _describe_plane(self) -> str:
        if self.plane is not None:
            return f"native (gRPC C++ {native_plane.grpc_version()}; other calls through grpcio)"
        if self.options.data_plane == "native":
            return f"grpcio, not native: {native_plane.UNAVAILABLE_REASON}"
        return "grpcio" + (" (ModelInfer's fast path in C++)" if self._fast_in_handler() else "")

    def _plane_in_a_word(self) -> str:
        if self.plane is not None:
            return "native data plane"
        if self.options.data_plane == "native":
            return "grpcio data plane (icow._plane is not built: bash scripts/install.sh gives it)"
        return "grpcio data plane"

    def _fast_in_handler(self) -> bool:
        """Whether grpcio's ModelInfer handler tries the fast path first (the grpcio plane)."""
        return self.plane is None and native_plane.available() and self._fast_path_matches()

    def _fast_path_matches(self) -> bool:
        """Whether ModelInfer may be answered in C++: not where the full path does per call
        what the fast path does not (the access log of successful calls; the protobuf codec,
        the baseline). Tokens the fast path checks itself."""
        return (self.options.fast_path and self.options.codec == "native"
                and not logs.access_log.isEnabledFor(logging.DEBUG))


def serve(options: ServerOptions) -> None:
    """Run a server until SIGINT or SIGTERM, then shut it down gracefully."""
    server = InferenceServer(options)

    def shutdown(signum, frame) -> None:
        log.info("received %s, stopping (grace %.0fs)", signal.Signals(signum).name, options.grace_seconds)
        server.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    server.start()
    server.wait()
    cut = server.calls_cut()
    if cut:
        log.warning("stopped: %d call(s) were still running when the %.0fs grace period ended "
                    "(--shutdown-grace-secs)", cut, options.grace_seconds)
    else:
        log.info("stopped: every accepted call finished")


def _both(first: threading.Event, second: threading.Event) -> threading.Event:
    """An event set once both are."""
    both = threading.Event()
    threading.Thread(target=lambda: (first.wait(), second.wait(), both.set()), daemon=True).start()
    return both


def _use_native_plane(choice: str) -> bool:
    if choice not in ("native", "grpcio"):
        raise ValueError(f"data plane must be native or grpcio, not {choice!r}")
    if choice == "native" and not native_plane.available():
        log.warning("the native data plane is not available, serving on grpcio: %s "
                    "(a build needs the gRPC C++ libraries: bash scripts/install.sh installs them and icow)",
                    native_plane.UNAVAILABLE_REASON)
    return choice == "native" and native_plane.available()


def _listen(server: grpc.Server, address: str, tls: tuple[bytes, bytes, bytes | None] | None) -> int:
    try:
        if tls is None:
            return server.add_insecure_port(address)
        key, cert, ca = tls
        return server.add_secure_port(address, grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None))
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None


def _tls_files(options: ServerOptions) -> tuple[bytes, bytes, bytes | None] | None:
    """(key, certificate chain, client CA or None) from the PEM files of the options; None without TLS."""
    if options.tls_cert is None and options.tls_key is None:
        if options.tls_client_ca is not None:
            raise OSError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise OSError("TLS needs both --tls-cert and --tls-key")

    def read(path: Path, flag: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise OSError(f"cannot read {flag} {path}: {e.strerror or e}") from None

    cert, key = read(options.tls_cert, "--tls-cert"), read(options.tls_key, "--tls-key")
    for data, flag, mark in ((cert, "--tls-cert", b"-----BEGIN CERTIFICATE-----"),
                             (key, "--tls-key", b"PRIVATE KEY-----")):
        if mark not in data:
            raise OSError(f"{flag} {getattr(options, flag[2:].replace('-', '_'))} is not a PEM "
                          f"{'certificate' if 'cert' in flag else 'private key'}")
    ca = read(options.tls_client_ca, "--tls-client-ca") if options.tls_client_ca else None
    return key, cert, ca
