"""Seed corpus for the parser fuzzer: a few valid ModelInferRequests of every
datatype, raw and typed, written as files into the folder given."""

import sys
from pathlib import Path

import numpy as np

from icow import _wire
from icow._proto import inference_pb2 as pb
from icow.protocol.datatypes import DATATYPES


def seeds():
    for name, datatype in DATATYPES.items():
        raw = pb.ModelInferRequest(model_name="m", model_version="1", id="seed")
        raw.parameters["p"].int64_param = 7
        raw.inputs.add(name="x", datatype=name, shape=[2, 2]).parameters["q"].string_param = "s"
        raw.outputs.add(name="y")
        if name == "BYTES":
            raw.raw_input_contents.append(_wire.pack_bytes([b"a", b"bc", b"", b"def"]))
        else:
            raw.raw_input_contents.append(np.arange(4).astype(datatype.numpy).tobytes())
        yield f"raw_{name}", raw
        if datatype.contents:
            typed = pb.ModelInferRequest(model_name="m")
            tensor = typed.inputs.add(name="x", datatype=name, shape=[3])
            values = [b"a", b"b", b"c"] if name == "BYTES" else np.arange(3).astype(datatype.numpy).tolist()
            getattr(tensor.contents, datatype.contents).extend(values)
            yield f"typed_{name}", typed
    two = pb.ModelInferRequest(model_name="m")  # fuzz_parse.cc's third model: inputs x and w
    for input_name in ("x", "w"):
        two.inputs.add(name=input_name, datatype="FP16", shape=[3])
        two.raw_input_contents.append(np.arange(3, dtype="<f2").tobytes())
    yield "two_inputs_FP16", two


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, message in seeds():
        (out / name).write_bytes(message.SerializeToString())
