"""icow's compiled wire codec (ext/wire/wire.cpp)."""

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

def model_name(data: Buffer) -> str:
    """``model_name`` of a serialized ModelInferRequest, the other fields skipped
    unparsed. Raises ValueError when the message is malformed."""

def guard_mapping(start: int, length: int) -> int:
    """Absorb SIGBUS in [start, start + length): a mapping of an object that another
    process may shrink. A fault there maps a private zero page over the faulting
    page and marks the range instead of killing the process. Returns the slot for
    ``mapping_faulted`` and ``unguard_mapping``, or -1 when every slot is taken."""

def unguard_mapping(slot: int) -> None:
    """Stop guarding a slot from ``guard_mapping``."""

def mapping_faulted(slot: int) -> bool:
    """Whether a SIGBUS was absorbed in the slot's range since it was guarded (its
    pages there are private zeros now: the data shared with the other process are lost)."""

def address_of(data: Buffer) -> int:
    """The address of a contiguous buffer's first byte (for ONNX Runtime's IOBinding)."""

def parse_request(
    data: Buffer,
) -> tuple[
    str,  # model_name
    str,  # model_version
    str,  # id
    dict[str, bool | int | str | float],  # parameters
    list[tuple[str, str, tuple[int, ...], dict[str, bool | int | str | float], memoryview | bytes | None]],
    list[tuple[str, dict[str, bool | int | str | float]]],
]:
    """Parse and check a serialized ModelInferRequest, releasing the GIL for the byte work.

    Inputs come as (name, datatype, shape, parameters, contents): ``contents``
    is a memoryview into ``data`` for raw_input_contents (no copy), or bytes
    gathered from the typed contents, in the raw layout, or None for an input
    whose parameters name a ``shared_memory_region`` (its bytes are there, and
    raw_input_contents holds only the other inputs', in order). Sizes are checked:
    contents hold exactly shape x element size bytes (BYTES: exactly as many
    length-prefixed elements as the shape has). Requested outputs come as
    (name, parameters).

    Raises
    ------
    ValueError
        The message is not valid protobuf ("malformed ModelInferRequest: ..."),
        or a tensor does not agree with itself; the message says which and how.
    """

class ResponseBuffer:
    """A ModelInferResponse written into one bytes object of its exact size.

    The header (names, datatypes, shapes) is written at construction; each
    output's data goes into its slot, by ``write`` (one copy) or by whoever
    writes at ``address(i)`` (ONNX Runtime, through IOBinding) followed by
    ``mark_written(i)``. ``finish`` hands out the bytes once every slot is written.
    """

    size: int

    def __init__(
        self,
        model_name: str,
        model_version: str,
        id: str,
        outputs: list[tuple[str, str, tuple[int, ...] | list[int], int]],
    ) -> None:
        """``outputs``: (name, datatype, shape, byte size) of each output, in order."""

    def address(self, index: int) -> int:
        """The address of output ``index``'s slot."""

    def write(self, index: int, data: Buffer) -> None:
        """Copy ``data`` (C-contiguous, exactly the slot's size) into slot ``index``."""

    def mark_written(self, index: int) -> None:
        """Declare slot ``index`` filled through its address."""

    def finish(self) -> bytes:
        """The response message. Raises ValueError if a slot was never written,
        or if it was already finished."""
