"""Identifier patterns and the region table, shared by the loader, the client and the emulator."""

from __future__ import annotations

import re

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
    """The long name for a region given as a long name or a short code.

    Raises ``KeyError`` for an unknown region; callers turn that into their own error.
    """
    if region in REGION_LONG_NAMES:
        return region
    return REGION_SHORT_CODES[region]
