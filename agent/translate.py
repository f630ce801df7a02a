"""Translation, pure: source records -> queue rows (encoded canonical events) and
exception entries. No I/O; the capture loop commits what it returns (``agent.capture``).
"""
from __future__ import annotations

import datetime as dt
from typing import Optional

from .contracts import SourceRecord, TerminalError
from .events import envelope

__all__ = ["Translator", "limit_context"]


def _only(image, columns):
    if not isinstance(image, dict) or columns is None:
        return image
    return {name: value for name, value in image.items() if name in columns}


def _row_context(record: SourceRecord, columns=None) -> dict:
    return {"object": record.object, "position": record.position, "operation": record.operation,
            "before": _only(record.before, columns), "after": _only(record.after, columns),
            "occurred_at": record.occurred_at.isoformat() if record.occurred_at else None}


def limit_context(entry: dict, columns) -> dict:
    """An exception entry from a source (a row that could not be parsed) keeps only the
    mapped columns of the row it carries: the exception queue is not a copy of the ERP."""
    context = entry.get("context")
    if columns is None or not isinstance(context, dict) or not isinstance(context.get("values"), dict):
        return entry
    return {**entry, "context": {**context, "values": _only(context["values"], columns)}}


class Translator:
    """Pure: source records -> (queue rows, exception entries). No I/O.

    ``keep_columns``: what an exception entry keeps of a rejected row (the mapped columns,
    which include the business key); None keeps the whole row (``queue.exception_context:
    full``)."""

    def __init__(self, route: str, sink: str, system: str, mapping, keep_columns=None):
        self.route, self.sink, self.system, self.mapping = route, sink, system, mapping
        self.schema = mapping.schema
        self.keep_columns = keep_columns

    def translate(self, records, captured_at: Optional[dt.datetime] = None) -> tuple[list[dict], list[dict]]:
        captured_at = captured_at or dt.datetime.now(dt.timezone.utc)
        events, failures = [], []
        for record in records:
            try:
                events.append(self.event_row(record, captured_at))
            except TerminalError as exc:
                failures.append(self.failure(record, exc))
        return events, failures

    def _mapped(self, record: SourceRecord) -> tuple[str, Optional[dict], Optional[dict]]:
        """(business key, before, after) of a record, or TerminalError with every problem."""
        after, after_problems = self.mapping.apply(record.after)
        before, before_problems = self.mapping.apply(record.before)
        # The before image of a delete is what must identify the entity; a bad before
        # image of an update is informative only and must not block the change.
        problems = after_problems if record.after is not None else before_problems
        if problems:
            raise _MappingFailed(problems)
        image = after if after is not None else before
        key = image.get(self.schema.key_field) if image else None
        if key in (None, ""):
            raise TerminalError(f"no business key ({self.schema.key_field}) in the mapped record")
        return str(key), (before if not before_problems else None), after

    def event_row(self, record: SourceRecord, captured_at: dt.datetime) -> dict:
        key, before, after = self._mapped(record)
        event = envelope(record, system=self.system, key=key, before=before, after=after,
                         schema_version=self.schema.version, captured_at=captured_at)
        meta = event["metadata"]
        return {"event_id": meta["event_id"], "route": self.route, "sink": self.sink, "entity": self.schema.entity,
                "key": key, "operation": record.operation, "schema_fingerprint": self.schema.fingerprint,
                "body": self.schema.encode(event, prechecked=True), "correlation_id": meta["correlation_id"],
                "occurred_at": record.occurred_at.timestamp() if record.occurred_at else None}

    def problems(self, record: SourceRecord) -> list[dict]:
        """What would stop this record from being published (for whole-file checks).
        Mapping only: what the mapping accepts, the encoder accepts."""
        try:
            self._mapped(record)
        except TerminalError as exc:
            return self.failure(record, exc)["context"]["problems"] or [{"rule": "event", "message": str(exc)}]
        return []

    def failure(self, record: SourceRecord, exc: TerminalError) -> dict:
        problems = [p.as_dict() for p in exc.problems] if isinstance(exc, _MappingFailed) else []
        reason = "; ".join(f"{p['field']}: {p['message']}" for p in problems) if problems else str(exc)
        return {"stage": "mapping", "reason": reason, "entity": self.schema.entity, "sink": self.sink,
                "operation": record.operation,
                "context": {"record": _row_context(record, self.keep_columns), "mapping": self.mapping.describe(),
                            "problems": problems, "system": self.system}}



class _MappingFailed(TerminalError):
    def __init__(self, problems):
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
