"""``json.dumps(payload, default=str, ...)`` of a flat dict, the same text, cheaper.

The JSON encoder calls its ``default`` back for every value it cannot write itself (a
Decimal, a date), and those calls are most of its cost for a mapped record or a parsed
row. ``dumps`` writes the values mappings and parsers give (text, None, Decimal, date,
datetime, int) directly, exactly as json writes them, and hands everything else (floats,
bools, lists, nested dicts, other types, keys that are not text) to json.dumps itself.
Used where the text itself matters: content digests and stored rows.
"""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from json.encoder import encode_basestring_ascii as _text

__all__ = ["dumps"]

_ORDERS: dict = {}     # (keys, sort_keys, colon) -> ((key, '"key": '), ...) in output order


def _json(value, sort_keys: bool, separators: tuple) -> str:
    return json.dumps(value, sort_keys=sort_keys, default=str, separators=separators)


def dumps(payload: dict, *, sort_keys: bool = False, separators: tuple = (", ", ": ")) -> str:
    """Exactly ``json.dumps(payload, sort_keys=sort_keys, default=str, separators=separators)``."""
    comma, colon = separators
    keys = tuple(payload)
    order = _ORDERS.get((keys, sort_keys, colon))
    if order is None:
        if not all(type(k) is str for k in keys):
            return _json(payload, sort_keys, separators)
        if len(_ORDERS) > 256:
            _ORDERS.clear()
        order = _ORDERS[(keys, sort_keys, colon)] = tuple(
            (k, _text(k) + colon) for k in (sorted(keys) if sort_keys else keys))
    parts = []
    for key, head in order:
        value = payload[key]
        kind = type(value)
        if kind is str:
            parts.append(head + _text(value))
        elif value is None:
            parts.append(head + "null")
        elif kind is Decimal or kind is dt.date or kind is dt.datetime:
            parts.append(head + _text(str(value)))
        elif kind is int:
            parts.append(head + int.__repr__(value))
        else:
            parts.append(head + _json(value, sort_keys, separators))
    return "{" + comma.join(parts) + "}"
