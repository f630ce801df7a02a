"""Pure conversion of Debezium JSON change events into ``SourceRecord``s. No I/O, no JVM.

Outpost runs the engine with ``converter.schemas.enable=false``, ``decimal.handling.mode=
string`` and ``time.precision.mode=isostring``, so a value carries no type of its own:

* NUMERIC/DECIMAL/MONEY come as strings ("12345.67")  -> ``Decimal`` (exact);
* ``timestamp with time zone`` as "2026-11-27T08:00:00.500000Z" (UTC) -> aware ``datetime``;
* ``timestamp`` (no zone) as "2026-11-27T10:00:00.123456Z": the wall-clock time with a
  *fake* "Z" -> naive ``datetime``, which the mapping places in its ``source_timezone``;
* ``date`` as "2026-11-27Z" -> ``date``; ``time`` as "13:14:15.5Z" -> ``time``;
* double precision / real stay ``float`` (the mapping rounds money half-even to the scale);
  booleans, integers and text are plain JSON; NULL stays None (``replace.null.with.default
  =false``).

The column kinds come from the database catalog (``column_kinds`` of the source), read once
per engine start; a column the catalog does not know keeps its JSON value, which the
mapping still coerces (ISO strings and decimal strings parse exactly).

Position (hence ``event_id``): for a streamed change, the connector's source position plus
the row key, e.g. ``lsn=1014447336/txId=31326/{"id":1}``; a batch re-delivered after a crash
carries the same positions, so it collapses onto the same event ids in the queue. For a
snapshot read: ``snapshot/<key>/<hash of the row image>``, so a snapshot taken again reads
an unchanged row under the same id.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections import deque
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping, Optional

from agent.contracts import SourceRecord

__all__ = ["to_records", "convert_row", "position", "HEARTBEAT_PREFIX", "kind_of", "parse_notification"]

HEARTBEAT_PREFIX = "__debezium-heartbeat"
_OPERATIONS = {"c": "create", "u": "update", "d": "delete", "r": "snapshot"}
# source fields that order changes, per connector (the first ones present are used)
_POSITION_FIELDS = ("lsn", "txId", "change_lsn", "commit_lsn", "event_serial_no", "scn", "commit_scn",
                    "file", "pos", "row", "gtid")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def kind_of(data_type: str) -> Optional[str]:
    """PostgreSQL ``information_schema.columns.data_type`` -> the conversion to apply."""
    t = data_type.lower()
    if t in ("numeric", "decimal", "money"):
        return "decimal"
    if t == "timestamp with time zone":
        return "timestamptz"
    if t.startswith("timestamp"):
        return "timestamp"
    if t == "date":
        return "date"
    if t.startswith("time"):
        return "time"
    return None


def _strip_zone(text: str) -> str:
    return text[:-1] if text.endswith("Z") else text


def _convert(kind: str, value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        if kind == "decimal":
            return Decimal(value.replace(",", "").lstrip("$"))
        if kind == "timestamptz":
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
        if kind == "timestamp":
            return dt.datetime.fromisoformat(_strip_zone(value))
        if kind == "date":
            return dt.date.fromisoformat(_strip_zone(value))
        if kind == "time":
            return dt.time.fromisoformat(_strip_zone(value))
    except (ValueError, InvalidOperation):
        return value   # e.g. 'infinity': the mapping reports it as a bad value, with context
    return value


def convert_row(row: Optional[Mapping[str, Any]], kinds: Mapping[str, str]) -> Optional[dict]:
    if row is None:
        return None
    out = dict(row)
    for column, kind in kinds.items():
        if column in out:
            out[column] = _convert(kind, out[column])
    return out


def position(source: Mapping[str, Any], key: Optional[str], op: str = "c", after: Any = None) -> str:
    """Streamed change: log position + key. Snapshot read: key + a hash of the row image.

    A snapshot that is taken again (interrupted before its offsets were flushed, a reset, an
    ad-hoc request) reads unchanged rows at a new log position; the row version is the same
    change, so its id must not depend on the snapshot's position.
    """
    if op == "r":
        image = _CANONICAL.encode(after)
        return f"snapshot/{_canonical_key(key)}/{hashlib.sha256(image.encode()).hexdigest()[:20]}"
    parts = [f"{name}={source[name]}" for name in _POSITION_FIELDS if source.get(name) is not None]
    parts.append(_canonical_key(key))
    return "/".join(parts)


# json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False), built once: the
# position of every change is made with it (json.dumps builds an encoder per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_decode = json.JSONDecoder().decode
_quote = json.encoder.encode_basestring     # what _CANONICAL uses for strings (ensure_ascii=False)


def _canonical_key(key: Optional[str]) -> str:
    """The row key as canonical JSON (sorted names, no spaces), whatever the converter wrote.

    A flat key of text and integer columns (nearly every key) is written here directly,
    exactly as ``_CANONICAL`` would write it (tests/test_debezium_hot_path.py checks both
    against each other); anything else goes through ``_CANONICAL``."""
    if not key:
        return "{}"
    try:
        parsed = _decode(key)
    except ValueError:
        return key
    if type(parsed) is not dict:
        return _CANONICAL.encode(parsed)
    parts = []
    for name in sorted(parsed):
        value = parsed[name]
        kind = type(value)
        if kind is str:
            parts.append(f"{_quote(name)}:{_quote(value)}")
        elif kind is int:
            parts.append(f"{_quote(name)}:{int.__repr__(value)}")
        else:
            return _CANONICAL.encode(parsed)
    return "{" + ",".join(parts) + "}"


def occurred_at(source: Mapping[str, Any]) -> Optional[dt.datetime]:
    if source.get("ts_us") is not None:
        return _EPOCH + dt.timedelta(microseconds=int(source["ts_us"]))
    if source.get("ts_ms") is not None:
        return _EPOCH + dt.timedelta(milliseconds=int(source["ts_ms"]))
    return None


def to_records(items: Iterable[tuple], kinds: Mapping[str, Mapping[str, str]],
               skip: Iterable[str] = (), marker: Optional[str] = None,
               echoes: Optional["EchoTransactions"] = None) -> tuple[list[SourceRecord], dict]:
    """(destination, value JSON, key JSON) triples -> records, plus facts for the checkpoint.

    The engine's consumer hands ``None`` as destination (reading it costs a JNI call per
    record); heartbeats are then known by their value, which carries no "op".

    ``kinds`` maps "schema.table" to its column kinds. Heartbeats and tombstones carry no
    change: they are skipped, but still acknowledged with the batch (that is what moves the
    replication slot forward on an idle database). So are changes of the tables in ``skip``
    (the heartbeat and signalling tables the route also captures), and, with a ``marker``
    table, every change of a transaction that wrote the marker: the sql_apply sink writes
    it first in each apply transaction, so those changes are Outpost's own (no echo).
    """
    records: list[SourceRecord] = []
    facts = {"heartbeats": 0, "lsn": None, "snapshot": None, "echoes": 0}
    for destination, value, key in items:
        if destination is not None and destination.startswith(HEARTBEAT_PREFIX):
            facts["heartbeats"] += 1
            continue
        if value is None:
            continue
        event = _decode(value)
        op = _OPERATIONS.get(event.get("op"))
        if op is None:    # heartbeats ({"ts_ms": ...}), schema-change or transaction markers
            if event.keys() == {"ts_ms"}:
                facts["heartbeats"] += 1
            continue
        source = event.get("source") or {}
        schema, name = source.get("schema") or source.get("db"), source.get("table")
        table = f"{schema}.{name}" if schema and name else (schema or name or "")
        if table in skip:
            facts["heartbeats"] += 1
            continue
        if echoes is not None and (table == marker or source.get("txId") in echoes):
            if table == marker:
                echoes.add(source.get("txId"))
            facts["echoes"] += 1
            continue
        table_kinds = kinds.get(table, {})
        records.append(SourceRecord(
            object=table, operation=op, position=position(source, key, event.get("op"), event.get("after")),
            after=convert_row(event.get("after"), table_kinds), before=convert_row(event.get("before"), table_kinds),
            occurred_at=occurred_at(source)))
        if source.get("lsn") is not None:
            facts["lsn"] = source["lsn"]
        if source.get("snapshot") not in (None, "false"):
            facts["snapshot"] = source["snapshot"]
    return records, facts


class EchoTransactions:
    """The ids of the latest transactions that wrote the marker (bounded: a transaction's
    changes arrive together, so only recent ones can still be followed by more changes)."""

    def __init__(self, keep: int = 1000):
        self._order: deque = deque(maxlen=keep)
        self._ids: set = set()

    def add(self, tx_id) -> None:
        if tx_id is None or tx_id in self._ids:
            return
        if len(self._order) == self._order.maxlen:
            self._ids.discard(self._order[0])
        self._order.append(tx_id)
        self._ids.add(tx_id)

    def __contains__(self, tx_id) -> bool:
        return tx_id is not None and tx_id in self._ids


_NOTE_FIELD = re.compile(r"(\w+)=('([^']*)'|[^,{}]*)")


def parse_notification(text: str) -> Optional[dict]:
    """A Debezium log-channel notification -> {"kind", "state", "table", "rows", "at"} for status.

    e.g. "{id='..', aggregateType='Initial Snapshot', type='TABLE_SCAN_COMPLETED',
    additionalData={scanned_collection=public.t, total_rows_scanned=1, ...}, timestamp=..}"
    """
    fields = {m.group(1): (m.group(3) if m.group(3) is not None else m.group(2)).strip()
              for m in _NOTE_FIELD.finditer(text)}
    if "aggregateType" not in fields or "type" not in fields:
        return None
    note = {"kind": fields["aggregateType"], "state": fields["type"],
            "table": fields.get("scanned_collection") or fields.get("current_collection_in_progress")
            or fields.get("data_collections"),
            "rows": int(fields["total_rows_scanned"]) if fields.get("total_rows_scanned", "").isdigit() else None,
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return {k: v for k, v in note.items() if v is not None}
