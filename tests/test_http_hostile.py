"""Hostile HTTP clients, over raw sockets, against a real server: malformed
requests, lying lengths, bombs, floods, slow and stalled clients. Each gets a 4xx
with a JSON ``{"error": ...}`` body or a closed connection; after each, a normal
request on a new connection still gets the right answer and the server lives,
with no traceback in its log.

The server cuts a client that is slow to send its head, or stalls in its body,
after --http-read-timeout-secs, 2 s here; the tests wait on what the server does
(an answer, a closed connection), bounded by a generous socket timeout."""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
import zlib

import numpy as np
import orjson
import pytest

from conftest import ROOT, start_server
from helpers import reference

READ_TIMEOUT_S = 2
LIMIT_MB = 2  # --max-message-mb
MAX_CONCURRENT = 2
WAIT_S = 30  # a socket left unanswered this long fails the test: the server neither answered nor cut it
INFER = "/v2/models/scale/versions/1/infer"
X = [1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(None, "--no-metrics", "--max-message-mb", str(LIMIT_MB), "--http-read-timeout-secs",
                       str(READ_TIMEOUT_S), "--max-concurrent-requests", str(MAX_CONCURRENT),
                       log_dir=tmp_path_factory.mktemp("hostile-logs"))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def still_serving(server):
    """After each case: a normal request on a new connection gets the right answer."""
    yield
    assert server.proc.poll() is None, server.log()
    status, body = infer(server, json_request(X))
    want = reference(ROOT / "examples" / "models" / "scale" / "1" / "model.onnx", {"x": np.array(X, np.float32)})
    assert status == 200, body
    assert body["outputs"][0]["data"] == want["y"].tolist()
    assert "Traceback" not in server.log(), server.log()


# -- raw HTTP -----------------------------------------------------------------------

def connect(server, timeout: float = WAIT_S) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout)
    return sock


def send(sock: socket.socket, data: bytes) -> bool:
    """False when the server closed the connection before taking it all."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def read_answer(sock: socket.socket) -> tuple[int | None, dict, bytes]:
    """(status, headers, body) of one answer; status None: closed without one."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None, {}, data
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        size = int(headers.get(b"content-length", b"0"))
        while len(body) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except ConnectionResetError:
        return (None, {}, b"") if b"\r\n\r\n" not in data else (int(data.split()[1]), {}, b"")
    return int(lines[0].split()[1]), headers, body


def exchange(server, data: bytes, *, shut: bool = False) -> tuple[int | None, dict, bytes]:
    with connect(server) as sock:
        send(sock, data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def closed(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (an answer before that is read and dropped)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(path: str | bytes, *headers: str) -> bytes:
    path = path if isinstance(path, bytes) else path.encode()
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers).encode() + b"\r\n"


def json_request(data, shape=(4,), datatype="FP32") -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": list(shape), "data": data}]})


def infer(server, body: bytes, *headers: str) -> tuple[int | None, dict]:
    status, _, answer = exchange(server, post(INFER, body, *headers))
    return status, orjson.loads(answer) if answer else {}


def refused(status: int | None, body: bytes, *allowed: int) -> None:
    """A 4xx among ``allowed`` with a JSON error, or (None in ``allowed``) a closed connection."""
    if status is None:
        assert None in allowed, "the server closed the connection without an answer"
        return
    assert status in allowed, (status, body)
    error = orjson.loads(body)["error"]
    assert isinstance(error, str) and error


def binary_request(header: dict, tensors: bytes, header_length: int | str | None = None) -> bytes:
    head = orjson.dumps(header)
    length = len(head) if header_length is None else header_length
    return post(INFER, head + tensors, f"Inference-Header-Content-Length: {length}",
                "Content-Type: application/octet-stream")


def binary_header(size: int) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": size}}]}


TENSOR = struct.pack("<4f", *X)


# -- malformed bodies -----------------------------------------------------------------

BODIES = {
    "malformed JSON": post(INFER, b'{"inputs": [{"name": "x",'),
    "not an object": post(INFER, b"[1, 2, 3]"),
    "nested data of the wrong shape": post(INFER, json_request([[1, 2], [3, 4]])),
    "ragged data": post(INFER, json_request([[1, 2, 3], [4]], shape=(2, 2))),
    "data of the wrong type": post(INFER, json_request(["a", "b", "c", "d"])),
    "JSON nested 100 000 deep": post(INFER, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": '
                                     + b"[" * 100_000 + b"]" * 100_000 + b"}]}"),
    "a number of 10 000 digits in shape": post(INFER, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": ['
                                               + b"9" * 10_000 + b'], "data": [1]}]}'),
    "10 000 inputs": post(INFER, orjson.dumps({"inputs": [
        {"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1]} for i in range(10_000)]})),
    "header length beyond the body": binary_request(binary_header(16), TENSOR, 10_000),
    "header length negative": binary_request(binary_header(16), TENSOR, -1),
    "header length garbage": binary_request(binary_header(16), TENSOR, "12abc"),
    "header length of 30 digits": binary_request(binary_header(16), TENSOR, "9" * 30),
    "binary_data_size beyond the body": binary_request(binary_header(1 << 20), TENSOR),
    "binary_data_size short of the body": binary_request(binary_header(8), TENSOR),
    "binary_data_size negative": binary_request(binary_header(-16), TENSOR),
    "binary_data_size wrong for the shape": binary_request(binary_header(12), TENSOR[:12]),
    "gzip that is not gzip": post(INFER, b"\x1f\x8bnot really", "Content-Encoding: gzip"),
    "gzip cut short": post(INFER, gzip.compress(json_request(X))[:-12], "Content-Encoding: gzip"),
    "metadata request with a JSON body of garbage": post("/v2/repository/index", b"{{{"),
    "shm register with no body": post("/v2/systemsharedmemory/region/r/register", b""),
}


@pytest.mark.parametrize("data", list(BODIES.values()), ids=list(BODIES))
def test_malformed_bodies_are_400(server, data):
    status, _, body = exchange(server, data)
    refused(status, body, 400)


def test_gzip_bomb_is_413(server):
    """1 GiB of zeros, gzipped to about 1 MiB (under the limit): refused once it inflates past the limit."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()
    assert len(bomb) < LIMIT_MB << 20
    status, _, body = exchange(server, post(INFER, bomb, "Content-Encoding: gzip"))
    refused(status, body, 413)


# -- the HTTP layer -----------------------------------------------------------------

HEADS = {  # (request, answers allowed; None: closed without an answer)
    "unknown method": (b"BREW /v2 HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    "a method the route does not take": (b"DELETE " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", (405,)),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), (400, None)),
    "negative Content-Length": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nContent-Length: -5\r\n\r\n", (400,)),
    "garbage Content-Length": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", (400,)),
    "two Content-Lengths": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nContent-Length: 3\r\n"
                            b"Content-Length: 4\r\n\r\nabcd", (400,)),
    "Content-Length over the limit": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nContent-Length: "
                                      + str(LIMIT_MB << 21).encode() + b"\r\n\r\n", (413,)),
    "Content-Length of 40 digits": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nContent-Length: "
                                    + b"9" * 40 + b"\r\n\r\n", (400, 413)),
    "chunk size not hex": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\nabc\r\n", (400,)),
    "chunk size negative": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"-1\r\nabc\r\n", (400,)),
    "chunk size of 2**80": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + b"f" * 20 + b"\r\nabc\r\n", (400, 413)),
    "chunk longer than its size": (b"POST " + INFER.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"2\r\nabcdef\r\n0\r\n\r\n", (400,)),
    "a header line of 1 MiB": (get("/v2", "X-Big: " + "a" * (1 << 20)), (431, None)),
    "10 000 headers": (get("/v2", *(f"X-{i}: v" for i in range(10_000))), (431, None)),
    "a request line of 100 KiB": (get("/v2?q=" + "a" * (100 << 10)), (414, None)),
    "a path of 100 KiB": (get("/v2/models/" + "a" * (100 << 10)), (414, None)),
    "a name of 60 KiB": (get("/v2/models/" + "a" * (60 << 10)), (400, 404)),
    "%00 in the model name": (get("/v2/models/sc%00ale"), (400, 404)),
    "..%2F in the model name": (get("/v2/models/..%2F..%2Fetc%2Fpasswd/ready"), (400, 404)),
    "percent-encoded invalid UTF-8": (get("/v2/models/%ff%fe%c0%af"), (400, 404)),
    "raw bytes over 0x7f in the path": (get(b"/v2/models/\xff\xfe/ready"), (400,)),
    "a bad percent escape": (get("/v2/models/%zz%"), (400, 404)),
    "a control character in a header": (b"GET /v2 HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", (400,)),
    "a header with no colon": (b"GET /v2 HTTP/1.1\r\nno colon here\r\n\r\n", (400,)),
    "HTTP/9.9": (b"GET /v2 HTTP/9.9\r\n\r\n", (400, 505)),
    "unknown Content-Encoding": (post(INFER, json_request(X), "Content-Encoding: br"), (415,)),
}


@pytest.mark.parametrize("data,allowed", list(HEADS.values()), ids=list(HEADS))
def test_malformed_requests_are_refused(server, data, allowed):
    status, _, body = exchange(server, data)
    refused(status, body, *allowed)


def test_a_body_shorter_than_its_content_length(server):
    """The client sends half and closes its side: no answer to a request never whole, the connection closes."""
    data = post(INFER, json_request(X))
    status, _, body = exchange(server, data[:-10], shut=True)
    refused(status, body, 400, None)


def test_a_chunked_body_without_end_is_413(server):
    """Chunks sent as fast as they go: refused at the limit, the connection closed (the rest is not read)."""
    with connect(server) as sock:
        send(sock, b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + bytes(1 << 16) + b"\r\n"
        sent = 0
        while send(sock, chunk):
            sent += len(chunk)
            assert sent < 64 * (LIMIT_MB << 20), "the server took 64 times its limit"
        status, _, body = read_answer(sock)
        refused(status, body, 413, None)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stalls_is_408(server, framing):
    """Part of a body, then nothing: the server answers 408 and closes after the read timeout."""
    with connect(server) as sock:
        if framing == "chunked":
            send(sock, b"POST " + INFER.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"in\r\n")
        else:
            send(sock, post(INFER, json_request(X))[:-10])
        start = time.monotonic()
        status, headers, body = read_answer(sock)
        refused(status, body, 408)
        assert headers[b"connection"] == b"close"
        assert closed(sock)
        assert time.monotonic() - start < WAIT_S


def test_stalled_bodies_take_no_place_under_max_concurrent_requests(server):
    """More clients than --max-concurrent-requests stall in their bodies; another's request is answered, not 429."""
    socks = [connect(server) for _ in range(MAX_CONCURRENT + 2)]
    try:
        for sock in socks:
            send(sock, post(INFER, json_request(X))[:-5])
        status, body = infer(server, json_request(X))
        assert status == 200, body
    finally:
        for sock in socks:
            sock.close()


def test_an_idle_connection_is_closed(server):
    with connect(server) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # closed without an answer: it asked nothing
        assert time.monotonic() - start < WAIT_S


def test_slowloris_holds_nothing(server):
    """Clients dribble their heads, a byte every 0.2 s, on more connections than the
    server has HTTP workers; meanwhile other clients' requests are answered, and each
    slow client is cut (408, or closed) once the read timeout has passed."""
    head = get("/v2/health/ready", *(f"X-Pad-{i}: {'a' * 20}" for i in range(40)))
    slow, answers, cut = 24, [], []

    def dribble() -> None:
        with connect(server) as sock:
            for i in range(len(head)):
                if not send(sock, head[i:i + 1]):
                    break
                sock.settimeout(0.2)  # the interval between bytes; the server may answer in it
                try:
                    if sock.recv(65536, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    continue
            sock.settimeout(WAIT_S)
            status, _, body = read_answer(sock)
            cut.append((i, status))

    threads = [threading.Thread(target=dribble) for _ in range(slow)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) and len(answers) < 2000:  # normal clients, while the slow ones dribble
        answers.append(infer(server, json_request(X))[0])
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "a slow client was never cut"
    assert len(cut) == slow and all(status in (408, None) for _, status in cut), cut
    assert all(i < len(head) - 1 for i, _ in cut), "a slow client got its whole head in"
    assert answers and set(answers) == {200}, answers


def test_a_keep_alive_connection_survives_many_requests(server):
    """The timers are per request: a connection that keeps asking, quickly, is never cut."""
    with connect(server) as sock:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < READ_TIMEOUT_S * 1.5:
            assert send(sock, get("/v2/health/live"))
            status, _, body = read_answer(sock)
            assert status == 200, body
            n += 1
        assert n > 1
