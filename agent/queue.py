"""The durable local queue: SQLite in WAL mode with ``synchronous=FULL``.

It is what lets capture go on while the fabric is down. Delivery invariants (DESIGN.md):

1. A source checkpoint is persisted in the same SQLite transaction as the events it
   covers (``commit_capture``): after a crash either both are there or neither is.
2. Upstream positions move only after the events are durable here: sources get their
   checkpoint back from ``checkpoint()``, which only ever returns committed values.
3. A queue row is removed only after the sink confirms it (``settle`` with the sink's
   ``DeliveryReport``): unconfirmed rows stay and are sent again, in order.
4. ``event_id`` is deterministic (``agent.events.event_id``); the queue ignores an id it
   already holds, delivered within ``dedup_retention``, or ever discarded by an operator
   (``agent.seen_ids`` keeps those for good), so re-capture after a crash never
   yields a second event and a replay never brings back what a person threw away.
5. Order is kept per sink in ``seq`` order, hence per entity key. A rejected event is
   the only thing that may reorder: it moves to the exception queue, and is logged,
   counted and visible there. A deferred event (``waiting``) keeps its place: it and
   the later events of its key wait, other keys go past.

One connection per thread (SQLite connections must not be shared); writers take the
lock with ``BEGIN IMMEDIATE`` so two threads never deadlock upgrading a read lock.
"""
from __future__ import annotations

import json
import logging
import operator
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import ledger, seen_ids, slo, waiting
from .health import note_outages
from .contracts import DeliveryReport, QueuedEvent
from .sql_in import rows_in
from .queue_schema import _DDL, CACHE_KIB, SCHEMA_VERSION, dedup_key, migrate  # noqa: F401 (re-exported)

log = logging.getLogger("outpost.queue")

_EVENT_COLUMNS = ("event_id", "route", "sink", "entity", "key", "operation", "schema_fingerprint",
                  "body", "correlation_id", "occurred_at")
# one C call per event instead of a generator over eleven keys (commit_capture builds a
# row per captured event: the generator was a tenth of the queue's CPU)
_event_values = operator.itemgetter(*_EVENT_COLUMNS)
_by_seq = operator.attrgetter("seq")


class DurableQueue:
    def __init__(self, state_dir: Path, *, max_bytes: int = 2 << 30, dedup_retention: float = 7 * 86400,
                 redact: Callable[[str], str] = lambda text: text, track_marks: bool = False):
        """``redact``: applied to every text this queue stores about failures (status, exception
        reasons and contexts): error messages can carry the secrets the logs hide.
        ``track_marks``: keep capture marks for ``covered_checkpoint`` (HA pairs)."""
        self.redact = redact
        self.track_marks = track_marks
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.state_dir / "queue.db"
        self.max_bytes = max_bytes
        self.dedup_retention = dedup_retention
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.executescript(_DDL + waiting.DDL + ledger.DDL + slo.DDL)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        migrate(conn, self.path)
        with self._write() as db:
            seen_ids.ensure(db, time.time())

    # -- connections -------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self):
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass   # closed from its own thread already
            self._connections.clear()
        self._local = threading.local()

    # -- capture side -------------------------------------------------------------------
    def checkpoint(self, route: str) -> Any:
        row = self._conn().execute("SELECT value FROM checkpoints WHERE route=?", (route,)).fetchone()
        return None if row is None else json.loads(row[0])

    def commit_capture(self, route: str, events: Sequence[dict], exceptions: Sequence[dict],
                       checkpoint: Any, status: Optional[dict] = None,
                       filtered: Sequence[tuple[str, str]] = ()) -> int:
        """Invariant 1: events, rejected records and the checkpoint in one transaction.

        ``events`` are dicts with the ``_EVENT_COLUMNS`` keys (and, on routes that reconcile,
        their ``agent.ledger`` facts). Returns how many events were new (ids already queued
        or recently delivered are ignored: invariant 4). ``filtered``: (key, window) of the
        rows the route's filter left out, for the reconciliation ledger.
        """
        now = time.time()
        with self._write() as db:
            taken = {}
            for e in events:        # a batch holding an id twice keeps its first
                key = dedup_key(e["event_id"])
                if key not in taken:
                    taken[key] = e
            # An id already seen (queued, delivered, discarded: agent.seen_ids, whose trigger
            # records each row inserted here) is skipped. A parked event delivered again
            # upstream (Kafka after a crash) stays parked once (a record the mapping rejected
            # carries the id too, and may map now). Asked per batch, not per row: one probe per
            # row inside the INSERT cost a sixth of the commit.
            for (key,) in rows_in(db, f"SELECT id16 FROM {seen_ids.SEEN} WHERE id16 IN ({{}})", list(taken)):
                taken.pop(key, None)       # (a refused id may be in a generation too)
            if taken:
                still_parked = {event_id for (event_id,) in rows_in(
                    db, "SELECT event_id FROM exceptions WHERE event_id IN ({}) AND +status='open'"
                        " AND stage<>'mapping'", [e["event_id"] for e in taken.values()])}
                if still_parked:
                    taken = {key: e for key, e in taken.items() if e["event_id"] not in still_parked}
            if taken:
                db.executemany(
                    "INSERT INTO outbox (id16, event_id, route, sink, entity, key, operation, schema_fingerprint,"
                    " body, correlation_id, occurred_at, enqueued_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(key, *_event_values(e), now) for key, e in taken.items()])
                self._count_pending(db, sum(len(e["body"]) for e in taken.values()))
                facts = [(key, e[ledger.LEDGER_KEY]) for key, e in taken.items() if ledger.LEDGER_KEY in e]
                if facts:
                    ledger.note_captured(db, route, facts)
            added = len(taken)
            if filtered:
                ledger.note_filtered(db, route, filtered)
            parked = self._insert_exceptions(db, [{**x, "route": route} for x in exceptions], now)
            if checkpoint is not None:
                text = json.dumps(checkpoint)
                db.execute("INSERT INTO checkpoints VALUES (?,?,?) ON CONFLICT(route) DO UPDATE"
                           " SET value=excluded.value, updated_at=excluded.updated_at", (route, text, now))
                if self.track_marks:   # AUTOINCREMENT: the last seq ever given, even if since deleted
                    last = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
                    db.execute("INSERT OR REPLACE INTO capture_marks VALUES (?,?,?)", (route, last[0] if last else 0,
                                                                                      text))
            if status is not None:
                self._merge_status(db, route, {**status, "captured_total+": added,
                                               "rejected_total+": parked})
        return added

    def _insert_exceptions(self, db, exceptions, now) -> int:
        """How many entries are new. One source position, one open entry: an entry whose
        event id (the id its record would have had) is already open on its route is the
        same record read again (the overlap after a snapshot, a redelivered message), and
        one an operator discarded (or that was delivered) stays settled."""
        redact = self.redact
        return db.executemany(
            "INSERT INTO exceptions (route, stage, reason, context, event_id, entity, key, sink, operation,"
            " schema_fingerprint, body, correlation_id, occurred_at, created_at)"
            " SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,? WHERE ?5 IS NULL OR (NOT EXISTS"
            " (SELECT 1 FROM exceptions WHERE event_id = ?5 AND route = ?1 AND status = 'open')"
            f" AND (?2 <> 'mapping' OR NOT EXISTS (SELECT 1 FROM {seen_ids.SEEN} WHERE id16 = ?15)))",
            [(x["route"], x["stage"], redact(x["reason"]), redact(json.dumps(x.get("context", {}), default=str)),
              x.get("event_id"),
              x.get("entity"), x.get("key"), x.get("sink"), x.get("operation"), x.get("schema_fingerprint"),
              x.get("body"), x.get("correlation_id"), x.get("occurred_at"), now,
              dedup_key(x["event_id"]) if x.get("event_id") else None) for x in exceptions]).rowcount

    @staticmethod
    def _count_pending(db, change: int) -> None:
        db.execute("UPDATE counters SET value = value + ? WHERE name = 'pending_bytes'", (change,))

    def used_bytes(self) -> int:
        """The whole queue file on disk (waiting events, delivered ids, exceptions, WAL)."""
        conn = self._conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        wal = self.path.with_name(self.path.name + "-wal")
        return pages * conn.execute("PRAGMA page_size").fetchone()[0] + (wal.stat().st_size if wal.exists() else 0)

    def pending_bytes(self) -> int:
        """Bytes of event bodies waiting to be delivered: what the quota limits."""
        return self._conn().execute("SELECT value FROM counters WHERE name='pending_bytes'").fetchone()[0]

    def over_quota(self) -> bool:
        """Only waiting events count: delivered ids and the exception queue never pause capture."""
        return self.pending_bytes() >= self.max_bytes

    def prune(self, now: Optional[float] = None) -> int:
        """Forget ids delivered more than ``dedup_retention`` ago, a generation at a time
        (``agent.seen_ids``); runs on a timer, so it does not depend on anything being
        delivered. Returns how many ids were forgotten."""
        with self._write() as db:
            return seen_ids.prune(db, time.time() if now is None else now, self.dedup_retention)

    def covered_checkpoint(self, route: str, sink: str) -> Any:
        """The newest checkpoint of ``route`` whose events have all left the queue (the sink
        confirmed or rejected them), or None; older marks are forgotten."""
        with self._write() as db:
            oldest = db.execute("SELECT min(seq) FROM outbox WHERE sink=? AND route=?", (sink, route)).fetchone()[0]
            row = db.execute("SELECT seq, value FROM capture_marks WHERE route=? AND seq < ? ORDER BY seq DESC"
                             " LIMIT 1", (route, oldest if oldest is not None else 1 << 62)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM capture_marks WHERE route=? AND seq < ?", (route, row[0]))
        return json.loads(row[1])

    def adopt_checkpoint(self, route: str, checkpoint: Any) -> None:
        """Resume ``route`` from a checkpoint another agent of the pair had delivered."""
        with self._write() as db:
            db.execute("INSERT INTO checkpoints VALUES (?,?,?) ON CONFLICT(route) DO UPDATE"
                       " SET value=excluded.value, updated_at=excluded.updated_at",
                       (route, json.dumps(checkpoint), time.time()))

    # -- delivery side ------------------------------------------------------------------
    def peek(self, sink: str, limit: int) -> list[QueuedEvent]:
        if waiting.has_waiting(self._conn(), sink):
            return [QueuedEvent(*row) for row in waiting.peek_past_waiting(self._conn(), sink, limit)]
        rows = self._conn().execute(
            "SELECT seq, event_id, route, entity, key, schema_fingerprint, body, correlation_id, operation,"
            " enqueued_at, occurred_at FROM outbox WHERE sink=? ORDER BY seq LIMIT ?", (sink, limit)).fetchall()
        return [QueuedEvent(*row) for row in rows]

    def settle(self, sink: str, events: Sequence[QueuedEvent], report: DeliveryReport) -> None:
        """Invariant 3: remove only what the sink confirmed; park what it rejected; keep what
        it deferred (``agent.waiting``)."""
        now = time.time()
        by_id = {e.event_id: e for e in events}
        delivered = [i for i in report.delivered if i in by_id]
        rejected = {i: r for i, r in report.rejected.items() if i in by_id}
        pending = [e.event_id for e in events if e.event_id not in report.delivered and e.event_id not in rejected]
        with self._write() as db:
            rejected.update(waiting.settle_waiting(db, sink, by_id, report, now, self.redact))
            if len(delivered) == len(events) and not waiting.has_waiting(db, sink):
                # The batch is the head of this sink's queue in seq order and seq only
                # grows, so the whole range is exactly the batch: one statement. (Not when
                # events wait: the peek went past them and they lie inside the range.)
                db.execute("DELETE FROM outbox WHERE sink=? AND seq BETWEEN ? AND ?",
                           (sink, min(e.seq for e in events), max(e.seq for e in events)))
            else:
                db.executemany("DELETE FROM outbox WHERE seq=?",
                               [(by_id[i].seq,) for i in delivered + list(rejected)])
            self._count_pending(db, -sum(len(by_id[i].body) for i in delivered + list(rejected)))
            # the reconciliation ledger and the service objectives move with the ack itself
            # (the ids themselves were recorded at capture: agent.seen_ids)
            done = set(delivered)
            ledger.settle(db, [dedup_key(e.event_id) for e in sorted(events, key=_by_seq) if e.event_id in done], now)
            slo.record(db, [by_id[i] for i in delivered], now)
            for event_id, reason in rejected.items():
                e = by_id[event_id]
                log.error("event %s (%s %s, correlation %s) rejected by sink %s, moved to the exception queue: %s",
                          event_id, e.entity, e.key, e.correlation_id, sink, reason,
                          extra={"event_id": event_id, "correlation_id": e.correlation_id, "route": e.route})
            self._insert_exceptions(db, [
                {"route": e.route, "stage": "publish", "reason": reason,
                 "context": {"sink": sink, "seq": e.seq, **report.context.get(e.event_id, {})},
                 "event_id": e.event_id, "entity": e.entity, "key": e.key, "sink": sink, "operation": e.operation,
                 "schema_fingerprint": e.schema_fingerprint, "body": e.body, "correlation_id": e.correlation_id,
                 "occurred_at": e.occurred_at}
                for e, reason in ((by_id[i], r) for i, r in rejected.items())], now)
            if pending and report.transient_error:
                db.executemany("UPDATE outbox SET attempts=attempts+1, last_error=? WHERE seq=?",
                               [(report.transient_error[:500], by_id[i].seq) for i in pending])
            routes = {e.route for e in events}
            for route in routes:
                done = [e for e in events if e.route == route and e.event_id in report.delivered]
                update = {"published_total+": len(done), "dead_lettered_total+": sum(
                    1 for e in events if e.route == route and e.event_id in rejected)}
                if done:
                    update["last_publish_at"] = now
                changes = [e for e in done if e.operation != "snapshot"]   # a snapshot row's age is not latency
                if changes:
                    update["last_publish_latency_s"] = max(0.0, now - max(e.occurred_at or e.enqueued_at
                                                                          for e in changes))
                update["sink_error"] = report.transient_error
                self._merge_status(db, route, update)

    def depth(self, sink: Optional[str] = None) -> int:
        sql, args = ("SELECT count(*) FROM outbox", ()) if sink is None else \
            ("SELECT count(*) FROM outbox WHERE sink=?", (sink,))
        return self._conn().execute(sql, args).fetchone()[0]

    # -- route status -------------------------------------------------------------------
    def _merge_status(self, db, route: str, update: dict) -> None:
        """Fields ending in '+' are counters added to the stored value."""
        row = db.execute("SELECT value FROM route_status WHERE route=?", (route,)).fetchone()
        current = json.loads(row[0]) if row else {}
        note_outages(current, update, time.time())
        for name, value in update.items():
            if name.endswith("+"):
                current[name[:-1]] = current.get(name[:-1], 0) + value
            else:
                current[name] = value
        db.execute("INSERT INTO route_status VALUES (?,?) ON CONFLICT(route) DO UPDATE SET value=excluded.value",
                   (route, self.redact(json.dumps(current, default=str))))

    def status_of(self, route: str) -> dict:
        row = self._conn().execute("SELECT value FROM route_status WHERE route=?", (route,)).fetchone()
        return json.loads(row[0]) if row else {}

    def update_status(self, route: str, **update) -> None:
        with self._write() as db:
            self._merge_status(db, route, update)

    def status(self) -> dict[str, dict]:
        """Per route: stored status plus queue depth and the oldest queued age."""
        conn = self._conn()
        now = time.time()
        result = {route: json.loads(value) for route, value in conn.execute("SELECT route, value FROM route_status")}
        for route, depth, oldest in conn.execute("SELECT route, count(*), min(enqueued_at) FROM outbox GROUP BY route"):
            result.setdefault(route, {}).update(queue_depth=depth, oldest_queued_age_s=round(now - oldest, 3))
        for route, count in conn.execute("SELECT route, count(*) FROM exceptions WHERE status='open' GROUP BY route"):
            result.setdefault(route, {})["open_exceptions"] = count
        for route, fields in waiting.waiting_status(conn, now).items():
            result.setdefault(route, {}).update(fields)
        for (route, entity), bins in slo.histograms(conn).items():     # business objectives (agent.slo)
            result.setdefault(route, {}).setdefault("change_to_ack_bins", {})[entity] = bins
        for route, value in result.items():
            value.setdefault("queue_depth", 0)
            value.setdefault("oldest_queued_age_s", None)
            value.setdefault("open_exceptions", 0)
        return result

    # -- exception queue ----------------------------------------------------------------
    def exceptions(self, status: str = "open", route: Optional[str] = None, limit: int = 100) -> list[dict]:
        from .exception_view import Filter, page
        return page(self._conn(), Filter(status=status, route=route), time.time(), limit=limit)[1]

    def reader(self) -> sqlite3.Connection:
        """This thread's connection, for read-only queries kept elsewhere (``agent.exception_view``)."""
        return self._conn()

    def exception(self, exception_id: int) -> Optional[dict]:
        conn = self._conn()
        cursor = conn.execute("SELECT * FROM exceptions WHERE id=?", (exception_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        item = dict(zip([d[0] for d in cursor.description], row))
        item["context"] = json.loads(item["context"])
        return item

    def requeue_exception(self, exception_id: int, event: Optional[dict] = None) -> bool:
        """Put a parked event (or a re-mapped one) back at the end of its sink's queue. A
        record the mapping rejected that has since been captured with the same id (read
        again after its master data was fixed) is not queued a second time."""
        item = self.exception(exception_id)
        if item is None or item["status"] != "open":
            return False
        event = event or {c: item[c] for c in _EVENT_COLUMNS}
        now = time.time()
        key = dedup_key(event["event_id"])
        with self._write() as db:
            # an event parked by its sink left the outbox, and capture cannot bring its id
            # back while the entry is open: it goes back in whatever the seen ids say
            if db.execute("INSERT INTO outbox (id16, event_id, route, sink, entity, key, operation,"
                          " schema_fingerprint, body, correlation_id, occurred_at, enqueued_at)"
                          " SELECT ?,?,?,?,?,?,?,?,?,?,?,? WHERE ? <> 'mapping'"
                          f" OR NOT EXISTS (SELECT 1 FROM {seen_ids.SEEN} WHERE id16=?1)",
                          (key, *(event[c] for c in _EVENT_COLUMNS), now, item["stage"])).rowcount:
                self._count_pending(db, len(event["body"]))
            db.execute("UPDATE exceptions SET status='retried', resolved_at=? WHERE id=?", (now, exception_id))
            # a rejection fixed and sent again no longer counts against the success ratio
            self._merge_status(db, item["route"], {"recovered_total+": 1})
        return True

    def discard_exception(self, exception_id: int) -> bool:
        """Never send it; its event id stays refused for good (an upstream replay or a
        consumer-group reset must not bring it back), even after ``purge_exceptions``."""
        with self._write() as db:
            done = db.execute("UPDATE exceptions SET status='discarded', resolved_at=? WHERE id=? AND status='open'",
                              (time.time(), exception_id)).rowcount == 1
            event_id = db.execute("SELECT event_id FROM exceptions WHERE id=?", (exception_id,)).fetchone()
            if done and event_id and event_id[0]:
                db.execute("INSERT OR IGNORE INTO refused VALUES (?)", (dedup_key(event_id[0]),))
            return done

    def purge_exceptions(self, older_than: float, now: Optional[float] = None) -> int:
        """Delete retried and discarded entries resolved more than ``older_than`` seconds
        ago (their rows may hold personal data); open entries are never purged."""
        cutoff = (time.time() if now is None else now) - older_than
        with self._write() as db:
            return db.execute("DELETE FROM exceptions WHERE status IN ('retried', 'discarded') AND resolved_at < ?",
                              (cutoff,)).rowcount

    def refresh_exception(self, exception_id: int, reason: str, context: dict) -> None:
        """A retry that failed again: keep it open with what went wrong this time."""
        with self._write() as db:
            db.execute("UPDATE exceptions SET reason=?, context=? WHERE id=?",
                       (self.redact(reason), self.redact(json.dumps(context, default=str)), exception_id))

    def count_exceptions(self, status: str = "open") -> int:
        return self._conn().execute("SELECT count(*) FROM exceptions WHERE status=?", (status,)).fetchone()[0]
