"""The published-side ledger of reconciliation: what the fabric acknowledged, per route and window.

Reconciliation never consumes the fabric (docs/reconciliation.md): it compares the source
with this record, kept in the state directory's ``queue.db`` and written in the queue's own
transactions, so it can never disagree with what the queue settled:

- ``commit_capture`` notes each event's *facts* (business key, window, exact sums of its
  money fields, source position) in ``ledger_pending``, only for the events it really queued;
- ``settle`` moves the facts of what the sink confirmed into ``ledger_keys`` (the newest
  acknowledged version of each key: its window, sums, position) and ``ledger_windows``
  (count and sums per window, decimal text, never a float). A later version of a key moves
  it out of its old window; a delete takes it out;
- rows the route's filter left out are noted per window in ``ledger_filtered``, so a
  difference they cause is explained rather than reported.

Pure helpers (``Facts``, ``day_label``, ``add_sums``) and the SQL hooks the queue calls
(``note_captured``, ``note_filtered``, ``settle``) live here; ``agent.queue`` only calls them.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Mapping, Optional, Sequence
from zoneinfo import ZoneInfo

from .contracts import AMOUNTS
from .sql_in import rows_in

__all__ = ["DDL", "Facts", "day_label", "add_sums", "sums_text", "sums_of", "note_captured", "note_filtered",
           "settle", "LEDGER_KEY"]

LEDGER_KEY = "ledger"      # the queue-row key carrying an event's facts (not a stored outbox column)

DDL = """
CREATE TABLE IF NOT EXISTS ledger_pending (id16 BLOB PRIMARY KEY, route TEXT NOT NULL, key TEXT NOT NULL,
    window TEXT NOT NULL, sums TEXT NOT NULL, position TEXT, deleted INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_keys (route TEXT NOT NULL, key TEXT NOT NULL, window TEXT NOT NULL,
    sums TEXT NOT NULL, position TEXT, acked_at REAL NOT NULL, PRIMARY KEY (route, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_keys_by_window ON ledger_keys (route, window);
CREATE TABLE IF NOT EXISTS ledger_windows (route TEXT NOT NULL, window TEXT NOT NULL, count INTEGER NOT NULL,
    sums TEXT NOT NULL, PRIMARY KEY (route, window)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_filtered (route TEXT NOT NULL, key TEXT NOT NULL, window TEXT NOT NULL,
    PRIMARY KEY (route, key)) WITHOUT ROWID;
"""


def day_label(instant: Optional[float], zone: ZoneInfo, fallback: float) -> str:
    """The business day (YYYY-MM-DD in ``zone``) of a change: its ``occurred_at``, else
    when Outpost captured it (a source without change times)."""
    moment = dt.datetime.fromtimestamp(instant if instant is not None else fallback, dt.timezone.utc)
    return moment.astimezone(zone).date().isoformat()


def sums_text(sums: Mapping[str, Decimal]) -> str:
    """Exact decimal text; ``Decimal(str(d))`` gives the same digits back."""
    return json.dumps({name: str(value) for name, value in sorted(sums.items())}, separators=(",", ":"))


def sums_of(text: str) -> dict[str, Decimal]:
    return {name: Decimal(value) for name, value in json.loads(text).items()}


def add_sums(total: dict[str, Decimal], more: Mapping[str, Decimal], sign: int = 1) -> dict[str, Decimal]:
    result = dict(total)
    for name, value in more.items():
        # exact: the default context would round a sum beyond 28 digits
        result[name] = AMOUNTS.add(result.get(name, Decimal(0)), AMOUNTS.multiply(sign, value))
    return result


@dataclass(frozen=True)
class Facts:
    """What the ledger needs of one route's events: the zone of its business days and the
    money fields (canonical decimal fields) to sum. Pure."""

    zone: ZoneInfo
    money_fields: tuple[str, ...]

    def of(self, key: str, after: Optional[dict], occurred_at: Optional[float], position: str,
           captured_at: float) -> dict:
        sums = {} if after is None else {f: after[f] for f in self.money_fields if after.get(f) is not None}
        return {"key": key, "window": day_label(occurred_at, self.zone, captured_at), "sums": sums_text(sums),
                "position": position, "deleted": after is None}


def note_captured(db, route: str, rows: Sequence[tuple[bytes, dict]]) -> None:
    """Facts of the events just inserted, in the capture transaction. The queue passes only
    the events it took: an id it refused (already delivered, parked) leaves no facts behind."""
    db.executemany(
        "INSERT INTO ledger_pending VALUES (?,?,?,?,?,?,?) ON CONFLICT(id16) DO NOTHING",
        [(key, route, f["key"], f["window"], f["sums"], f["position"], int(f["deleted"])) for key, f in rows])


def note_filtered(db, route: str, left_out: Iterable[tuple[str, str]]) -> None:
    """Keys (with their window) the route's filter kept off the fabric, newest window wins."""
    db.executemany("INSERT INTO ledger_filtered VALUES (?,?,?) ON CONFLICT(route, key) DO UPDATE"
                   " SET window=excluded.window", [(route, key, window) for key, window in left_out])


def settle(db, delivered_keys: Sequence[bytes], now: float) -> None:
    """In the settle transaction: the confirmed events' facts become the ledger (in seq order,
    so the newest version of a key wins). Worked out per batch in memory, then written once
    per key and once per window: per event it was four statements, twice the settle cost."""
    if not delivered_keys or db.execute("SELECT 1 FROM ledger_pending LIMIT 1").fetchone() is None:
        return      # no route reconciles, or nothing of theirs waits: one cheap look per batch
    found = {row[0]: row[1:] for row in rows_in(
        db, "SELECT id16, route, key, window, sums, position, deleted FROM ledger_pending WHERE id16 IN ({})",
        list(delivered_keys))}
    if not found:
        return      # a route without reconciliation, or Reconciliation events themselves
    facts = [found[i] for i in delivered_keys if i in found]
    current: dict[tuple[str, str], Optional[tuple]] = {}
    for route in {f[0] for f in facts}:
        keys = sorted({f[1] for f in facts if f[0] == route})
        for key, window, sums in rows_in(db, "SELECT key, window, sums FROM ledger_keys WHERE route=? AND key IN"
                                             " ({})", keys, (route,)):
            current[(route, key)] = (window, sums, None)
    changes: dict[tuple[str, str], list] = {}        # (route, window) -> [count change, sums change]
    touched = set()
    for route, key, window, sums, position, deleted in facts:
        old = current.get((route, key))
        if old is not None:
            change = changes.setdefault((route, old[0]), [0, {}])
            change[0] -= 1
            change[1] = add_sums(change[1], sums_of(old[1]), -1)
        current[(route, key)] = None if deleted else (window, sums, position)
        touched.add((route, key))
        if not deleted:
            change = changes.setdefault((route, window), [0, {}])
            change[0] += 1
            change[1] = add_sums(change[1], sums_of(sums))
    gone = [k for k in touched if current[k] is None]
    kept = [(*k, *current[k], now) for k in touched if current[k] is not None]
    db.executemany("DELETE FROM ledger_keys WHERE route=? AND key=?", gone)
    db.executemany("INSERT INTO ledger_keys VALUES (?,?,?,?,?,?) ON CONFLICT(route, key) DO UPDATE SET"
                   " window=excluded.window, sums=excluded.sums, position=excluded.position,"
                   " acked_at=excluded.acked_at", kept)
    if db.execute("SELECT 1 FROM ledger_filtered LIMIT 1").fetchone() is not None:   # a key back in the stream
        db.executemany("DELETE FROM ledger_filtered WHERE route=? AND key=?", [k[:2] for k in kept])
    for (route, window), (count, sums) in changes.items():
        row = db.execute("SELECT count, sums FROM ledger_windows WHERE route=? AND window=?",
                         (route, window)).fetchone()
        total, held = (row[0], sums_of(row[1])) if row else (0, {})
        db.execute("INSERT INTO ledger_windows VALUES (?,?,?,?) ON CONFLICT(route, window) DO UPDATE"
                   " SET count=excluded.count, sums=excluded.sums",
                   (route, window, total + count, sums_text(add_sums(held, sums))))
    db.executemany("DELETE FROM ledger_pending WHERE id16=?", [(i,) for i in delivered_keys if i in found])


# ---- reading it (reconciliation runs) -----------------------------------------------

def published_totals(conn, route: str, window: Optional[str]) -> tuple[int, dict[str, Decimal]]:
    """Count and sums of what was acknowledged in ``window`` (None: every window)."""
    sql, args = "SELECT count, sums FROM ledger_windows WHERE route=?", [route]
    if window is not None:
        sql, args = sql + " AND window=?", args + [window]
    count, sums = 0, {}
    for n, text in conn.execute(sql, args):
        count, sums = count + n, add_sums(sums, sums_of(text))
    return count, sums


def published_keys(conn, route: str, window: Optional[str]) -> dict[str, tuple[dict[str, Decimal], str, str]]:
    """key -> (sums, source position, window) of the newest acknowledged version."""
    sql, args = "SELECT key, sums, position, window FROM ledger_keys WHERE route=?", [route]
    if window is not None:
        sql, args = sql + " AND window=?", args + [window]
    return {key: (sums_of(text), position, w) for key, text, position, w in conn.execute(sql, args)}


def window_of_keys(conn, route: str, keys: Iterable[str]) -> dict[str, str]:
    """The window the ledger holds each of ``keys`` in (keys it does not hold are left out)."""
    return dict(rows_in(conn, "SELECT key, window FROM ledger_keys WHERE route=? AND key IN ({})",
                        sorted(set(keys)), (route,)))


def filtered_keys(conn, route: str, window: Optional[str]) -> set[str]:
    sql, args = "SELECT key FROM ledger_filtered WHERE route=?", [route]
    if window is not None:
        sql, args = sql + " AND window=?", args + [window]
    return {key for (key,) in conn.execute(sql, args)}
