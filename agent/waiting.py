"""Deferred events in the durable queue: they keep their place, and wait.

A sink defers an event it cannot deliver *yet* (``contracts.Deferral``: the applier's parent
row has not arrived). The event stays in ``outbox`` in its seq order; a row in ``waiting``
says why, since when and when it is due again. Until then ``peek`` skips it and the later
events of its key (per-key order, invariant 5), while other keys flow. It is due again at
once when a batch ``provided`` what it waits for, else after a growing delay; past its
bound it becomes a rejection. Functions of the caller's connection: the queue owns the
transactions.
"""
from __future__ import annotations

import time
from typing import Callable

from .contracts import DeliveryReport
from .sql_in import rows_in

__all__ = ["DDL", "has_waiting", "peek_past_waiting", "settle_waiting", "waiting_status"]

DDL = """
CREATE TABLE IF NOT EXISTS waiting (
    seq INTEGER PRIMARY KEY, sink TEXT NOT NULL, route TEXT NOT NULL, entity TEXT NOT NULL, key TEXT NOT NULL,
    reason TEXT NOT NULL, waits_for TEXT, since REAL NOT NULL, due REAL NOT NULL, attempts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS waiting_by_key ON waiting (sink, entity, key, seq);
CREATE INDEX IF NOT EXISTS waiting_for ON waiting (sink, waits_for);
"""
# Offered again when what it waits for was provided, else after these (then every 30 s):
# re-checking many waiting events often would starve the events behind them.
RECHECK_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_COLUMNS = "seq, event_id, route, entity, key, schema_fingerprint, body, correlation_id, operation, enqueued_at, occurred_at"


def has_waiting(db, sink: str) -> bool:
    return db.execute("SELECT 1 FROM waiting WHERE sink=? LIMIT 1", (sink,)).fetchone() is not None


def peek_past_waiting(db, sink: str, limit: int) -> list[tuple]:
    """Outbox rows of ``sink`` in seq order without those that wait (not due yet) and
    without the later events of their keys."""
    return db.execute(
        f"SELECT {_COLUMNS} FROM outbox o WHERE sink=? AND NOT EXISTS (SELECT 1 FROM waiting w"
        " WHERE w.sink=o.sink AND w.entity=o.entity AND w.key=o.key AND w.seq <= o.seq AND w.due > ?)"
        " ORDER BY seq LIMIT ?", (sink, time.time(), limit)).fetchall()


def settle_waiting(db, sink: str, by_id: dict, report: DeliveryReport, now: float,
                   redact: Callable[[str], str]) -> dict[str, str]:
    """Record the batch's deferrals; one that waited past its bound becomes a rejection
    (returned, and added to ``report.rejected`` so observers count it); settled events leave
    ``waiting``; waits for what the batch ``provided`` are due now."""
    deferred = {i: d for i, d in report.deferred.items()
                if i in by_id and i not in report.delivered and i not in report.rejected}
    if not deferred and not has_waiting(db, sink):
        return {}
    known = {seq: (since, attempts) for seq, since, attempts in rows_in(
        db, "SELECT seq, since, attempts FROM waiting WHERE seq IN ({})", [by_id[i].seq for i in deferred])}
    expired, waits = {}, []
    for event_id, deferral in deferred.items():
        e = by_id[event_id]
        since, attempts = known.get(e.seq, (now, 0))
        if now - since >= deferral.max_wait_s:
            expired[event_id] = f"{deferral.reason} (waited {now - since:.0f}s)"
        else:
            waits.append((e.seq, sink, e.route, e.entity, e.key, redact(deferral.reason)[:500], deferral.waits_for,
                          since, now + RECHECK_S[min(attempts, len(RECHECK_S) - 1)], attempts + 1))
    db.executemany("INSERT OR REPLACE INTO waiting VALUES (?,?,?,?,?,?,?,?,?,?)", waits)
    gone = [(e.seq,) for i, e in by_id.items() if i in report.delivered or i in report.rejected or i in expired]
    db.executemany("DELETE FROM waiting WHERE seq=?", gone)
    db.executemany("UPDATE waiting SET due=? WHERE sink=? AND waits_for=? AND due>?",
                   [(now, sink, token, now) for token in report.provided])
    report.rejected.update(expired)
    return expired


def waiting_status(db, now: float) -> dict[str, dict]:
    """Per route: how many events wait, the oldest wait and its reason (for ``status``)."""
    return {route: {"waiting": count, "oldest_waiting_s": round(now - since, 1), "waiting_reason": reason}
            for route, count, since, reason in db.execute(
                "SELECT route, count(*), min(since), (SELECT reason FROM waiting o WHERE o.route=w.route"
                " ORDER BY since, seq LIMIT 1) FROM waiting w GROUP BY route")}
