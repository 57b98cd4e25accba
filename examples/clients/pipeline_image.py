"""The dominant colour of a JPEG or PNG file, decoded and classified inside the server
(examples/pipelines). Only icow's client: grpcio, protobuf, numpy.

    icow serve --model-repository examples/pipelines &     # needs icow[extensions]
    python examples/clients/pipeline_image.py photo.jpg
    python examples/clients/pipeline_image.py --steps photo.jpg   # the three models one by one

The file goes as it is, as a UINT8 vector (the decoder in the graph takes the encoded bytes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import icow


def colour(client: icow.Client, image: bytes, steps: bool = False) -> tuple[str, float]:
    """The label (red, green or blue) and its score for the encoded ``image``."""
    data = np.frombuffer(image, dtype=np.uint8)
    if steps:
        pixels = client.infer("image_preprocess", {"IMAGE": data})["PIXELS"]
        logits = client.infer("image_cnn", {"PIXELS": pixels})["LOGITS"]
        out = client.infer("image_label", {"LOGITS": logits})
    else:
        out = client.infer("image_colour", {"IMAGE": data})
    return out["LABEL"][0].decode(), float(out["SCORE"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--steps", action="store_true", help="call the composing models one by one")
    args = parser.parse_args()
    with icow.Client(args.url) as client:
        for path in args.files:
            label, score = colour(client, path.read_bytes(), args.steps)
            print(f"{path}: {label} {score:.2f}")


if __name__ == "__main__":
    main()
