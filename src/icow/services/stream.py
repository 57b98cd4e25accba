"""ModelStreamInfer: ModelInferRequests on one bidirectional stream, answered as they finish.

Each request is answered by one ModelStreamInferResponse: its ModelInferResponse, or its
``error_message`` (with ``infer_response.id`` set to the request's id, so that the client
knows which one failed); an error never closes the stream. Requests run concurrently, so
answers may come out of order: clients match them by id, as with Triton.

Every request takes ModelInfer's own path (`InferenceService.infer_bytes`: codec, fast path,
checks, scheduler, deadlines, statistics), on a pool of ``--workers`` threads that all streams
share, apart from grpcio's (a stream holds one of grpcio's threads for its life; its requests
on that same pool could wait behind the streams that wait for them). A stream has at most
``max_in_flight`` requests taken and not yet answered: its reader takes the next request only
when a slot frees, so one client cannot queue unbounded work. When the call ends (cancelled,
past its deadline), reading stops and requests not yet started are dropped unrun; those
waiting in a model's queue leave it, as a cancelled ModelInfer does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from .._proto import inference_pb2 as pb
from .._wire import model_name
from ..protocol.errors import InferenceServerError, invalid
from . import logs
from .oip import InferenceService, deadline_ns

log = logging.getLogger(__name__)

METHOD = "ModelStreamInfer"
#: Raises InferenceServerError for a model the stream's caller may not use (services/auth.py).
Check = Callable[[str], None]


class StreamInfer:
    """The ModelStreamInfer handler of one InferenceService (grpcio's raw-bytes stream handler)."""

    def __init__(self, service: InferenceService, requests: logs.RequestLog | None, *, workers: int,
                 max_in_flight: int) -> None:
        self.service = service
        self.requests = requests  # the access log, and the count of requests in flight
        self.max_in_flight = max(1, max_in_flight)
        self.fast: Callable | None = None  # the native plane's fast path for these requests (server.py sets it)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="icow-stream")

    def handler(self) -> grpc.RpcMethodHandler:
        """Bytes in (each a ModelInferRequest), bytes out (each a ModelStreamInferResponse)."""
        return grpc.stream_stream_rpc_method_handler(self)

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext,
                 check: Check | None = None) -> Iterator[bytes]:
        return _Stream(self, context, check).responses(requests)

    def submit(self, work: Callable[[], None]) -> None:
        self._pool.submit(work)

    def close(self) -> None:
        """Drop the requests not yet started; those running finish."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Done:
    """The reader's last word: how many requests it took."""

    def __init__(self, count: int) -> None:
        self.count = count


_GONE = object()  # the call ended before every answer went out


class _Stream:
    """One call: a reader thread takes requests into the pool; grpcio's thread sends the answers."""

    def __init__(self, owner: StreamInfer, context: grpc.ServicerContext, check: Check | None) -> None:
        self._owner = owner
        self._context = context
        self._check = check
        self._deadline = deadline_ns(context)
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Condition()
        self._taken = 0  # requests taken and not yet handed to grpcio: running, queued, or answered
        self._gone = False
        if not context.add_callback(self._end):  # the call has ended already
            self._end()

    def _end(self) -> None:
        with self._slots:
            self._gone = True
            self._slots.notify_all()
        self._answers.put(_GONE)

    def _alive(self) -> bool:
        return not self._gone

    def responses(self, requests: Iterator[bytes]) -> Iterator[bytes]:
        """The answers, as they finish, until every request taken is answered (or the call ends)."""
        threading.Thread(target=self._read, args=(requests,), name="icow-stream-read", daemon=True).start()
        answered, total = 0, None
        while total is None or answered < total:
            item = self._answers.get()
            if item is _GONE:
                return
            if isinstance(item, _Done):
                total = item.count
                continue
            answered += 1
            with self._slots:  # the answer leaves the stream's count once grpcio has it
                self._taken -= 1
                self._slots.notify()
            yield item

    def _read(self, requests: Iterator[bytes]) -> None:
        count = 0
        try:
            for data in requests:
                if not self._take_slot():
                    break
                count += 1
                self._owner.submit(lambda data=data: self._answer(data))
        except grpc.RpcError:
            pass  # the call was cancelled or passed its deadline: _end has seen it
        except RuntimeError:  # the pool was shut down: the server stops
            self._end()
        finally:
            self._answers.put(_Done(count))

    def _take_slot(self) -> bool:
        with self._slots:
            while self._taken >= self._owner.max_in_flight and not self._gone:
                self._slots.wait()
            if self._gone:
                return False
            self._taken += 1
            return True

    def _answer(self, data: bytes) -> None:
        answer: bytes | object = _GONE
        try:
            answer = self._serve(data)
        except BaseException:  # even then an answer goes out: the stream waits for one per request
            log.exception("a %s request failed", METHOD)
            answer = _error_response(b"", f"{METHOD} failed: see the server's log")
            raise
        finally:
            self._answers.put(answer)

    def _serve(self, data: bytes) -> bytes | object:
        """One request's ModelStreamInferResponse, as ModelInfer would answer it."""
        if self._gone:
            return _GONE  # dropped unrun: nobody waits for its answer
        requests = self._owner.requests
        logs.begin()
        start = time.perf_counter_ns()
        code, details = grpc.StatusCode.OK, ""
        if requests is not None:
            requests.enter()
        try:
            if self._check is not None:
                self._check(_model_of(data))
            response = self._owner.service.infer_bytes(data, self._deadline, self._alive, self._owner.fast)
            answer = _infer_response(response)
        except InferenceServerError as e:
            code, details = e.code, e.message
            answer = _error_response(data, e.message)
        except Exception as e:  # a bug: the request fails, the stream goes on
            log.exception("a %s request failed", METHOD)
            code, details = grpc.StatusCode.INTERNAL, f"{METHOD} failed: {type(e).__name__}: {e}"
            answer = _error_response(data, details)
        finally:
            if requests is not None:
                requests.leave()
        if requests is not None:
            requests.log_request(METHOD, code, details, start, self._context)
        return answer


def _model_of(data: bytes) -> str:
    try:
        return model_name(data)
    except ValueError as e:
        raise invalid(f"malformed ModelInferRequest: {e}") from None


def _infer_response(response: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: response}, written around the response's bytes
    (field 2, length-delimited): no parse, one copy."""
    return b"".join((b"\x12", _varint(len(response)), response))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _error_response(data: bytes, message: str) -> bytes:
    """ModelStreamInferResponse{error_message} naming the request's id, model and version
    (as Triton does, so that a client can tell which request failed)."""
    request_id, model, version = logs.annotated()
    if not request_id:  # it failed before the codec read it: read what can be read
        try:
            request = pb.ModelInferRequest.FromString(data)
            request_id, model, version = request.id, request.model_name, request.model_version
        except Exception:  # unparsable: the answer names no request
            pass
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        id=request_id, model_name=model, model_version=version)).SerializeToString()
