"""Translation, pure: source records -> queue rows (encoded canonical events) and
exception entries. No I/O; the capture loop commits what it returns (``agent.capture``).

A route's ``filter`` decides what belongs to its stream. A record whose new image does
not match is not published, unless its previous version did: then it is published as a
delete (a customer turned supplier leaves the Customer stream). Whether the previous
version matched is read from the before image when the source gives a full one (binlog);
otherwise (polling, key-only before images) the delete is *conditional*: the row carries
``IF_PUBLISHED`` and the capture keeps it only if the route published that key before
(``agent.membership``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections import OrderedDict
from typing import Optional

from . import jsontext
from .contracts import SourceRecord, TerminalError
from .events import envelope
from .ledger import LEDGER_KEY
from .mapping import Problem

__all__ = ["Translator", "limit_context", "IF_PUBLISHED"]

IF_PUBLISHED = "if_published"     # a queue row key: keep this delete only if the key was published
_PREMAPPED_MIN = 4096             # payloads identify() keeps for translate() at least


def _only(image, columns):
    if not isinstance(image, dict) or columns is None:
        return image
    return {name: value for name, value in image.items() if name in columns}


def _row_context(record: SourceRecord, columns=None) -> dict:
    return {"object": record.object, "position": record.position, "operation": record.operation,
            "before": _only(record.before, columns), "after": _only(record.after, columns),
            "occurred_at": record.occurred_at.isoformat() if record.occurred_at else None}


def canonical_json(payload: dict) -> str:
    """The text whose sha256 is a record's content identity (``identify``): exactly
    ``json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))``, as it
    always was. Published digests live in sources' ledgers: it must never change."""
    return jsontext.dumps(payload, sort_keys=True, separators=(",", ":"))


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
    full``). ``filter``: a compiled expression over the source row, or None."""

    def __init__(self, route: str, sink: str, system: str, mapping, keep_columns=None, filter=None, ledger=None):
        """``ledger``: an ``agent.ledger.Facts`` when the route reconciles (each row carries its facts)."""
        self.route, self.sink, self.system, self.mapping = route, sink, system, mapping
        self.ledger = ledger
        self.schema = mapping.schema
        self.keep_columns = keep_columns if keep_columns is None or filter is None else \
            frozenset(keep_columns | filter.columns)
        self.filter = filter
        # What identify() made of an after image, for the translate() that follows it:
        # id(image) -> (the image itself, lookup tables then, sequence, (payload, problems)).
        self._premapped: OrderedDict = OrderedDict()
        self._premapped_seq = 0
        self._premapped_cap = _PREMAPPED_MIN
        self._tables = None

    def refresh_lookups(self) -> None:
        self.mapping.refresh_lookups()

    # -- one mapping per after image between identify() and translate() -----------------
    #
    # A source that publishes only what changed (file_drop) asks identify() for a record's
    # key and digest and then hands the same record, with its new position, to translate():
    # the same after image, the same mapping, so the same payload. It is mapped once: the
    # payload identify() computed is kept for that exact object (held, so its id cannot be
    # reused) and taken by the first _mapped() of that object, as long as every lookup table
    # still holds the codes it held then (a refresh swaps them whole; a table shared with
    # another route may be refreshed by that route). Anything else is mapped afresh.

    def _lookup_state(self) -> tuple:
        tables = self._tables
        if tables is None:
            tables = self._tables = tuple(getattr(self.mapping, "lookups", {}).values())
        return tuple([getattr(table, "codes", table) for table in tables])

    def _map_after(self, image) -> tuple:
        """mapping.apply(image), kept for the _mapped() of the same object."""
        mapped = self.mapping.apply(image)
        cache = self._premapped
        self._premapped_seq += 1
        cache.pop(id(image), None)
        cache[id(image)] = (image, self._lookup_state(), self._premapped_seq, mapped)
        while len(cache) > self._premapped_cap:
            cache.popitem(last=False)
        return mapped

    def _apply_after(self, image) -> tuple:
        """mapping.apply(image), or what _map_after() computed for this very object."""
        cache = self._premapped
        entry = cache.pop(id(image), None) if cache else None
        if entry is None or entry[0] is not image:
            return self.mapping.apply(image)
        # older images were never translated (unchanged rows): they never will be
        seq = entry[2]
        while cache and next(iter(cache.values()))[2] < seq:
            cache.popitem(last=False)
        if entry[1] != self._lookup_state():
            return self.mapping.apply(image)
        return entry[3]

    @property
    def columns(self) -> frozenset:
        """The source columns the route reads: its mapping's and its filter's."""
        return self.mapping.columns | (self.filter.columns if self.filter is not None else frozenset())

    def translate(self, records, captured_at: Optional[dt.datetime] = None) -> tuple[list[dict], list[dict]]:
        captured_at = captured_at or dt.datetime.now(dt.timezone.utc)
        if isinstance(records, list):    # identify() keeps up to two batches' payloads
            self._premapped_cap = max(_PREMAPPED_MIN, 2 * len(records))
        events, failures = [], []
        for record in records:
            try:
                row = self.event_row(record, captured_at)
            except TerminalError as exc:
                failures.append(self.failure(record, exc))
                continue
            if row is not None:
                events.append(row)
        return events, failures

    def _admits(self, image) -> Optional[bool]:
        """Whether an image belongs to the route's stream; None when it cannot be told."""
        if image is None:
            return None
        try:
            return bool(self.filter(image))
        except (ValueError, TypeError):     # a key-only before image lacks the filter's columns
            return None

    def _screened(self, record: SourceRecord) -> tuple[Optional[SourceRecord], bool]:
        """The record as the route publishes it (None: not at all) and whether it is a
        conditional delete. Without a filter, the record itself."""
        if self.filter is None:
            return record, False
        before_in = self._admits(record.before)
        if record.after is not None:
            try:
                after_in = bool(self.filter(record.after))
            except (ValueError, TypeError) as exc:
                raise _MappingFailed([Problem("(filter)", "filter", f"{exc} (in {self.filter.text!r})")]) from None
            if after_in:
                if before_in is False and record.operation == "update":   # it joins the stream now
                    return dataclasses.replace(record, operation="create", before=None), False
                return record, False
        elif before_in is not False:
            return record, before_in is None
        if before_in:
            return dataclasses.replace(record, operation="delete", after=None), False
        if before_in is False:
            return None, False
        # did its previous version match? only the route's record of published keys can say
        return dataclasses.replace(record, operation="delete", after=None,
                                   before=record.before if record.before is not None else record.after), True

    def _mapped(self, record: SourceRecord) -> tuple[str, Optional[dict], Optional[dict]]:
        """(business key, before, after) of a record, or TerminalError with every problem."""
        after, after_problems = self._apply_after(record.after) if record.after is not None else (None, [])
        before, before_problems = self.mapping.apply(record.before)
        image = after if after is not None else before
        key = image.get(self.schema.key_field) if image else None
        if record.after is not None and after_problems:
            raise _MappingFailed(after_problems)
        # A bad before image of an update is informative only and must not block the change;
        # a delete needs only its key, or consumers would never learn the row is gone.
        if record.after is None and before_problems and key in (None, ""):
            raise _MappingFailed(before_problems)
        if key in (None, ""):
            raise TerminalError(f"no business key ({self.schema.key_field}) in the mapped record")
        return str(key), (before if not before_problems else None), after

    def event_row(self, record: SourceRecord, captured_at: dt.datetime) -> Optional[dict]:
        """The queue row of a record; None when the route's filter leaves it out."""
        record, conditional = self._screened(record)
        if record is None:
            return None
        try:
            key, before, after = self._mapped(record)
        except TerminalError:
            if conditional:       # a row outside the stream that cannot even be keyed: nothing to undo
                return None
            raise
        event = envelope(record, system=self.system, key=key, before=before, after=after,
                         schema_version=self.schema.version, captured_at=captured_at)
        meta = event["metadata"]
        row = {"event_id": meta["event_id"], "route": self.route, "sink": self.sink, "entity": self.schema.entity,
               "key": key, "operation": record.operation, "schema_fingerprint": self.schema.fingerprint,
               "body": self.schema.encode(event, prechecked=True), "correlation_id": meta["correlation_id"],
               "occurred_at": record.occurred_at.timestamp() if record.occurred_at else None}
        if conditional:
            row[IF_PUBLISHED] = True
        if self.ledger is not None:
            row[LEDGER_KEY] = self.ledger.of(key, after if record.operation != "delete" else None, row["occurred_at"],
                                             record.position, captured_at.timestamp())
        return row

    def left_out(self, record: SourceRecord) -> Optional[tuple[str, Optional[float]]]:
        """(business key, occurred_at) of a record the route's filter keeps off the fabric, else None."""
        if self.filter is None or record.after is None:      # a delete at the source is no filtering
            return None
        try:
            screened, conditional = self._screened(record)
        except TerminalError:
            return None
        # a conditional delete is a row outside the stream too (published before or not)
        if screened is not None and not conditional and screened.operation != "delete":
            return None
        image, _ = self.mapping.apply(record.after or record.before)
        key = image.get(self.schema.key_field) if image else None
        return None if key in (None, "") else (str(key), record.occurred_at.timestamp() if record.occurred_at else None)

    def identify(self, record: SourceRecord) -> Optional[tuple[str, str]]:
        """(business key, digest of the canonical after image), or None when the record does
        not map (the route parks it) or the filter leaves it out: for sources that publish
        only what changed since the route last published that key."""
        screened, conditional = self._screened(record)
        if screened is None or conditional or screened.after is None:
            return None
        after, problems = self._map_after(screened.after)
        key = after.get(self.schema.key_field) if after else None
        if problems or key in (None, ""):
            return None
        return str(key), hashlib.sha256(canonical_json(after).encode()).hexdigest()

    def problems(self, record: SourceRecord) -> list[dict]:
        """What would stop this record from being published (for whole-file checks).
        Mapping only: what the mapping accepts, the encoder accepts."""
        try:
            screened, conditional = self._screened(record)
            if screened is None or conditional:
                return []
            self._mapped(screened)
        except TerminalError as exc:
            return self.failure(record, exc)["context"]["problems"] or [{"rule": "event", "message": str(exc)}]
        return []

    def failure(self, record: SourceRecord, exc: TerminalError) -> dict:
        problems = [p.as_dict() for p in exc.problems] if isinstance(exc, _MappingFailed) else []
        reason = "; ".join(f"{p['field']}: {p['message']}" for p in problems) if problems else str(exc)
        return {"stage": "mapping", "reason": reason, "entity": self.schema.entity, "sink": self.sink,
                "operation": record.operation, "key": self._key_if_mapped(record),
                "context": {"record": _row_context(record, self.keep_columns), "mapping": self.mapping.describe(),
                            "problems": problems, "system": self.system}}

    def _key_if_mapped(self, record: SourceRecord) -> Optional[str]:
        """The business key of a rejected record when its key field mapped (the operator
        looks an entry up by it), else None."""
        try:
            image, _ = self.mapping.apply(record.after if record.after is not None else record.before)
        except Exception:       # the failure is what matters; a key is a courtesy
            return None
        key = (image or {}).get(self.schema.key_field)
        return None if key in (None, "") else str(key)


class _MappingFailed(TerminalError):
    def __init__(self, problems):
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
