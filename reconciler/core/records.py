"""The model's records as JSON-ready data and back, a member per field. Pure (no I/O).

The plan and result documents (``core.document``) write most of the model's dataclasses
exactly as they are: a member per field, named as the field, enums as their values, tuples as
lists, nested records as objects. ``record_to_data`` and ``record_from_data`` do that from the
fields' types, so the two directions cannot drift apart and a field is named once, in the
model. What a document writes differently (a member left out, a computed one, an optional
block) stays written by hand in ``core.document``; the schema checks the data before it is
read, so reading does not check types again.

The conversions for a class are worked out once, from its type hints, and cached: a large
plan has tens of thousands of changes.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from enum import Enum
from operator import attrgetter, itemgetter
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

R = TypeVar("R")

_Convert = Callable[[Any], Any]
_PLAIN = (str, int, bool, type(None))


def _is_plain(hint: Any) -> bool:
    if get_origin(hint) in (Union, types.UnionType):
        return all(_is_plain(arg) for arg in get_args(hint))
    return hint in _PLAIN


def _optional(convert: _Convert) -> _Convert:
    return lambda value: None if value is None else convert(value)


def _converters(hint: Any) -> tuple[_Convert | None, _Convert | None]:
    """(to data, from data) for a field of type ``hint``; None where the value is kept as is."""
    if _is_plain(hint):
        return None, None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(get_args(hint)) != 2 or len(args) != 1:  # only "X | None" is not plain
            raise TypeError(f"no record conversion for {hint!r}")
        to, back = _converters(args[0])
        return (None if to is None else _optional(to)), (None if back is None else _optional(back))
    if origin is tuple:
        item, *rest = get_args(hint)
        if rest != [Ellipsis]:  # only tuple[X, ...]: the model's sequences
            raise TypeError(f"no record conversion for {hint!r}")
        item_to, item_back = _converters(item)
        if item_to is None and item_back is None:
            return list, tuple
        to_item = item_to or (lambda v: v)
        back_item = item_back or (lambda v: v)
        return (lambda v: [to_item(x) for x in v]), (lambda v: tuple(back_item(x) for x in v))
    if hint is float:
        return None, float  # a JSON number may be read as an int: the model holds a float
    if isinstance(hint, type) and issubclass(hint, Enum):
        enum: type[Enum] = hint
        return (lambda v: v.value), enum
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        cls: type[Any] = hint
        return record_to_data, (lambda v: record_from_data(cls, v))
    raise TypeError(f"no record conversion for {hint!r}")


@dataclasses.dataclass(frozen=True)
class _Codec:
    """How one class's records are written and read: its field names (in ``__init__`` order)
    and the conversions of the fields that are not kept as they are, by position."""

    names: tuple[str, ...]
    get: Callable[[Any], Any]  # a record -> its fields' values (a tuple: two or more fields)
    item: Callable[[Any], Any]  # the data -> the fields' members (likewise)
    to: tuple[tuple[int, _Convert], ...]
    back: tuple[tuple[int, _Convert], ...]


_CODECS: dict[type[Any], _Codec] = {}


def _codec(cls: type[Any]) -> _Codec:
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = _make_codec(cls)
    return codec


def _make_codec(cls: type[Any]) -> _Codec:
    hints = get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if any(not f.init or f.kw_only for f in fields):  # read back positionally: every field in order
        raise TypeError(f"{cls.__name__}: a record's fields are all positional __init__ arguments")
    names = tuple(f.name for f in fields)
    if len(names) < 2:  # attrgetter and itemgetter return a bare value for one name
        raise TypeError(f"{cls.__name__}: a record needs two or more fields")
    converters = [_converters(hints[name]) for name in names]
    return _Codec(
        names,
        attrgetter(*names),
        itemgetter(*names),
        tuple((n, to) for n, (to, _) in enumerate(converters) if to is not None),
        tuple((n, back) for n, (_, back) in enumerate(converters) if back is not None),
    )


def record_to_data(record: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON-ready dict: every field, by name."""
    codec = _codec(type(record))
    values = list(codec.get(record))
    for n, to in codec.to:
        values[n] = to(values[n])
    return dict(zip(codec.names, values, strict=True))


def record_from_data(cls: type[R], data: Mapping[str, Any]) -> R:
    """The inverse of ``record_to_data``: every field is read (a missing one raises ``KeyError``);
    members that are not fields are ignored."""
    codec = _codec(cls)
    values = list(codec.item(data))
    for n, back in codec.back:
        values[n] = back(values[n])
    return cls(*values)
