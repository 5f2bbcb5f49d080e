"""Making untrusted text safe to show, for the text and Markdown renderers. Pure.

Names of keys and instances come from the cloud, and reasons, warnings and findings quote them:
any of it may carry terminal escapes, control characters or bidirectional overrides that would
repaint a terminal or disguise what a reviewer reads. ``clean`` removes them all.
"""

from __future__ import annotations

import re
import unicodedata

# ESC-introduced sequences (CSI, OSC, DCS/SOS/PM/APC strings, and two-byte escapes) and their
# 8-bit C1 forms. Removed whole, so no "[31m" residue is left behind.
_ESCAPES = re.compile(
    r"""
    (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?                 # CSI ... final byte
  | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])           # OSC, DCS, SOS, PM, APC ...
    [^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?             # ... up to BEL or ST
  | \x1b[ -/]*[0-~]?                                  # other escapes (ESC c, ESC ( B, ...)
    """,
    re.VERBOSE,
)
# Bidirectional controls (Trojan Source) and other invisible format characters that change
# how surrounding text reads. ZWJ (U+200D) stays: emoji sequences need it.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WHITESPACE_CONTROLS = frozenset("\t\n\r\v\f\x85\u2028\u2029")


def _keep(char: str) -> str:
    if char in _WHITESPACE_CONTROLS:
        return " "
    if char in _BIDI:
        return ""
    category = unicodedata.category(char)
    if category == "Cc":
        return ""
    if category == "Cs":  # a lone surrogate: not text
        return "\ufffd"
    return char


def clean(text: str, limit: int | None = None) -> str:
    """``text`` without escape sequences and control characters; newlines and tabs become
    spaces. With ``limit``, at most that many characters (an ellipsis marks a cut)."""
    # Printable ASCII (IDs, most names) holds no escape (ESC and C1 are not), no control and no
    # bidi character: nothing to remove, and the regex costs more than the check.
    if not (text.isascii() and text.isprintable()):
        text = _ESCAPES.sub("", text)
        if not text.isprintable() or any(c in _BIDI for c in text):
            text = "".join(_keep(c) for c in text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "\u2026"
    return text


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide East Asian characters count two, combining
    marks none (instance names are often Chinese; this keeps columns aligned)."""
    if text.isascii():  # the common case, and printable ASCII is one column a character
        return len(text)
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` display columns."""
    return text + " " * max(width - display_width(text), 0)

