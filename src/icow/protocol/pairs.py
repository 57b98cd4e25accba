"""``NAME=VALUE`` lists: the format of a model's routing parameters in config.pbtxt
(``version_labels``, ``traffic_split``) and of ``icow models split``, read by the
server and the admin CLI alike."""

from __future__ import annotations


def parse_pairs(text: str) -> dict[str, str]:
    """``"a=1, b=2"`` as {"a": "1", "b": "2"}; ``;`` separates too. Raises ValueError."""
    pairs: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.replace(";", ",").split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"'{item}' is not NAME=VALUE")
        if key in pairs:
            raise ValueError(f"'{key}' appears twice")
        pairs[key] = value
    return pairs
