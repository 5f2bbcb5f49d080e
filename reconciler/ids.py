"""Identifier patterns, the region table and near-miss suggestions, shared by the loader, the
diff, the CLI, the client and the emulator.

Regions: the table below is what this version knows, not a closed list. ``normalize_region``
accepts any well-formed long name (``REGION_NAME_PATTERN``) so a region Tencent opens tomorrow
can be used; ``region_suggestion`` gives the did-you-mean for a name that is not known, and
``is_likely_region_typo`` tells a typo of a known region (an error) from a new name (a warning).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator

INSTANCE_ID_PATTERN = r"^ins-[a-z0-9]{8}$"
KEY_ID_PATTERN = r"^skey-[a-z0-9]{8}$"
_INSTANCE_RE = re.compile(INSTANCE_ID_PATTERN)
_KEY_RE = re.compile(KEY_ID_PATTERN)

# API 2.0 short codes (as the 2.0 docs list them) and the long names later docs send.
REGION_SHORT_CODES: dict[str, str] = {
    "bj": "ap-beijing",
    "gz": "ap-guangzhou",
    "sh": "ap-shanghai",
    "hk": "ap-hongkong",
    "ca": "na-toronto",
    "sg": "ap-singapore",
    "usw": "na-siliconvalley",
    "cd": "ap-chengdu",
    "de": "eu-frankfurt",
    "kr": "ap-seoul",
    "shjr": "ap-shanghai-fsi",
    "szjr": "ap-shenzhen-fsi",
    "gzopen": "ap-guangzhou-open",
}
# Long names with no 2.0 short code.
_EXTRA_LONG_NAMES = (
    "ap-bangkok",
    "ap-beijing-fsi",
    "ap-chongqing",
    "ap-jakarta",
    "ap-mumbai",
    "ap-nanjing",
    "ap-tokyo",
    "eu-moscow",
    "na-ashburn",
    "sa-saopaulo",
)
REGION_LONG_NAMES: frozenset[str] = frozenset(REGION_SHORT_CODES.values()) | frozenset(_EXTRA_LONG_NAMES)
KNOWN_REGIONS: tuple[str, ...] = tuple(sorted(REGION_LONG_NAMES | set(REGION_SHORT_CODES)))


def is_instance_id(value: object) -> bool:
    """True if ``value`` is a well-formed instance ID (``ins-`` and 8 lower-case letters/digits)."""
    return isinstance(value, str) and _INSTANCE_RE.fullmatch(value) is not None


def is_key_id(value: object) -> bool:
    """True if ``value`` is a well-formed key ID (``skey-`` and 8 lower-case letters/digits)."""
    return isinstance(value, str) and _KEY_RE.fullmatch(value) is not None


def canonical_region(region: str) -> str:
    """The long name for a *known* region given as a long name or a short code.

    Raises ``KeyError`` for a region not in the table (the emulator models today's cloud and
    uses this); the loader and the client use ``normalize_region``, which is open-ended.
    """
    if region in REGION_LONG_NAMES:
        return region
    return REGION_SHORT_CODES[region]


# A long region name: area, place, optional qualifiers (ap-guangzhou, ap-shanghai-fsi,
# ap-guangzhou-open, na-siliconvalley). Short codes are an API 2.0 thing and a closed set.
REGION_NAME_PATTERN = r"^[a-z]{2,4}-[a-z]{2,}(-[a-z0-9]+)*$"
_REGION_NAME_RE = re.compile(REGION_NAME_PATTERN)
REGION_HELP = (
    "a long region name such as ap-guangzhou (lower-case words joined by '-') "
    "or an API 2.0 short code such as gz"
)


def is_known_region(region: object) -> bool:
    """True for a region in this version's table (long name or short code)."""
    return isinstance(region, str) and (region in REGION_LONG_NAMES or region in REGION_SHORT_CODES)


def is_well_formed_region(region: object) -> bool:
    """True for a known region or any name shaped like a long region name."""
    if is_known_region(region):
        return True
    return isinstance(region, str) and _REGION_NAME_RE.fullmatch(region) is not None


def normalize_region(region: str) -> str:
    """The long name of ``region``: known names and short codes map to the table's long name;
    any other well-formed long name is accepted as written (a region newer than this table).

    Raises ``KeyError`` for a name that is not shaped like a region at all.
    """
    if is_known_region(region):
        return canonical_region(region)
    if _REGION_NAME_RE.fullmatch(region) is not None:
        return region
    raise KeyError(region)


def region_suggestion(region: str) -> str | None:
    """The known region ``region`` was most likely meant to be (``ap-guangzho`` ->
    ``ap-guangzhou``), or ``None``. For the CLI's ``--region`` and the loader's messages."""
    if is_known_region(region):
        return None
    close = difflib.get_close_matches(region.strip().lower(), KNOWN_REGIONS, n=1, cutoff=0.75)
    return close[0] if close else None


# A well-formed name this close to a known long name is a typo, not a new region: new regions
# are named after new places, not one or two letters away from an existing one.
REGION_TYPO_DISTANCE = 2


def is_likely_region_typo(region: str) -> str | None:
    """The known long name that a well-formed but unknown ``region`` is a typo of, or ``None``."""
    if is_known_region(region):
        return None
    near = [
        (edit_distance(region, known), known)
        for known in sorted(REGION_LONG_NAMES)
        if abs(len(known) - len(region)) <= REGION_TYPO_DISTANCE
    ]
    best = min(near, default=None)
    if best is not None and best[0] <= REGION_TYPO_DISTANCE:
        return best[1]
    return None


# --------------------------------------------------------------------------- near-miss IDs

# How far an allowed-but-absent ID may be from a live one to count as its typo. One edit (a
# wrong, missing, extra or swapped character) is the common typo; with 36^8 possible IDs the
# chance that an unrelated live ID is one edit away is about 1e-10 per pair.
NEAR_MISS_DISTANCE = 1


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
    adjacent characters each cost 1. With ``limit``, any distance above it is returned as
    ``limit + 1`` (early exit: near-miss checks only care about "within ``limit``")."""
    if a == b:
        return 0
    if limit is not None and abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            best = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, previous2[j - 2] + 1)
            current[j] = best
        if limit is not None and min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    distance = previous[len(b)]
    return distance if limit is None or distance <= limit else limit + 1


def near_misses(wanted: str, candidates: Iterable[str], distance: int = NEAR_MISS_DISTANCE) -> list[str]:
    """The ``candidates`` within ``distance`` edits of ``wanted`` (and not equal to it),
    sorted. Used for "did you mean" on IDs."""
    return sorted(
        {c for c in candidates if c != wanted and edit_distance(wanted, c, distance) <= distance}
    )


def _wildcards(text: str) -> Iterator[str]:
    for i in range(len(text)):
        yield text[:i] + "\0" + text[i + 1 :]


def _deletions(text: str) -> Iterator[str]:
    for i in range(len(text)):
        yield text[:i] + text[i + 1 :]


def _swaps(text: str) -> Iterator[str]:
    for i in range(len(text) - 1):
        if text[i] != text[i + 1]:
            yield text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def near_miss_map(wanted: Iterable[str], candidates: Iterable[str]) -> dict[str, list[str]]:
    """For each ``wanted`` string, the ``candidates`` exactly one edit away (one character
    wrong, missing, extra, or two adjacent ones swapped), sorted; strings with none are left out.

    Indexed, so 10,000 wanted IDs against 100,000 live ones cost a few hundred milliseconds
    instead of a billion distance computations. Agrees with ``edit_distance(a, b) == 1``.
    """
    pool = set(candidates)
    by_wildcard: dict[str, set[str]] = {}
    by_deletion: dict[str, set[str]] = {}
    for candidate in pool:
        for variant in _wildcards(candidate):
            by_wildcard.setdefault(variant, set()).add(candidate)
        for variant in _deletions(candidate):
            by_deletion.setdefault(variant, set()).add(candidate)
    found: dict[str, list[str]] = {}
    for word in set(wanted):
        near: set[str] = set()
        for variant in _wildcards(word):  # one substitution
            near |= by_wildcard.get(variant, set())
        near |= by_deletion.get(word, set())  # a candidate with one extra character
        near.update(variant for variant in _deletions(word) if variant in pool)  # one missing
        near.update(variant for variant in _swaps(word) if variant in pool)
        near.discard(word)
        if near:
            found[word] = sorted(near)
    return found
