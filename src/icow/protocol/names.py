"""Names a request carries (a model's name, a version or label): the bound on their
length, and the one way messages and logs show them.

A name comes from the client and may be hostile: a 100 000-character model name
must be refused before it reaches the filesystem, and a message must not echo it
whole, or the status would pass the client's metadata limit (8 KiB in gRPC's
default) and the client would see RESOURCE_EXHAUSTED instead of the refusal.
"""

from __future__ import annotations

from .errors import invalid, shortened

# A model is the folder of its name (in the repository, or the object store's local
# cache): one path component, which Linux file systems bound at 255 bytes (NAME_MAX).
# No longer name can name a model, and none can name a version folder or a label
# (labels are at most 64 characters).
MAX_NAME_BYTES = 255
SHOWN_CHARS = 64  # what a message shows of a long name: enough to recognise it


def shorten(name: str) -> str:
    """``name`` as messages and logs show it: whole when short, else its first
    characters and its length, e.g. ``mmmm... (100000 characters)``."""
    return shortened(name, SHOWN_CHARS)


def check_name(name: str, what: str = "model name") -> str:
    """``name`` if it is within MAX_NAME_BYTES; else INVALID_ARGUMENT, naming it shortened."""
    if len(name) * 4 <= MAX_NAME_BYTES:  # every request's version passes here: most need no encoding
        return name
    size = len(name.encode(errors="surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise invalid(f"the {what} '{shorten(name)}' is {size} bytes long; a {what} is at most "
                      f"{MAX_NAME_BYTES} bytes (one file name)")
    return name
