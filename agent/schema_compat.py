"""Schema evolution: can the current canonical schema read what a released version wrote?

fastavro has no compatibility checker, so the ``avro`` package does it, plus a check of
logical types, which that checker ignores. This module is imported only when a check runs
(``outpost check``, ``outpost schemas``, the tests), never on the hot path.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from .schemas import _non_null

__all__ = ["backward_problems"]


def backward_problems(entity: str, current_json: str, current: dict, previous: dict) -> list[str]:
    """Problems reading data written with ``previous`` using ``current`` (its JSON text too);
    [] means BACKWARD compatible."""
    try:
        reader = avro.schema.parse(current_json)
        writer = avro.schema.parse(json.dumps(previous))
    except Exception as exc:
        return [f"{entity}: schema does not parse: {exc}"]
    # The checker reports a bad field inside before/after only as "reader union lacking
    # writer type: RECORD"; checking the records on their own names the field, and the
    # whole envelope is reported only when they found nothing.
    pairs = []
    for name in ("metadata", "before"):
        r, w = reader.fields_dict.get(name), writer.fields_dict.get(name)
        if r is not None and w is not None:
            pairs.append((f"{entity}.{name}", _record_of(r.type), _record_of(w.type)))
    problems: list[str] = []
    for where, r, w in pairs:
        if r is not None and w is not None:
            problems += _incompatibilities(where, r, w)
    problems = problems or _incompatibilities(entity, reader, writer)
    # The avro checker ignores logical types (and lets bytes become string), so a
    # decimal whose scale changed would pass while changing every amount.
    problems += _logical_changes(entity, current, previous)
    return problems


def _incompatibilities(where: str, reader: Any, writer: Any) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    at = ", ".join(sorted(loc for loc in result.locations if loc != "/"))
    # A bare name is the checker's message for a new field without a default.
    return [f"{where}: " + (f"new field {m!r} has no default" if m.isidentifier() else m)
            + (f" (at {at})" if at else "") for m in sorted(result.messages)]


def _record_of(schema: Any) -> Any:
    """The record inside an avro-package schema or ``[null, record]`` union, else None."""
    for branch in getattr(schema, "schemas", [schema]):
        if branch.type == "record":
            return branch
    return None


def _logical(avro_type: Any) -> Optional[tuple]:
    if isinstance(avro_type, dict) and "logicalType" in avro_type:
        if avro_type["logicalType"] == "decimal":
            return f"decimal({avro_type.get('precision')},{avro_type.get('scale', 0)})"
        return avro_type["logicalType"]
    return None


def _logical_changes(path: str, reader: dict, writer: dict) -> list[str]:
    """Fields present in both records whose logical type differs, recursively."""
    problems: list[str] = []
    old_fields = {f["name"]: f for f in writer.get("fields", [])}
    for field in reader.get("fields", []):
        old = old_fields.get(field["name"])
        if old is None:
            continue
        new_t, _ = _non_null(field["type"])
        old_t, _ = _non_null(old["type"])
        where = f"{path}.{field['name']}"
        if isinstance(new_t, dict) and isinstance(old_t, dict) and new_t.get("type") == "record" == old_t.get("type"):
            problems += _logical_changes(where, new_t, old_t)
        elif (_logical(new_t) or _logical(old_t)) and _logical(new_t) != _logical(old_t):
            problems.append(f"{where}: logical type changed from {_logical(old_t) or old_t}"
                            f" to {_logical(new_t) or new_t}")
    return problems
