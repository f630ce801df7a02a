"""Capture: one pass of a route, ``Source -> Translator -> DurableQueue``.

Each batch's events, rejected records and source checkpoint commit in one queue
transaction (invariant 1), and the source generator is resumed only after that commit
(invariant 2): resuming is the signal a streaming source acknowledges upstream on.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Optional

from .contracts import ConfigError, SourceBatch, TransientError
from .events import event_id
from .progress import ProgressWatch, describe
from .queue import DurableQueue
from .supervise import Backoff
from .translate import Translator, limit_context

__all__ = ["RouteCapture", "StreamLoop"]

log = logging.getLogger("outpost.capture")


class RouteCapture:
    """Runs one capture pass of a route (called by the scheduler, never concurrently)."""

    def __init__(self, name: str, source, translator: Translator, queue: DurableQueue, stop: threading.Event,
                 on_enqueue=lambda: None, allowed=lambda: True):
        """``allowed()``: whether this agent may capture now (False on the passive agent of
        an HA pair: its source is closed until it becomes active)."""
        self.name, self.source, self.translator, self.queue = name, source, translator, queue
        self.stop, self.on_enqueue, self.allowed = stop, on_enqueue, allowed
        self._opened = False
        self._paused = self._recovering = False      # the stored state says paused / retrying
        self.stopped_reason: Optional[str] = None
        self._retry_at = 0.0
        self.backoff = Backoff()
        self._members = None
        self._watch = ProgressWatch()
        self._last_progress: Optional[dict] = None

    def run_once(self) -> int:
        """One pass; never raises (the scheduler calls it again): every failure is retried."""
        if self.stopped_reason or time.monotonic() < self._retry_at:
            return 0
        if not self.allowed():
            if self._opened:
                self.close()
            return 0
        added = 0
        try:
            if self.queue.over_quota():
                self.queue.update_status(self.name, backpressure=True,
                                         capture_state="paused: queue quota reached (events waiting to be delivered)")
                log.warning("route %s: capture paused, the events waiting in the local queue reached its quota",
                            self.name)
                self._paused = True
                return 0
            if self._paused:
                # said now, not when this pass ends: a long pass must not go on showing "paused"
                self._note(capture_state=self._pass_state(), backpressure=False)
                self._paused = False
            refresh = getattr(self.translator, "refresh_lookups", None)
            if refresh is not None:
                refresh()              # SQL lookups due for a re-read (never read: TransientError)
            if not self._opened:
                self.source.open()
                self._opened = True
            batches = self.source.batches(self.queue.checkpoint(self.name))
            try:
                for batch in batches:
                    added += self._commit(batch)
                    if self.stop.is_set() or self.queue.over_quota() or not self.allowed():
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
            self._recovering = False
            self._note(capture_state=self._pass_state(), source_error=None, backpressure=False,
                       next_attempt_at=None, last_capture_run_at=time.time())
        return added

    def _commit(self, batch: SourceBatch) -> int:
        events, failures = self.translator.translate(batch.records)
        members = self._published_keys()
        if members is not None:
            events = members.screen(events)
        for failure in failures:
            record = failure["context"]["record"]
            # inbound events carry their ids; a captured record gets the id it would have had
            # (also its correlation id), so the line joins the exception queue entry
            meta = (failure["context"].get("payload") or {}).get("metadata") or {}
            ids = meta.get("event_id") or (event_id(self.translator.system, record["object"], record["position"])
                                           if getattr(self.translator, "system", None) else None)
            failure.setdefault("event_id", ids)     # one position, one open entry (DurableQueue)
            log.warning("route %s: %s record at %s rejected by mapping: %s", self.name,
                        failure["operation"], record["position"], failure["reason"],
                        extra={"route": self.name, "event_id": ids, "correlation_id": meta.get("correlation_id") or ids})
        status = {"last_capture_at": time.time()} if batch.records else {}
        if self._recovering:
            # the first commit since a failed pass: the source is back, whatever this pass
            # still has to read (a long one must not go on showing the outage)
            status.update(capture_state=self._pass_state(), source_error=None, next_attempt_at=None)
            self._recovering = False
        if batch.progress:
            status["progress"] = self._progress(batch.progress)
            if batch.progress.get("phase") == "snapshot" and not batch.progress.get("done"):
                status["capture_state"] = "snapshotting"     # a long pass must not read "not run yet"
        keep = getattr(self.translator, "keep_columns", None)
        rejected = failures + [limit_context(entry, keep) for entry in batch.exceptions]
        left_out = self._left_out(batch.records)
        added = self.queue.commit_capture(self.name, events, rejected, batch.checkpoint, status,
                                          **({"filtered": left_out} if left_out else {}))
        if members is not None:
            members.settle(events)
        if added:
            self.on_enqueue()
        return added

    def _pass_state(self) -> str:
        """'ok', or that a snapshot stopped half-way (quota, stop) and resumes next pass."""
        last = self._last_progress
        if last and last.get("phase") == "snapshot" and not last.get("done"):
            return "snapshotting (continues on the next pass)"
        return "ok"

    def _progress(self, progress: dict) -> dict:
        """The source's progress with rate and ETA; logged every few seconds while it runs."""
        now = time.monotonic()
        enriched = self._last_progress = self._watch.enrich(progress, now)
        if self._watch.due(enriched, now):
            log.info("route %s: %s", self.name, describe(enriched), extra={"route": self.name})
        return enriched

    def _left_out(self, records) -> list:
        """(key, business day) of the records the filter kept off the fabric, on routes that
        reconcile: their ledger explains the difference instead of reporting it."""
        facts = getattr(self.translator, "ledger", None)
        if facts is None or getattr(self.translator, "filter", None) is None:
            return []
        from .ledger import day_label
        now = time.time()
        return [(key, day_label(at, facts.zone, now))
                for key, at in filter(None, map(self.translator.left_out, records))]

    def _published_keys(self):
        """The route's record of published keys, while its translator has a filter (a
        reload may add or remove one)."""
        if getattr(self.translator, "filter", None) is None:
            return None
        if self._members is None:
            from .membership import PublishedKeys
            self._members = PublishedKeys(self.queue.state_dir, self.name)
        return self._members

    def _retry_later(self, problem: str, state: str, close_source: bool = True) -> None:
        if close_source:
            self._opened = False
            try:
                self.source.close()
            except Exception:
                log.debug("route %s: closing the source after an error failed", self.name, exc_info=True)
        delay = self.backoff.failed()
        self._retry_at = time.monotonic() + delay
        self._recovering = True
        log.warning("route %s: %s (attempt %d), retrying in %.1fs", self.name, problem, self.backoff.failures, delay)
        self._note(capture_state=f"{state} (attempt {self.backoff.failures})", source_error=problem[:500],
                   source_error_at=time.time(), next_attempt_at=self.backoff.next_attempt_at)

    def _note(self, **status) -> None:
        """Status is for people: failing to record it (full disk) must not stop the route."""
        try:
            self.queue.update_status(self.name, **status)
        except sqlite3.Error as exc:
            log.debug("route %s: status not recorded: %s", self.name, exc)

    def retry_in(self) -> float:
        """Seconds until the next attempt is due (0 when not backing off)."""
        return max(0.0, self._retry_at - time.monotonic())

    def close(self) -> None:
        self._opened = False
        self.source.close()


class StreamLoop(threading.Thread):
    """A streaming route's own loop: passes back to back instead of on a schedule (the
    source returns from a pass after a while even when idle), the route's backoff between
    failures. ``started`` is where the watchdog sees a pass that hangs."""

    IDLE_S = 0.2        # after a pass that returned at once with nothing: never spin hot

    def __init__(self, capture: RouteCapture, stop: threading.Event, started: dict):
        super().__init__(name=f"stream-{capture.name}", daemon=True)
        self.capture, self.stop, self.started = capture, stop, started

    def run(self) -> None:
        name = self.capture.name
        while not self.stop.is_set() and not self.capture.stopped_reason:
            began = time.monotonic()
            self.started[name] = began
            try:
                added = self.capture.run_once()
            finally:
                self.started[name] = None
            wait = self.capture.retry_in()
            if not wait and not added and time.monotonic() - began < self.IDLE_S:
                wait = self.IDLE_S
            if wait:
                self.stop.wait(wait)
