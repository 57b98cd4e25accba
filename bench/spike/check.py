"""Raw-socket checks that perf_analyzer cannot make: keep-alive (a second
request on the same socket after the first answer) and HTTP/1.1 pipelining
(three requests sent back to back before reading; answers must come in order).

    python -m bench.spike.check PORT
"""

from __future__ import annotations

import socket
import sys
import time

import orjson

_INFER = orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}]})


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class _Reader:
    """Reads Content-Length framed responses off one socket (no chunked: none
    of the echo servers chunks a reply whose length it knows)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body


def check(port: int) -> dict[str, str]:
    results: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = _Reader(sock)
        try:
            sock.sendall(_request("GET", "/v2/health/ready"))
            first = reader.response()
            time.sleep(0.2)  # idle a little, as a pooled client connection would
            sock.sendall(_request("GET", "/v2/models/identity"))
            second = reader.response()
            ok = first[0] == 200 and second[0] == 200 and b'"identity"' in second[1]
            results["keep-alive"] = "ok" if ok else f"FAIL {first[0]} {second[0]}"
        except (OSError, ValueError) as e:
            results["keep-alive"] = f"FAIL {type(e).__name__}: {e}"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = _Reader(sock)
        try:
            # Three different answers, so an out-of-order reply shows.
            sock.sendall(_request("GET", "/v2/models/identity/config")
                         + _request("POST", "/v2/models/identity/infer", _INFER)
                         + _request("GET", "/v2"))
            answers = [reader.response() for _ in range(3)]
            ok = (all(status == 200 for status, _ in answers)
                  and b'"max_batch_size"' in answers[0][1]
                  and b'"OUTPUT0"' in answers[1][1] and b"2.5" in answers[1][1]
                  and b'"extensions"' in answers[2][1])
            results["pipelining"] = "ok" if ok else "FAIL " + repr([s for s, _ in answers])
        except (OSError, ValueError) as e:
            results["pipelining"] = f"FAIL {type(e).__name__}: {e}"
    return results


if __name__ == "__main__":
    out = check(int(sys.argv[1]))
    print(out)
    sys.exit(0 if all(v == "ok" for v in out.values()) else 1)
