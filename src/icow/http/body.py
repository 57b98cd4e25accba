"""An inference request's body as Triton's binary tensor extension lays it out: a JSON
header (the whole body, or its first ``Inference-Header-Content-Length`` bytes), then
the binary tensors, one after another, in the order of the inputs that have a
``binary_data_size``. Nothing here copies the tensors: they are memoryview slices."""

from __future__ import annotations

import zlib

import orjson

from .status import HttpError, bad_request

HEADER_LENGTH = b"inference-header-content-length"


def split(body: bytes | bytearray, header_length: bytes | None) -> tuple[dict, memoryview]:
    """The parsed JSON header and the binary part after it."""
    view = memoryview(body)
    size = len(view)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise bad_request(f"Inference-Header-Content-Length must be a byte count, got "
                              f"{header_length[:32].decode(errors='replace')!r}") from None
        if not 0 <= size <= len(view):
            raise bad_request(f"Inference-Header-Content-Length is {size} but the body has {len(view)} bytes")
    try:
        header = orjson.loads(view[:size])
    except orjson.JSONDecodeError as e:
        raise bad_request(f"the inference request is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad_request(f"the inference request must be a JSON object, not {type(header).__name__}")
    return header, view[size:]


def decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """A gzip or deflate body (Content-Encoding, as tritonclient sends it) inflated,
    refused once it would pass ``limit`` bytes (a small bomb must not fill memory)."""
    kind = encoding.strip().lower()
    wbits = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}.get(kind)
    if wbits is None:
        raise HttpError(415, f"Content-Encoding {kind.decode(errors='replace')!r} is not supported; "
                             "send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise bad_request(f"the body is not valid {kind.decode()} data: {e}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise HttpError(413, f"the body inflates to more than the server's limit of {limit} bytes")
    if not inflater.eof:
        raise bad_request(f"the {kind.decode()} body ends early")
    return data
