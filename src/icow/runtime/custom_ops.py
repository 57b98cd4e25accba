"""Custom operator libraries a model's sessions register, as its config asks: today the one of
onnxruntime-extensions (tokenizers, string ops, image decoding), so that pre- and
post-processing run inside the server as ONNX graphs. Two forms:

    parameters { key: "custom_ops" value: { string_value: "onnxruntime_extensions" } }

or Triton's ONNX Runtime backend's ``model_operations { op_library_filename: "..." }``, taken
when the file is onnxruntime-extensions' library (e.g. ``/opt/ortx/libortextensions.so``):
icow registers the copy installed with it (``pip install icow[extensions]``), since the path
names a file on Triton's machine. No other library is loaded: a shared library is code, and a
model repository, or a deploy request, is data.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePath
from types import ModuleType
from typing import TYPE_CHECKING

from .._proto import model_config_pb2 as mc
from .config import ConfigError

if TYPE_CHECKING:
    import onnxruntime as ort

PARAMETER = "custom_ops"  # config.pbtxt parameters: library names, separated by commas
EXTENSIONS = "onnxruntime_extensions"
EXTRA = "icow[extensions]"
_PROTOBUF_IMPLEMENTATION = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
# onnxruntime-extensions' library as its C/C++ packages name it (libortextensions.so,
# ortextensions.dll) and as its Python wheel does (_extensions_pydll.cpython-311-....so).
_EXTENSIONS_FILE = re.compile(r"^(lib)?ortextensions\.|^_extensions_pydll\.")


def names(config: mc.ModelConfig) -> list[str]:
    """The libraries ``config`` asks for, each once, in order; raises ConfigError for a name or
    file icow does not know."""
    wanted: list[str] = []
    parameter = config.parameters.get(PARAMETER)
    for name in (n.strip() for n in (parameter.string_value if parameter else "").split(",")):
        if not name:
            continue
        if name != EXTENSIONS:
            raise ConfigError(f"config parameter '{PARAMETER}' names the library {name!r}: icow knows "
                              f"{EXTENSIONS!r} only")
        wanted.append(name)
    for filename in config.model_operations.op_library_filename:
        if not _EXTENSIONS_FILE.match(PurePath(filename.replace("\\", "/")).name):
            raise ConfigError(f"config field 'model_operations.op_library_filename' is {filename!r}: icow "
                              "loads only onnxruntime-extensions' library (libortextensions), from its own "
                              f"installation ({EXTRA}); a library named by a config is code it does not run")
        wanted.append(EXTENSIONS)
    return list(dict.fromkeys(wanted))


def register(options: ort.SessionOptions, config: mc.ModelConfig) -> None:
    """Register on ``options`` the libraries ``config`` asks for; ConfigError when one is not
    installed or ONNX Runtime refuses it."""
    for name in names(config):
        path = _extensions_library()
        try:
            options.register_custom_ops_library(path)
        except Exception as e:  # ONNX Runtime raises its own types; the reason is in the message
            raise ConfigError(f"onnxruntime could not register the custom operators of {name} ({path}): {e}") from e


def _extensions_library() -> str:
    """The path of the installed onnxruntime-extensions library."""
    try:
        extensions = import_extensions()
    except ImportError as e:
        raise ConfigError(f"the config asks for the custom operators of onnxruntime-extensions, which is not "
                          f"installed ({e}): pip install {EXTRA}") from None
    return extensions.get_library_path()


def import_extensions() -> ModuleType:
    """onnxruntime_extensions, imported without its side effect: on import it sets
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in os.environ (0.15.2, cvt.py), which every
    process started afterwards inherits (a pure-Python protobuf: slower, and its parse errors
    are UnicodeDecodeError, not DecodeError). The variable is put back as it was."""
    before = os.environ.get(_PROTOBUF_IMPLEMENTATION)
    try:
        import onnxruntime_extensions
    finally:
        if before is None:
            os.environ.pop(_PROTOBUF_IMPLEMENTATION, None)
        else:
            os.environ[_PROTOBUF_IMPLEMENTATION] = before
    return onnxruntime_extensions
