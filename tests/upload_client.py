"""A client killed mid-upload, for tests/test_soak.py. Light on imports (grpc only), as
the test starts fifty of them.

    python upload_client.py URL REQUEST_FILE HOLD

sends the serialized ModelInfer request in REQUEST_FILE to URL, through a relay in this
process that passes the first HOLD bytes of the connection on to the server and then
no more. It prints "uploading N" once N >= HOLD bytes have gone to the server, and
waits to be killed: the server then holds a request received in part, for certain.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import grpc

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def pump(source: socket.socket, sink: socket.socket, hold: int | None) -> None:
    """Bytes from source to sink; with ``hold``, only that many, then say so and stop."""
    sent = 0
    while hold is None or sent < hold:
        data = source.recv(1 << 16 if hold is None else min(1 << 16, hold - sent))
        if not data:
            return
        sink.sendall(data)
        sent += len(data)
    print("uploading", sent, flush=True)
    threading.Event().wait()  # until killed


def relay(listener: socket.socket, server: tuple[str, int], hold: int) -> None:
    client, _ = listener.accept()
    upstream = socket.create_connection(server)
    threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()
    pump(client, upstream, hold)


def main(url: str, request_file: str, hold: int) -> None:
    host, port = url.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=relay, args=(listener, (host, int(port)), hold), daemon=True).start()
    request = Path(request_file).read_bytes()
    with grpc.insecure_channel(f"127.0.0.1:{listener.getsockname()[1]}",
                               options=[("grpc.max_send_message_length", -1)]) as channel:
        channel.unary_unary(MODEL_INFER)(request)
    raise SystemExit("the call ended: the relay should have held it")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
