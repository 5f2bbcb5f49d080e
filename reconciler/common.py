"""Small helpers every layer shares, written once: plurals, short reprs, canonical JSON, a
mapping that refuses a repeated name. Pure.

Part of the bottom layer (with ``model``, ``errors`` and ``ids``): imports nothing of the tool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

V = TypeVar("V")

SHORT_REPR_LIMIT = 60  # characters of a quoted value in a message: enough to recognise it


def plural(count: int, singular: str, plural_form: str | None = None, *, thousands: bool = False) -> str:
    """``"1 call"``, ``"3 calls"`` (``thousands``: ``"1,000 calls"``)."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count:,} {word}" if thousands else f"{count} {word}"


def short_repr(value: object, limit: int = SHORT_REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` marks a cut): for messages that quote
    input, which may be arbitrarily long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def canonical_json(data: Any) -> str:
    """Canonical JSON: keys sorted, separators ``,`` and ``:``, no ASCII escaping, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_sha256(data: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``data`` as UTF-8 (lone surrogates, which cloud
    JSON can carry, are encoded as-is)."""
    return hashlib.sha256(canonical_json(data).encode("utf-8", "surrogatepass")).hexdigest()


def unique_mapping(pairs: Iterable[tuple[str, V]], repeated: Callable[[str], str]) -> dict[str, V]:
    """``pairs`` as a dict; a name given twice raises ``ValueError(repeated(name))`` (where a
    dict would silently keep the last one, and a request or a plan must mean one thing)."""
    result: dict[str, V] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(repeated(name))
        result[name] = value
    return result
