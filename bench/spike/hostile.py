"""What each stack does with hostile clients, with every server's timeout at
3 s (SPIKE_TIMEOUT / argv): probes run in parallel, each on its own socket.

    python -m bench.spike.hostile

slowloris  one header byte a second: closed (and when), or still open at 12 s
idle       connects, sends nothing
headers    10 000 small headers; one 1 MiB header
body       Content-Length 1 GiB with no body sent: answered or left waiting
chunked    a chunked POST whose last chunk never comes (one chunk a second)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .run import ROOT, STACKS, wait_ready

TIMEOUT = 3
HOLD = 12.0  # seconds a probe waits before calling the connection "still open"


def _outcome(sock: socket.socket, start: float) -> str:
    """Drain what the server says until it closes or HOLD passes."""
    sock.settimeout(0.5)
    data = b""
    while time.monotonic() - start < HOLD:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return f"reset at {time.monotonic() - start:.0f} s" + _status(data)
        if not chunk:
            return f"closed at {time.monotonic() - start:.0f} s" + _status(data)
        data += chunk
    return f"open at {HOLD:.0f} s" + _status(data)


def _status(data: bytes) -> str:
    return f" after {data.split(b' ', 2)[1].decode()}" if data.startswith(b"HTTP/") else ""


def _trickle(port: int, first: bytes, piece: bytes) -> str:
    """Send ``first``, then ``piece`` every second, until the server gives up."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(first)
        sock.settimeout(1.0)
        while time.monotonic() - start < HOLD:
            try:
                data = sock.recv(65536)
                if not data:
                    return f"closed at {time.monotonic() - start:.0f} s"
                return f"answered {_status(data).strip()} at {time.monotonic() - start:.0f} s"
            except TimeoutError:
                pass
            except ConnectionResetError:
                return f"reset at {time.monotonic() - start:.0f} s"
            try:
                sock.sendall(piece)
            except OSError:
                return f"closed at {time.monotonic() - start:.0f} s (send failed)"
        return f"open at {HOLD:.0f} s"


def _send(port: int, payload: bytes) -> str:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        try:
            sock.sendall(payload)
        except OSError as e:
            return f"send failed: {type(e).__name__}"
        return _outcome(sock, start)


def probes(port: int) -> dict[str, str]:
    head = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n"
    cases = {
        "slowloris": lambda: _trickle(port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-a: ", b"a"),
        "idle": lambda: _send(port, b""),
        "10k headers": lambda: _send(port, b"GET /v2 HTTP/1.1\r\nHost: x\r\n"
                                     + b"".join(b"X-%d: y\r\n" % i for i in range(10_000)) + b"\r\n"),
        "1 MiB header": lambda: _send(port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-big: " + b"a" * (1 << 20) + b"\r\n\r\n"),
        "1 GiB Content-Length": lambda: _send(port, head + b"Content-Length: 1073741824\r\n\r\n"),
        "chunked, no end": lambda: _trickle(port, head + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\na\r\n"),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(fn) for name, fn in cases.items()}
        return {name: f.result() for name, f in futures.items()}


def main() -> int:
    lines = ["| stack | " + " | ".join(["slowloris", "idle", "10k headers", "1 MiB header",
                                          "1 GiB Content-Length", "chunked, no end"]) + " |",
             "|" + "---|" * 7]
    for i, stack in enumerate(STACKS):
        port = 18200 + i
        argv = [str(port) if a == "PORT" else a for a in stack.argv]
        if argv[0] != sys.executable:
            argv.append(str(TIMEOUT))  # the C++ servers take it as argv[2], serve.py from the environment
        env = {**os.environ, "SPIKE_TIMEOUT": str(TIMEOUT)}
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, proc)
            result = probes(port)
        finally:
            proc.terminate()
            proc.wait(10)
        print(stack.name, result, flush=True)
        lines.append(f"| {stack.name} | " + " | ".join(result.values()) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
