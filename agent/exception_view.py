"""Reading the exception queue for people: totals, pages, filters, groups, a summary.

Read-only SQL over the queue's ``exceptions`` table, given a connection (``DurableQueue
.reader()``), so ``queue list``, ``status``, ``/healthz`` and the page share one reading.
Entries whose route, stage and reason are the same are one problem seen many times
(2,999 rows with the same unknown legal entity): ``groups`` counts them as one line.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Optional

__all__ = ["Filter", "page", "groups", "summary", "describe_summary"]

_COLUMNS = ("id", "route", "stage", "entity", "key", "reason", "created_at", "status")


@dataclass(frozen=True)
class Filter:
    status: str = "open"
    route: Optional[str] = None
    reason: Optional[str] = None             # a part of the reason, case-insensitive
    older_than: Optional[float] = None       # seconds since the entry was made

    def where(self, now: float) -> tuple[str, list]:
        sql, args = ["status = ?"], [self.status]
        if self.route:
            sql.append("route = ?")
            args.append(self.route)
        if self.reason:
            sql.append("instr(lower(reason), lower(?)) > 0")
            args.append(self.reason)
        if self.older_than is not None:
            sql.append("created_at <= ?")
            args.append(now - self.older_than)
        return " AND ".join(sql), args


def page(conn: sqlite3.Connection, where: Filter, now: float, limit: int = 100, offset: int = 0
         ) -> tuple[int, list[dict]]:
    """(how many entries match, the entries of this page in id order)."""
    sql, args = where.where(now)
    total = conn.execute(f"SELECT count(*) FROM exceptions WHERE {sql}", args).fetchone()[0]
    rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM exceptions WHERE {sql} ORDER BY id LIMIT ? OFFSET ?",
                        (*args, limit, offset)).fetchall()
    return total, [dict(zip(_COLUMNS, row)) for row in rows]


def groups(conn: sqlite3.Connection, where: Filter, now: float, limit: Optional[int] = None) -> list[dict]:
    """One line per (route, stage, reason), the largest first, with the ids it spans."""
    sql, args = where.where(now)
    rows = conn.execute(
        "SELECT count(*), route, stage, reason, min(id), max(id), min(created_at), count(key) FROM exceptions"
        f" WHERE {sql} GROUP BY route, stage, reason ORDER BY count(*) DESC, min(id) LIMIT ?",
        (*args, -1 if limit is None else limit)).fetchall()
    return [{"count": count, "route": route, "stage": stage, "reason": reason, "first_id": first, "last_id": last,
             "oldest_at": oldest, "keyed": keyed}
            for count, route, stage, reason, first, last, oldest, keyed in rows]


def summary(conn: sqlite3.Connection, now: float, top: int = 3) -> dict:
    """The open entries: how many, the oldest's age, the most frequent reasons."""
    count, oldest = conn.execute("SELECT count(*), min(created_at) FROM exceptions WHERE status='open'").fetchone()
    return {"count": count, "oldest_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
            "top_reasons": [{k: g[k] for k in ("count", "route", "stage", "reason")}
                            for g in groups(conn, Filter(), now, limit=top)] if count else []}


def age_text(seconds: float) -> str:
    return (f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} days")


def describe_summary(found: dict) -> Optional[str]:
    """One line for health (None when nothing is open): what a person must look at."""
    if not found or not found.get("count"):
        return None
    reasons = "; ".join(f"{g['count']:,} \u00d7 {g['reason']} (route {g['route']})" for g in found["top_reasons"])
    return (f"{found['count']:,} open exception(s), the oldest {age_text(found['oldest_age_s'] or 0)} old"
            + (f": {reasons}" if reasons else "") + " (outpost queue list; fix the data, then outpost queue retry)")
