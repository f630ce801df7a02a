"""The source side of reconciliation for ``sql_poll``: aggregates, window rows and key digests.

Every query is SQLAlchemy Core with bound parameters, one short transaction each, on the
source's own reflected table, so a window means what polling means: rows whose cursor
column falls in it, soft-deleted rows left out.

- ``totals``: COUNT and SUM of each mapped money column in one aggregate query. SQLite has no
  exact decimal arithmetic (its SUM of a NUMERIC column is a float), so there the column is
  streamed and summed in Python as ``Decimal``: never a float, on any engine.
- ``rows``: the window's rows, paged on the primary key (``rows_per_query`` at a time), for
  the key-level comparison done only when the totals differ.
- ``digest`` / ``keys_between`` / ``existing``: the key-set comparison that finds hard
  deletes (``agent.reconcile_deletes``). ``digest`` is COUNT plus the sum of a 32-bit hash of
  each key's text computed by the database (md5 on PostgreSQL and MariaDB, a registered
  function on SQLite), so a range that did not change costs one aggregate query.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator, Mapping, Optional, Sequence

import sqlalchemy as sa

from agent.contracts import AMOUNTS

from .keyset import decode_value, keyset_after, to_utc

__all__ = ["SqlPollReconciler", "key_hash"]


def key_hash(value: Any) -> int:
    """The 32-bit hash of a key's text the database computes in ``digest`` (first 8 hex digits of md5)."""
    return int(hashlib.md5(str(value).encode("utf-8")).hexdigest()[:8], 16)


class SqlPollReconciler:
    hash_key = staticmethod(key_hash)       # what ``digest`` sums, for the published side

    def __init__(self, source, rows_per_query: int = 5000):
        source.open()
        self.source, self.rows_per_query = source, rows_per_query
        self.object = source.object
        self.table, self.pk = source._table, source._pk
        self.dialect = source._engine.dialect.name
        self.queries = 0          # what the load bound and the benchmark count
        self._engine = source._engine
        if self.dialect == "sqlite":
            # a connection of its own with the hash function registered (pooled ones lack it)
            self._engine = sa.create_engine(source._url, poolclass=sa.pool.NullPool)
            sa.event.listen(self._engine, "connect", lambda dbapi, _: dbapi.create_function(
                "outpost_h32", 1, key_hash, deterministic=True))

    def close(self) -> None:
        if self._engine is not self.source._engine:
            self._engine.dispose()

    # -- windows -------------------------------------------------------------------------
    def _cursor_bound(self, moment: datetime) -> Any:
        """An aware UTC instant in the form the cursor column stores (naive: the source's zone)."""
        s = self.source
        value = moment if s._aware else moment.astimezone(s.zone).replace(tzinfo=None)
        return s._bind(value)

    def _where(self, start: Optional[datetime], end: Optional[datetime]) -> list:
        s, conds = self.source, []
        if start is not None or end is not None:
            if s.kind != "timestamp":
                raise ValueError(f"sql_poll {s.object}: a day window needs a timestamp cursor column; "
                                 "reconcile this route with --window all")
            conds += [s._ck >= self._cursor_bound(start), s._ck < self._cursor_bound(end)]
        soft = s.spec.soft_delete
        if soft is not None:
            column = self.table.c[soft.column]
            conds.append(column.is_(None) if soft.not_null else sa.or_(column.is_(None), column != soft.value))
        return conds

    def totals(self, start: Optional[datetime], end: Optional[datetime],
               columns: Mapping[str, str]) -> tuple[int, dict[str, Decimal]]:
        """(rows, {field: exact sum of its column}) of the window."""
        conds = self._where(start, end)
        if self.dialect == "sqlite":
            return self._streamed_totals(conds, columns)
        aggregates = [sa.func.count()] + [sa.func.sum(self.table.c[c]) for c in columns.values()]
        row = list(self._fetch(sa.select(*aggregates).select_from(self.table).where(*conds))[0].values())
        return int(row[0]), {f: Decimal(str(v)) if v is not None else Decimal(0) for f, v in zip(columns, row[1:])}

    def _streamed_totals(self, conds: list, columns: Mapping[str, str]) -> tuple[int, dict[str, Decimal]]:
        count, sums = 0, {f: Decimal(0) for f in columns}
        for rows in self._pages(conds, [self.table.c[c] for c in columns.values()]):
            count += len(rows)
            for row in rows:
                for field, column in columns.items():
                    if row[column] is not None:       # str() of what SQLite stored: its own digits
                        sums[field] = AMOUNTS.add(sums[field], Decimal(str(row[column])))
        return count, sums

    def rows(self, start: Optional[datetime], end: Optional[datetime]) -> Iterator[dict]:
        """The window's rows as the mapping reads them (the source's own value handling)."""
        for page in self._pages(self._where(start, end), self.source._selected):
            for row in page:
                yield self.source._values(row)

    def _pages(self, conds: list, columns: Sequence) -> Iterator[list[dict]]:
        names = {c.name for c in columns}
        selected = list(columns) + [c for c in self.pk if c.name not in names]
        last = None
        while True:
            stmt = sa.select(*selected).where(*conds).order_by(*self.pk).limit(self.rows_per_query)
            if last is not None:
                stmt = stmt.where(keyset_after(list(zip(self.pk, last)), self.source._row_values))
            rows = self._fetch(stmt)
            if rows:
                yield rows
            if len(rows) < self.rows_per_query:
                return
            last = [rows[-1][c.name] for c in self.pk]

    def cursor_of(self, row: dict) -> Any:
        return row.get(self.source.spec.cursor) if self.source.spec.cursor else None

    def moment(self, row: dict) -> Optional[datetime]:
        """The row's cursor as an aware UTC instant (None without a timestamp cursor)."""
        value = self.cursor_of(row)
        if isinstance(value, str) and self.source._sqlite_ts:
            value = datetime.fromisoformat(value)
        return to_utc(value, self.source.zone) if isinstance(value, datetime) else None

    def captured(self, row: dict, checkpoint: Any) -> Optional[bool]:
        """Whether polling has read this row version (its cursor is not past the checkpoint);
        None when it cannot be told."""
        cursor = self.cursor_of(row)
        if cursor is None or not isinstance(checkpoint, dict) or checkpoint.get("phase") != "incremental":
            return None
        try:
            return cursor <= decode_value(checkpoint.get("cursor"))
        except TypeError:
            return None

    # -- key sets (hard deletes) ---------------------------------------------------------
    def single_key(self) -> bool:
        return len(self.pk) == 1

    def _hash_sql(self):
        column = self.pk[0]
        if self.dialect == "postgresql":
            return sa.literal_column(f"('x' || substr(md5(CAST({self._quoted()} AS TEXT)), 1, 8))::bit(32)::bigint")
        if self.dialect in ("mysql", "mariadb"):
            return sa.literal_column(f"CAST(CONV(SUBSTR(MD5({self._quoted()}), 1, 8), 16, 10) AS UNSIGNED)")
        return sa.func.outpost_h32(column)

    def _quoted(self) -> str:
        return self._engine.dialect.identifier_preparer.quote(self.pk[0].name)

    def digest(self, low: Any, high: Any) -> tuple[int, int]:
        """(rows, sum of key hashes) with the key in [low, high], computed by the database."""
        column = self.pk[0]
        row = list(self._fetch(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(self._hash_sql()), 0))
                               .select_from(self.table).where(column.between(low, high),
                                                              *self._where(None, None)))[0].values())
        return int(row[0]), int(row[1])

    def keys_between(self, low: Any, high: Any) -> set:
        column = self.pk[0]
        return {r[column.name] for r in self._fetch(sa.select(column).where(column.between(low, high),
                                                                            *self._where(None, None)))}

    def existing(self, keys: Sequence[Any]) -> dict:
        """key -> its row (cursor included) for the primary-key values that exist at the source."""
        column, found = self.pk[0], {}
        for start in range(0, len(keys), 500):
            for row in self._fetch(sa.select(*self.source._selected).where(column.in_(list(keys[start:start + 500])),
                                                                           *self._where(None, None))):
                found[row[column.name]] = row
        return found

    def _fetch(self, stmt) -> list[dict]:
        self.queries += 1
        with self.source._db_errors("reconcile"), self._engine.connect() as conn:
            result = conn.execute(stmt)
            names = tuple(result.keys())
            return [dict(zip(names, r)) for r in result.fetchall()]
