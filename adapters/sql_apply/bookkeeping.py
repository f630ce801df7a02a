"""The applier's own tables, written in the apply transaction: the applied-events ledger
(apply-once), the applied row versions (sql_poll echo prevention), the last applied change
per entity key (no stale overwrite) and the marker row (Debezium and binlog echo
prevention). See docs/inbound.md for the contracts."""
from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa

from adapters.sql_apply import statements as sql
from adapters.sql_apply.ordering import Stamp
from adapters.sql_poll.source import row_position

__all__ = ["Bookkeeping"]


def _naive(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.timezone.utc).replace(tzinfo=None)


class Bookkeeping:
    def __init__(self, ledger_options, marker_options, applier: str):
        self.metadata, self.ledger, self.rows, self.keys, self.marker = sql.bookkeeping_tables(ledger_options,
                                                                                              marker_options)
        self.applier = applier
        self._stmts: dict[str, tuple] = {}

    def missing(self, conn) -> list[str]:
        inspector = sa.inspect(conn)
        return [t.fullname for t in self.metadata.tables.values() if not inspector.has_table(t.name, schema=t.schema)]

    def applied(self, conn, ids: list[str]) -> set[str]:
        """Which of these events the ledger already holds (applied before: acknowledge only)."""
        return {row["event_id"] for row in sql.rows_by_keys(conn, self.ledger, ["event_id"], [], [(i,) for i in ids],
                                                            False)}

    def last_applied(self, conn, keys: set, lock: bool) -> dict[tuple, Stamp]:
        """(entity, key) -> the stamp of the change applied last for it, read ``FOR UPDATE``
        where the database can (so a concurrent applier cannot interleave)."""
        c, columns = self.keys.c, ["event_id", "version", "occurred_us", "captured_us"]
        if conn.dialect.name == "postgresql":
            rows = sql.rows_by_keys(conn, self.keys, ["entity", "entity_key"], columns,
                                    sorted((entity, key[:255]) for entity, key in keys), lock)
        else:       # the entity's IN list, which MariaDB's range optimizer takes as it is
            by_entity: dict[str, list] = {}
            for entity, key in sorted(keys):
                by_entity.setdefault(entity, []).append(key[:255])
            rows = []
            for entity, names in by_entity.items():
                for start in range(0, len(names), 500):
                    stmt = sa.select(c.entity, c.entity_key, *[c[n] for n in columns]).where(
                        c.entity == entity, c.entity_key.in_(names[start:start + 500]))
                    rows += conn.execute(stmt.with_for_update() if lock else stmt).mappings()
        return {(row["entity"], row["entity_key"]): Stamp(row["event_id"], row["version"], row["occurred_us"],
                                                         row["captured_us"]) for row in rows}

    def record(self, conn, applied: list, touched: dict, stamps: dict, now: dt.datetime) -> None:
        """Ledger rows, row versions and each key's last applied change, in the caller's transaction."""
        applied_at = _naive(now)      # once per transaction, not per row
        sql.insert_rows(conn, self.ledger, [
            {"event_id": e.event_id, "entity": e.entity, "entity_key": e.key[:255],
             "correlation_id": (e.correlation_id or "")[:64], "applied_at": applied_at} for e in applied])
        self._record_versions(conn, touched, applied_at)
        sql.insert_rows(conn, self.keys, [       # one row per key: ``stamps`` is keyed by it
            {"entity": entity, "entity_key": key[:255], "event_id": s.event_id, "version": s.version,
             "occurred_us": s.occurred_us, "captured_us": s.captured_us, "applied_at": applied_at}
            for (entity, key), s in stamps.items()], ["entity", "entity_key"])

    def mark(self, conn, now: dt.datetime) -> None:
        """The Debezium marker row, written FIRST in an apply transaction: the debezium
        source then knows the transaction is Outpost's own before its changes arrive."""
        if self.marker is not None:
            stmt, params = self._upsert(conn, self.marker, ["applier"], ["applier", "txn_id", "applied_at"])
            conn.execute(stmt, params({"applier": self.applier, "txn_id": uuid.uuid4().hex, "applied_at": _naive(now)}))

    def _record_versions(self, conn, touched: dict, applied_at: dt.datetime) -> None:
        """(table, pk@cursor) of every row version this transaction wrote, as the sql_poll
        source computes it, so capture of the same table skips exactly these versions."""
        versions = []
        for name, by_key in touched.items():
            plan = next(iter(by_key.values()))[0]
            keys, cursor = list(by_key), plan.target.capture_cursor
            for row in sql.rows_by_keys(conn, plan.sa_table, plan.key, [cursor], keys, False):
                key = plan.key_of(row)
                if key in by_key:       # the position as sql_poll reads the row: the key as stored
                    stored = [row[k] for k in plan.key]
                    versions.append({"object": name, "position": row_position(stored, row[cursor])[:500],
                                     "event_id": by_key[key][1], "applied_at": applied_at})
        sql.insert_rows(conn, self.rows, versions, ["object", "position"])   # one per row written

    def _upsert(self, conn, table, key, columns):
        if table.name not in self._stmts:
            self._stmts[table.name] = sql.upsert(conn.dialect, table, key, columns)
        return self._stmts[table.name]

    def prune(self, conn, retention_days: float) -> None:
        cutoff = _naive(dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=retention_days)
        for table in (self.ledger, self.rows):
            conn.execute(sa.delete(table).where(table.c.applied_at < cutoff))
