"""Sentiment of raw text, tokenized and classified inside the server (examples/pipelines).
Only icow's client: grpcio, protobuf, numpy.

    icow serve --model-repository examples/pipelines &     # needs icow[extensions]
    python examples/clients/pipeline_text.py "I loved this film" "The food was awful"
    python examples/clients/pipeline_text.py --steps "..."  # the three models one by one

Without --steps, one request to the ensemble text_sentiment; with it, the client calls its
steps (text_tokenizer, text_classifier, text_topk) in turn, passing each one's output on.
"""

from __future__ import annotations

import argparse

import numpy as np

import icow


def classify(client: icow.Client, texts: list[str], steps: bool = False) -> dict[str, np.ndarray]:
    """LABELS [n, 2] (bytes, most likely first) and SCORES [n, 2] for ``texts``."""
    text = np.array([t.encode() for t in texts], dtype=object)  # BYTES: UTF-8 text
    if not steps:
        return client.infer("text_sentiment", {"TEXT": text})
    ids = client.infer("text_tokenizer", {"TEXT": text})["INPUT_IDS"]
    logits = client.infer("text_classifier", {"INPUT_IDS": ids})["LOGITS"]
    return client.infer("text_topk", {"LOGITS": logits})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--steps", action="store_true", help="call the composing models one by one")
    args = parser.parse_args()
    with icow.Client(args.url) as client:
        out = classify(client, args.texts, args.steps)
    for text, labels, scores in zip(args.texts, out["LABELS"], out["SCORES"]):
        ranked = ", ".join(f"{label.decode()} {score:.2f}" for label, score in zip(labels, scores))
        print(f"{text!r}: {ranked}")


if __name__ == "__main__":
    main()
