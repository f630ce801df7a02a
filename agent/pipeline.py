"""Routes: ``Source -> DurableQueue -> Sink``.

Capture (``RouteCapture.run_once``) maps each source record to a canonical event, encodes
it once, and commits the events, the rejected records and the source checkpoint in one
queue transaction (invariant 1); the source is resumed only after that commit
(invariant 2). Delivery (``SinkDelivery``) sends queued events in order and removes only
what the sink confirmed (invariant 3); the queue ignores ids it already holds
(invariant 4); only rejected events leave the order, into the exception queue
(invariant 5). See ``agent.queue`` for the storage side of each invariant.
"""
from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from typing import Optional

from .contracts import ConfigError, DeliveryReport, SourceBatch, SourceRecord, TerminalError, TransientError
from .events import envelope, event_id
from .queue import DurableQueue
from .supervise import RETRY_CAP_S, Backoff

log = logging.getLogger("outpost.pipeline")


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


def retry_exception(queue: DurableQueue, item: dict, translator: Optional[Translator]) -> tuple[bool, str]:
    """Re-queue a parked event; a mapping failure is mapped again with today's config
    (fixed master data, lookups). Returns (requeued, what happened)."""
    if item["stage"] == "file":   # no event was ever built: the fix is a corrected file
        return False, "a rejected file is retried by dropping the corrected file into the inbox again"
    if item["stage"] != "mapping":
        return queue.requeue_exception(item["id"]), "re-queued for delivery"
    if translator is None:
        return False, f"route {item['route']} is no longer configured"
    raw = item["context"]["record"]
    record = SourceRecord(object=raw["object"], operation=raw["operation"], position=raw["position"],
                          after=raw["after"], before=raw["before"],
                          occurred_at=dt.datetime.fromisoformat(raw["occurred_at"]) if raw["occurred_at"] else None)
    events, failures = translator.translate([record])
    if failures:
        queue.refresh_exception(item["id"], failures[0]["reason"], failures[0]["context"])
        return False, f"still failing: {failures[0]['reason']}"
    return queue.requeue_exception(item["id"], events[0]), "mapped again and queued for delivery"


class _MappingFailed(TerminalError):
    def __init__(self, problems):
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


class RouteCapture:
    """Runs one capture pass of a route (called by the scheduler, never concurrently)."""

    def __init__(self, name: str, source, translator: Translator, queue: DurableQueue, stop: threading.Event,
                 on_enqueue=lambda: None):
        self.name, self.source, self.translator, self.queue = name, source, translator, queue
        self.stop, self.on_enqueue = stop, on_enqueue
        self._opened = False
        self.stopped_reason: Optional[str] = None
        self._retry_at = 0.0
        self.backoff = Backoff()

    def run_once(self) -> int:
        """One pass; never raises (the scheduler calls it again): every failure is retried."""
        if self.stopped_reason or time.monotonic() < self._retry_at:
            return 0
        added = 0
        try:
            if self.queue.over_quota():
                self.queue.update_status(self.name, backpressure=True,
                                         capture_state="paused: queue quota reached (events waiting to be delivered)")
                log.warning("route %s: capture paused, the events waiting in the local queue reached its quota",
                            self.name)
                return 0
            if not self._opened:
                self.source.open()
                self._opened = True
            batches = self.source.batches(self.queue.checkpoint(self.name))
            try:
                for batch in batches:
                    added += self._commit(batch)
                    if self.stop.is_set() or self.queue.over_quota():
                        break
            finally:
                batches.close()
        except ConfigError as exc:
            # retrying cannot help: stop this route, keep the others flowing
            self.stopped_reason = str(exc)
            log.error("route %s stopped until the configuration is fixed and the agent restarted: %s",
                      self.name, exc)
            self._note(capture_state="stopped: configuration problem", source_error=str(exc)[:500],
                       source_error_at=time.time())
        except sqlite3.Error as exc:
            # The local queue, not the source: a full disk or a locked file under the state
            # directory. The source stays open; what it yielded is captured again (same ids).
            self._retry_later(f"local queue unavailable: {exc}", "paused: local queue unavailable",
                              close_source=False)
        except TransientError as exc:
            self._retry_later(f"source unavailable: {exc}", "retrying")
        except Exception as exc:   # unknown errors are transient: retried on the next run
            log.exception("route %s: capture failed", self.name)
            self._retry_later(f"capture failed: {type(exc).__name__}: {exc}", "retrying")
        else:
            self.backoff.succeeded()
            self._note(capture_state="ok", source_error=None, backpressure=False, next_attempt_at=None,
                       last_capture_run_at=time.time())
        return added

    def _commit(self, batch: SourceBatch) -> int:
        events, failures = self.translator.translate(batch.records)
        for failure in failures:
            record = failure["context"]["record"]
            # inbound events carry their ids; a captured record gets the id it would have had
            # (also its correlation id), so the line joins the exception queue entry
            meta = (failure["context"].get("payload") or {}).get("metadata") or {}
            ids = meta.get("event_id") or (event_id(self.translator.system, record["object"], record["position"])
                                           if getattr(self.translator, "system", None) else None)
            log.warning("route %s: %s record at %s rejected by mapping: %s", self.name,
                        failure["operation"], record["position"], failure["reason"],
                        extra={"route": self.name, "event_id": ids, "correlation_id": meta.get("correlation_id") or ids})
        status = {"last_capture_at": time.time()} if batch.records else {}
        if batch.progress:
            status["progress"] = batch.progress
        keep = getattr(self.translator, "keep_columns", None)
        rejected = failures + [limit_context(entry, keep) for entry in batch.exceptions]
        added = self.queue.commit_capture(self.name, events, rejected, batch.checkpoint, status)
        if added:
            self.on_enqueue()
        return added

    def _retry_later(self, problem: str, state: str, close_source: bool = True) -> None:
        if close_source:
            self._opened = False
            try:
                self.source.close()
            except Exception:
                log.debug("route %s: closing the source after an error failed", self.name, exc_info=True)
        delay = self.backoff.failed()
        self._retry_at = time.monotonic() + delay
        log.warning("route %s: %s (attempt %d), retrying in %.1fs", self.name, problem, self.backoff.failures, delay)
        self._note(capture_state=f"{state} (attempt {self.backoff.failures})", source_error=problem[:500],
                   source_error_at=time.time(), next_attempt_at=self.backoff.next_attempt_at)

    def _note(self, **status) -> None:
        """Status is for people: failing to record it (full disk) must not stop the route."""
        try:
            self.queue.update_status(self.name, **status)
        except sqlite3.Error as exc:
            log.debug("route %s: status not recorded: %s", self.name, exc)

    def close(self) -> None:
        self._opened = False
        self.source.close()


class SinkDelivery(threading.Thread):
    """Drains one sink's queue in order; backs off while the sink is unreachable."""

    def __init__(self, name: str, sink, queue: DurableQueue, stop: threading.Event, batch_size: int = 500,
                 max_backoff: float = RETRY_CAP_S, stall_after: float = 5.0):
        super().__init__(name=f"deliver-{name}", daemon=True)
        self.sink_name, self.sink, self.queue, self.stop = name, sink, queue, stop
        self.batch_size = batch_size
        self.stall_after = stall_after
        self.wakeup = threading.Event()
        self.connected = False
        self.backoff = Backoff(initial=0.5, cap=max_backoff)
        self._opened = False
        # The worker thread and a synchronous drain must never send the same batch twice.
        self._one_at_a_time = threading.Lock()
        self._in_write: Optional[tuple] = None

    def start(self) -> None:
        super().start()
        threading.Thread(target=self._watch_for_stalls, name=f"watch-{self.sink_name}", daemon=True).start()

    def deliver_once(self) -> Optional[int]:
        """One batch. Returns how many were settled, or None if the sink is unavailable."""
        with self._one_at_a_time:
            return self._deliver_batch()

    def _deliver_batch(self) -> Optional[int]:
        events = self.queue.peek(self.sink_name, self.batch_size)
        if not events:
            return 0
        try:
            if not self._opened:
                self.sink.open()
                self._opened = True
            report = self._write_watched(events)
        except TransientError as exc:
            report = None
            error = str(exc)
        except Exception as exc:   # unknown = transient: the events stay queued
            log.exception("sink %s: write failed", self.sink_name)
            report, error = None, f"{type(exc).__name__}: {exc}"
        if report is None:
            report = DeliveryReport(transient_error=error)
        self.queue.settle(self.sink_name, events, report)
        self.connected = report.transient_error is None
        if report.transient_error:
            return None
        return len(report.delivered) + len(report.rejected)

    def _write_watched(self, events):
        """A sink may wait long for acknowledgements (librdkafka retries by itself, which
        avoids duplicates); meanwhile ``status`` must already say that events are waiting."""
        self._in_write = (time.monotonic(), {e.route for e in events})
        try:
            return self.sink.write(events)
        finally:
            self._in_write = None

    def _watch_for_stalls(self) -> None:
        reported = None
        while not self.stop.wait(1.0):
            current = self._in_write
            if current is None or current is reported or time.monotonic() - current[0] < self.stall_after:
                continue
            reported = current
            self.connected = False
            message = (f"sink {self.sink_name}: no acknowledgement for {self.stall_after:.0f}s, destination "
                       f"unreachable? {self.queue.depth(self.sink_name)} event(s) stay queued")
            log.warning(message)
            for route in current[1]:
                self.queue.update_status(route, sink_error=message)

    def run(self) -> None:
        """Until the agent stops: no error ends this loop (a dead delivery thread would
        leave the agent alive and delivering nothing)."""
        while not self.stop.is_set():
            settled = self._attempt()
            if settled is None:
                delay = self.backoff.failed()
                log.warning("sink %s unavailable, retrying in %.1fs", self.sink_name, delay)
                self.stop.wait(delay)
            elif settled == 0:
                self.backoff.succeeded()
                self.wakeup.wait(1.0)
                self.wakeup.clear()
            else:
                self.backoff.succeeded()

    def _attempt(self) -> Optional[int]:
        """``deliver_once``, with the local queue's own failures (a full disk) reported and
        retried like an unreachable sink. An event the sink acknowledged but the queue
        could not settle is sent again under the same id (consumers de-duplicate)."""
        try:
            return self.deliver_once()
        except Exception as exc:
            self.connected = False
            kind = "local queue unavailable" if isinstance(exc, sqlite3.Error) else "delivery failed"
            log.error("sink %s: %s: %s: %s", self.sink_name, kind, type(exc).__name__, exc,
                      exc_info=not isinstance(exc, sqlite3.Error))
            return None

    def drain(self, timeout: float) -> bool:
        """Deliver the backlog before capture starts; False if the sink is unavailable."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            settled = self._attempt()
            if settled is None:
                return False
            if settled == 0:
                return True
        return self.queue.depth(self.sink_name) == 0

    def close(self) -> None:
        self.sink.close()

