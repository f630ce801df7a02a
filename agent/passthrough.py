"""Pass-through translation for routes whose source already yields canonical events.

Inbound routes (``kafka`` source -> queue -> ``sql_apply`` sink) have no mapping: the
fabric publishes canonical events, the source decodes them against the current
canonical schema, and this translator only re-encodes them for the queue. The event
keeps its own identity: ``event_id``, ``correlation_id`` (propagated) and
``causation_id`` are those of the fabric's event, so the queue de-duplicates a
redelivered message on its id (delivery invariant 4) and the applier's ledger does
the same in the local database.

A source hands each message over as a ``SourceRecord`` whose ``after`` is a
*carrier* dict (documented in ``CARRIER_KEYS``); ``position`` is ``topic:partition:offset``.
A message the source could not decode or validate arrives with ``error`` set and goes to
the exception queue (stage "mapping") with the topic, partition, offset, error and the
decoded payload or the raw bytes, as any rejected record does.

Pure: no I/O.
"""
from __future__ import annotations

import datetime as dt
from typing import Optional

from .contracts import SourceRecord, TerminalError

__all__ = ["PassThroughTranslator", "CARRIER_KEYS", "OPERATION_OF_SYMBOL"]

# What a canonical-event source puts in ``SourceRecord.after``.
CARRIER_KEYS = {
    "entity": "canonical entity name (e.g. 'Customer'), None if unknown",
    "event": "the decoded event (metadata/key/before/after), None if undecodable",
    "error": "why the message cannot be used (undecodable, schema-invalid), else None",
    "topic": "Kafka topic", "partition": "partition", "offset": "offset",
    "raw": "base64 of the message value when it could not be decoded, else None",
    "schema_id": "registry id of the writer schema, if the framing could be read",
    "body": "optional: the Avro body when it was written with the current schema (kept, not re-encoded)",
}
OPERATION_OF_SYMBOL = {"CREATE": "create", "UPDATE": "update", "DELETE": "delete", "SNAPSHOT": "snapshot"}


def _context(record: SourceRecord) -> dict:
    carried = {k: v for k, v in (record.after or {}).items() if k != "body"}
    return {"record": {"object": record.object, "position": record.position, "operation": record.operation,
                       "before": None, "after": carried,
                       "occurred_at": record.occurred_at.isoformat() if record.occurred_at else None},
            "topic": carried.get("topic"), "partition": carried.get("partition"), "offset": carried.get("offset"),
            "error": carried.get("error"), "payload": carried.get("event"), "raw": carried.get("raw"),
            "problems": []}


class PassThroughTranslator:
    """Canonical events in, queue rows out; same interface as ``pipeline.Translator``."""

    def __init__(self, route: str, sink: str, catalog):
        self.route, self.sink, self.catalog = route, sink, catalog

    def translate(self, records, captured_at: Optional[dt.datetime] = None) -> tuple[list[dict], list[dict]]:
        events, failures = [], []
        for record in records:
            try:
                events.append(self.event_row(record))
            except TerminalError as exc:
                failures.append(self.failure(record, exc))
        return events, failures

    def event_row(self, record: SourceRecord) -> dict:
        carried = record.after or {}
        if carried.get("error"):
            raise TerminalError(carried["error"])
        event, entity = carried.get("event"), carried.get("entity")
        if not isinstance(event, dict) or not entity:
            raise TerminalError("not a canonical event (no decoded payload or entity)")
        try:
            schema = self.catalog.entity(entity)
        except KeyError as exc:
            raise TerminalError(str(exc.args[0])) from None
        meta = event.get("metadata") or {}
        if not meta.get("event_id"):
            raise TerminalError(f"{entity} event without metadata.event_id")
        image = event.get("after") if event.get("after") is not None else event.get("before")
        key = event.get("key")
        if key in (None, "") or not isinstance(image, dict):
            raise TerminalError(f"{entity} event {meta['event_id']} has no business key or no image")
        if str(image.get(schema.key_field)) != str(key):
            raise TerminalError(f"{entity} event {meta['event_id']}: key {key!r} differs from "
                                f"{schema.key_field} {image.get(schema.key_field)!r} of its image")
        operation = OPERATION_OF_SYMBOL.get(meta.get("operation"), None)
        if operation is None:
            raise TerminalError(f"{entity} event {meta['event_id']}: unknown operation {meta.get('operation')!r}")
        # A body written with the current schema is kept as it is (it just decoded with
        # that schema); any other is re-encoded with the current schema, which validates it
        # (decimal scale, aware times) and stores it under the current fingerprint.
        body = carried.get("body")
        if not isinstance(body, bytes):
            body = schema.encode(event)
        else:
            schema.check(event)     # kept as it is, its amounts and times must still fit the schema
        occurred = meta.get("occurred_at")
        return {"event_id": meta["event_id"], "route": self.route, "sink": self.sink, "entity": schema.entity,
                "key": str(key), "operation": operation, "schema_fingerprint": schema.fingerprint, "body": body,
                "correlation_id": meta.get("correlation_id") or meta["event_id"],
                "occurred_at": occurred.timestamp() if isinstance(occurred, dt.datetime) else None}

    def problems(self, record: SourceRecord) -> list[dict]:
        try:
            self.event_row(record)
        except TerminalError as exc:
            return [{"rule": "event", "message": str(exc)}]
        return []

    def failure(self, record: SourceRecord, exc: TerminalError) -> dict:
        carried = record.after or {}
        event = carried.get("event") if isinstance(carried.get("event"), dict) else {}
        return {"stage": "mapping", "reason": str(exc), "entity": carried.get("entity") or "?", "sink": self.sink,
                "operation": record.operation, "key": event.get("key"), "context": _context(record)}
