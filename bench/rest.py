"""The bench's own REST client: one keep-alive connection per client thread, one
pre-built request sent again and again, the whole answer read (so the connection is
reused) and not parsed."""

from __future__ import annotations

import http.client
import threading

from .harness import BenchError


class Poster:
    def __init__(self, name: str, address: tuple[str, int], path: str, body: bytes, headers: dict[str, str]) -> None:
        self.name, self.address, self.path, self.body, self.headers = name, address, path, body, headers
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []

    def post(self) -> tuple[bytes, str | None]:
        """The answer's body and its Inference-Header-Content-Length (None when absent)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(*self.address, timeout=60)
            self._connections.append(connection)
        connection.request("POST", self.path, self.body, self.headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise BenchError(f"{self.name}: HTTP {response.status}: {data[:200]!r}")
        return data, response.getheader("Inference-Header-Content-Length")

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
