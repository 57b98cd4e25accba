"""The Open Inference Protocol (KServe v2) front end: gRPC messages to calls on
the repository and its models, and back. It translates; the core decides."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from google.protobuf import message_factory

from .._proto import inference_pb2 as pb
from .._proto import inference_pb2_grpc as pb_grpc
from .._version import __version__
from ..codecs import native as native_codec
from ..codecs import protobuf as protobuf_codec
from ..protocol.errors import InferenceServerError, invalid, shortened, unimplemented
from ..protocol.names import shorten
from ..repository import deploy
from ..repository.repository import Repository
from ..repository.routing import config_with_routing
from ..shm.cuda import CudaRegion
from ..shm.registry import Leases, Limits, Registry, SystemRegion
from . import logs

if TYPE_CHECKING:
    from .plane import DirectPath

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]  # priority, timeout
SHM_EXTENSIONS = ["system_shared_memory", "cuda_shared_memory"]  # listed when --allow-client-shm is given
CODECS = {"native": native_codec, "protobuf": protobuf_codec}  # how ModelInfer bytes are read and written
_STATUS = {code.value[0]: code for code in grpc.StatusCode}
# grpcio gives a call without a deadline ~3e11 years remaining; longer than this is none.
_NO_DEADLINE_S = 10 * 365 * 24 * 3600


def _rpc(method: Callable) -> Callable:
    """Turn InferenceServerError into its gRPC status, anything else into INTERNAL."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            return method(self, request, context)
        except InferenceServerError as e:
            context.abort(e.code, e.message)
        except Exception as e:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {type(e).__name__}: {e}")

    return wrapper


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Serves one repository. ``ready`` is set once the startup loading is done."""

    def __init__(self, repository: Repository, *, control_mode: str = "none", codec: str = "native",
                 max_message_bytes: int = 2**31 - 1, shm: Limits | None = None, allow_deploy: bool = False) -> None:
        self.repository = repository
        self.shm = Registry(shm or Limits())
        self.codec = CODECS[codec]
        self.control_mode = control_mode  # none | explicit | poll: load/unload requests only with explicit
        self.allow_deploy = allow_deploy  # load requests may bring a config and model files (--allow-deploy)
        self.max_message_bytes = max_message_bytes
        self.ready = False
        self.fast: DirectPath | None = None  # ModelInfer in C++ first, where it can be (grpcio plane)

    # -- health and metadata ---------------------------------------------
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready)

    @_rpc
    def ModelReady(self, request, context):
        try:
            self.repository.get(request.name, request.version)
        except InferenceServerError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:  # a name no model can have: refused, as elsewhere
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        extensions = EXTENSIONS + (SHM_EXTENSIONS if self.shm.limits.enabled else [])
        return pb.ServerMetadataResponse(name="icow", version=__version__, extensions=extensions)

    @_rpc
    def ModelMetadata(self, request, context):
        model = self.repository.get(request.name, request.version)
        loaded = self.repository.get_loaded(request.name)
        mbs = model.max_batch_size
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in loaded.ready()],  # numbers only: Triton's clients parse them
            version_labels={k: str(v) for k, v in loaded.routing.labels.items()},
            platform=model.config.platform,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype.name,
                                                            shape=s.shape(mbs)) for s in model.inputs.values()],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype.name,
                                                             shape=s.shape(mbs)) for s in model.outputs.values()],
        )

    @_rpc
    def ModelConfig(self, request, context):
        model = self.repository.get(request.name, request.version)
        routing = self.repository.get_loaded(request.name).routing
        return pb.ModelConfigResponse(config=config_with_routing(model.config, routing))

    @_rpc
    def ModelStatistics(self, request, context):
        if request.name:
            models = [self.repository.get(request.name, request.version)] if request.version else \
                list(self.repository.get_loaded(request.name).ready().values())
        else:
            models = [m for loaded in self.repository.loaded() for m in loaded.ready().values()]
        return pb.ModelStatisticsResponse(model_stats=[_statistics(m) for m in models])

    # -- inference -------------------------------------------------------
    @_rpc
    def ModelInferBytes(self, data: bytes, context) -> bytes:
        """ModelInfer on the serialized request; returns the serialized response."""
        return self.infer_bytes(data, deadline_ns(context), context.is_active)

    def infer_bytes(self, data: bytes, deadline: int | None, alive: Callable[[], bool],
                    fast: Callable | None = None) -> bytes:
        """One serialized ModelInferRequest answered: the serialized response, or
        InferenceServerError. ModelInfer and each request of ModelStreamInfer come here.
        ``fast``: the fast path to try first (a Direct's ``serve``), else the service's own."""
        if fast is None and self.fast is not None:
            fast = self.fast.serve
        if fast is not None:
            answer = fast(data, deadline or 0, alive)
            if isinstance(answer, bytes):
                return answer
            if answer is not None:  # it left the queue without running
                code, message, model, version = answer
                logs.annotate(model=model, version=version)
                raise InferenceServerError(_STATUS[code], message)
        with Leases(self.shm) as held:  # regions the request names stay mapped until its response is built
            request = self.codec.decode_request(data, held)
            request.deadline_ns, request.alive = deadline, alive
            logs.annotate(request_id=request.id, model=request.model_name, version=request.model_version)
            model = self.repository.get(request.model_name, request.model_version, request.id)
            logs.annotate(version=str(model.version))
            response = self.codec.infer(model, request)
            held.check()  # an object shrunk during the run: its data, and so the answer, are lost
        if len(response) > self.max_message_bytes:  # grpcio's own refusal would not say how to fix it
            raise InferenceServerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the response of model '{model.name}' is {len(response)} bytes, over the server's limit of "
                f"{self.max_message_bytes} bytes: raise it with --max-message-mb, or request fewer outputs "
                "or a smaller batch")
        return response

    # -- repository ------------------------------------------------------
    @_rpc
    def RepositoryIndex(self, request, context):
        entries = self.repository.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
            name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries])

    @_rpc
    def RepositoryModelLoad(self, request, context):
        self._check_control("load")
        if request.parameters:
            loaded = self.repository.deploy(self._deployment(request))
        else:
            loaded = self.repository.load(request.model_name)
        failures = [f"version {v}: {s.reason}" for v, s in sorted(loaded.versions.items()) if s.model is None]
        if loaded.error or failures:
            raise InferenceServerError(grpc.StatusCode.INTERNAL, f"failed to load model '{loaded.name}': "
                                       + (loaded.error or "; ".join(failures)))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    def RepositoryModelUnload(self, request, context):
        self._check_control("unload")
        self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _deployment(self, request: pb.RepositoryModelLoadRequest) -> deploy.Deployment:
        """The model config and files a load request carries (Triton's ``config`` and
        ``file:<version>/<file>`` parameters), refused unless --allow-deploy."""
        if not self.allow_deploy:
            raise InferenceServerError(grpc.StatusCode.FAILED_PRECONDITION, (
                f"cannot deploy model '{shorten(request.model_name)}' over the wire (load parameters "
                f"{', '.join(sorted(shortened(k, 32) for k in request.parameters)[:4])}): the server runs without "
                "--allow-deploy; start it with --allow-deploy, or load models from the repository without parameters"))
        config, files = None, {}
        for key, parameter in request.parameters.items():
            kind = parameter.WhichOneof("parameter_choice")
            if key == "config" and kind == "string_param":
                config = parameter.string_param
            elif key.startswith(deploy.FILE_PREFIX) and kind == "bytes_param":
                files[key] = parameter.bytes_param
            else:
                raise invalid(f"load parameter '{shorten(key)}' ({kind}) is not one icow takes: 'config' (a "
                              "string: the model config in JSON) and 'file:<version>/<file name>' (bytes)")
        return deploy.parse(request.model_name, config, files)

    def _check_control(self, action: str) -> None:
        # As Triton: poll mode follows the repository's folders, and refuses load/unload requests.
        if self.control_mode != "explicit":
            how = "change the repository's folders instead (the server polls them), or start it with " \
                  "--model-control-mode explicit" if self.control_mode == "poll" \
                  else "start it with --model-control-mode explicit"
            raise InferenceServerError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot {action} models: the server runs with --model-control-mode {self.control_mode}; {how}")

    # -- shared memory ---------------------------------------------------
    @_rpc
    def SystemSharedMemoryRegister(self, request, context):
        self.shm.check_enabled("SystemSharedMemoryRegister")
        self.shm.register(request.name, lambda: SystemRegion(request.name, request.key, request.offset,
                                                             request.byte_size))
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    def SystemSharedMemoryUnregister(self, request, context):
        self.shm.check_enabled("SystemSharedMemoryUnregister")
        self.shm.unregister(request.name, "system")
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    def SystemSharedMemoryStatus(self, request, context):
        self.shm.check_enabled("SystemSharedMemoryStatus")
        status = pb.SystemSharedMemoryStatusResponse
        return status(regions={r.name: status.RegionStatus(name=r.name, key=r.key, offset=r.offset,
                                                           byte_size=r.byte_size)
                               for r in self.shm.status(request.name, "system")})

    @_rpc
    def CudaSharedMemoryRegister(self, request, context):
        self.shm.check_enabled("CudaSharedMemoryRegister")
        self.shm.register(request.name, lambda: CudaRegion(request.name, request.raw_handle, request.device_id,
                                                           request.byte_size))
        return pb.CudaSharedMemoryRegisterResponse()

    @_rpc
    def CudaSharedMemoryUnregister(self, request, context):
        # With shared memory off there is nothing to unregister: OK, since clients
        # (perf_analyzer) unregister everything of both kinds before they start.
        self.shm.unregister(request.name, "cuda")
        return pb.CudaSharedMemoryUnregisterResponse()

    @_rpc
    def CudaSharedMemoryStatus(self, request, context):
        status = pb.CudaSharedMemoryStatusResponse
        regions = self.shm.status(request.name, "cuda") if self.shm.limits.enabled or request.name else []
        return status(regions={r.name: status.RegionStatus(name=r.name, device_id=r.device_id,
                                                           byte_size=r.byte_size) for r in regions})

    # -- not served ------------------------------------------------------
    @_rpc
    def TraceSetting(self, request, context):
        raise unimplemented("tracing is not supported by this server")

    @_rpc
    def LogSettings(self, request, context):
        raise unimplemented("log settings are not supported by this server; use --log-level")


def method_handlers(service: InferenceService) -> dict[str, grpc.RpcMethodHandler]:
    """gRPC handlers for every method of the service; ModelInfer takes and
    returns raw bytes (no protobuf objects between gRPC and the codec). ModelStreamInfer
    is the base class's UNIMPLEMENTED here: the server puts services/stream.py's in."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = (grpc.stream_stream_rpc_method_handler if method.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(getattr(service, method.name), request_deserializer=request.FromString,
                                     response_serializer=response.SerializeToString)
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(service.ModelInferBytes)
    return handlers


def deadline_ns(context: grpc.ServicerContext) -> int | None:
    """The call's deadline on time.monotonic_ns()'s clock, None when it has none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic_ns() + int(remaining * 1e9)


def _statistics(model) -> pb.ModelStatistics:
    s = model.stats.snapshot()

    def d(x):
        return pb.StatisticDuration(count=x.count, ns=x.ns)

    return pb.ModelStatistics(
        name=model.name, version=str(model.version), last_inference=s.last_inference_ms,
        inference_count=s.inference_count, execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(success=d(s.success), fail=d(s.fail), queue=d(s.queue),
                                           compute_input=d(s.compute_input), compute_infer=d(s.compute_infer),
                                           compute_output=d(s.compute_output), cache_hit=d(s.cache_hit),
                                           cache_miss=d(s.cache_miss)),
        batch_stats=[pb.InferBatchStatistics(batch_size=size, compute_input=d(b.compute_input),
                                             compute_infer=d(b.compute_infer), compute_output=d(b.compute_output))
                     for size, b in sorted(s.batches.items())],
    )
