"""icow's compiled wire codec (ext/wire.cpp)."""

from collections.abc import Iterable

from typing_extensions import Buffer

def unpack_bytes(data: Buffer, count: int) -> list[bytes]:
    """Split BYTES tensor contents (4-byte little-endian length, then the bytes,
    per element) into ``count`` elements.

    Raises
    ------
    ValueError
        The contents end early, or bytes remain after the last element.
    """

def pack_bytes(items: Iterable[bytes | str]) -> bytes:
    """Join elements into BYTES tensor contents; ``str`` items are UTF-8 encoded.

    Raises
    ------
    TypeError
        An element is neither ``bytes`` nor ``str``.
    """
