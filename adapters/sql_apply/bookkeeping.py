"""The applier's own tables, written in the apply transaction: the applied-events ledger
(apply-once), the applied row versions (sql_poll echo prevention) and the Debezium
marker row. See docs/inbound.md for the contracts."""
from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa

from adapters.sql_apply import statements as sql
from adapters.sql_poll.source import row_position

__all__ = ["Bookkeeping"]


def _naive(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.timezone.utc).replace(tzinfo=None)


class Bookkeeping:
    def __init__(self, ledger_options, marker_options, applier: str):
        self.metadata, self.ledger, self.rows, self.marker = sql.bookkeeping_tables(ledger_options, marker_options)
        self.applier = applier
        self._stmts: dict[str, tuple] = {}

    def missing(self, conn) -> list[str]:
        inspector = sa.inspect(conn)
        return [t.fullname for t in self.metadata.tables.values() if not inspector.has_table(t.name, schema=t.schema)]

    def applied(self, conn, ids: list[str]) -> set[str]:
        """Which of these events the ledger already holds (applied before: acknowledge only)."""
        done = set()
        for start in range(0, len(ids), 500):
            done |= set(conn.execute(sa.select(self.ledger.c.event_id)
                                     .where(self.ledger.c.event_id.in_(ids[start:start + 500]))).scalars())
        return done

    def record(self, conn, applied: list, touched: dict, now: dt.datetime) -> None:
        """Ledger rows and row versions, in the caller's transaction."""
        conn.execute(sa.insert(self.ledger), [
            {"event_id": e.event_id, "entity": e.entity, "entity_key": e.key[:255],
             "correlation_id": (e.correlation_id or "")[:64], "applied_at": _naive(now)} for e in applied])
        self._record_versions(conn, touched, now)

    def mark(self, conn, now: dt.datetime) -> None:
        """The Debezium marker row, written FIRST in an apply transaction: the debezium
        source then knows the transaction is Outpost's own before its changes arrive."""
        if self.marker is not None:
            stmt, params = self._upsert(conn, self.marker, ["applier"], ["applier", "txn_id", "applied_at"])
            conn.execute(stmt, params({"applier": self.applier, "txn_id": uuid.uuid4().hex, "applied_at": _naive(now)}))

    def _record_versions(self, conn, touched: dict, now: dt.datetime) -> None:
        """(table, pk@cursor) of every row version this transaction wrote, as the sql_poll
        source computes it, so capture of the same table skips exactly these versions."""
        versions = []
        for name, by_key in touched.items():
            plan = next(iter(by_key.values()))[0]
            keys, cursor = list(by_key), plan.target.capture_cursor
            for start in range(0, len(keys), 500):
                stmt = sql.select_by_keys(plan.sa_table, plan.key, [cursor], keys[start:start + 500], False)
                for row in conn.execute(stmt).mappings():
                    key = plan.key_of(row)
                    if key in by_key:
                        versions.append({"object": name, "position": row_position(list(key), row[cursor])[:500],
                                         "event_id": by_key[key][1], "applied_at": _naive(now)})
        if versions:
            stmt, params = self._upsert(conn, self.rows, ["object", "position"],
                                        ["object", "position", "event_id", "applied_at"])
            conn.execute(stmt, [params(v) for v in versions])

    def _upsert(self, conn, table, key, columns):
        if table.name not in self._stmts:
            self._stmts[table.name] = sql.upsert(conn.dialect, table, key, columns)
        return self._stmts[table.name]

    def prune(self, conn, retention_days: float) -> None:
        cutoff = _naive(dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=retention_days)
        for table in (self.ledger, self.rows):
            conn.execute(sa.delete(table).where(table.c.applied_at < cutoff))
