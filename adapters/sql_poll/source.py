"""``sql_poll`` source: keyset polling on (cursor, primary key), capped by a signpost.

Why this shape (see docs/sql_poll.md): polling on ``cursor > last`` alone skips rows that
share the last cursor value and rows committed after a later row. We therefore page on the
tuple (cursor, pk...) and never read past a signpost taken once per ``batches()`` call,
``DB clock - lag_seconds`` (or ``max(cursor)`` for integer cursors), so a row whose
transaction is still open when we poll is still ahead of the checkpoint when it commits.

Checkpoint (versioned JSON; every value tagged so it round-trips exactly)::

    {"v": 1, "phase": "snapshot", "pk": [tagged..] | null, "start": tagged | null, "rows": n}
    {"v": 1, "phase": "incremental", "cursor": tagged | null, "pk": [tagged..] | null}
    {"v": 1, "phase": "done", "rows": n}            # mode: snapshot_only, finished

``pk: null`` in the incremental phase means "from ``cursor`` on, inclusive" (at a clock
resolution of one second a row stamped in the same second as the start must not be lost;
re-reading one keeps its position, so the queue drops the repeat).
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping, Optional
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from agent.contracts import (AdapterContext, ConfigError, Source, SourceBatch, SourceRecord,
                             TransientError)

from . import columns, inspection, rollups
from .driver import PageReader
from .keyset import (ROW_VALUE_DIALECTS, plain, align_clock, decode_value, encode_value,  # noqa: F401
                     row_position, row_position_utc, to_utc)
from .pages import PageQueries
from .spec import SourceOptions

__all__ = ["SqlPollSource", "Source", "encode_value", "decode_value", "row_position"]

CHECKPOINT_VERSION = 1


# ---- the adapter --------------------------------------------------------------------

class SqlPollSource(Source):
    options_model = SourceOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        self.zone = ZoneInfo(self.spec.source_timezone)
        self.object = f"{self.spec.schema_}.{self.spec.table}" if self.spec.schema_ else self.spec.table
        self._engine: Optional[sa.Engine] = None
        try:
            self._url = sa.engine.make_url(self.spec.url)
        except sa.exc.ArgumentError:
            # the value is not shown: it may hold a password
            raise ConfigError([f"sources.{context.name}.url: found a value that is not a SQLAlchemy URL; write "
                               "dialect+driver://user@host/database, e.g. postgresql+psycopg://outpost@erp-db/erp"
                               " (the password as ${DB_PASSWORD} or ${credential:NAME})"]) from None
        self._safe_url = self._url.render_as_string(hide_password=True)
        self._password = self._url.password and str(self._url.password)

    # -- lifecycle --

    def open(self) -> None:
        if self._engine is not None:
            return
        url, kwargs = self._url, {}
        if url.get_backend_name() in ("postgresql", "mysql", "mariadb") and "connect_timeout" not in url.query:
            kwargs["connect_args"] = {"connect_timeout": 10}   # fail fast; the scheduler retries
        try:
            engine = sa.create_engine(url, pool_pre_ping=True, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
            raise ConfigError([f"sql_poll url {self._safe_url}: {self._scrub(e)}"]) from None
        try:
            with self._db_errors("connect"), engine.connect() as conn:
                try:
                    table = sa.Table(self.spec.table, sa.MetaData(), schema=self.spec.schema_,
                                     autoload_with=conn)
                except sa.exc.NoSuchTableError:
                    raise ConfigError([self._no_such_table(conn)]) from None
                self._resolve(table, engine.dialect.name)
                self._rollups, self._children = rollups.reflect(conn, self.spec.rollups, self.spec.schema_, self._pk)
                self._selected += self._rollups
        except BaseException:
            engine.dispose()
            raise
        self._reader = PageReader(engine)
        self._pages = PageQueries(self._selected, self._pk, self._ck, row_values=self._row_values,
                                  batch_size=self.spec.batch_size, snapshot_chunk=self.spec.snapshot_chunk)
        self._engine = engine

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def check(self) -> list[str]:
        """Problems (and ``warning:`` lines) for ``outpost check``."""
        opened_here = self._engine is None
        try:
            self.open()
        except ConfigError as e:
            return e.problems
        except TransientError as e:
            return [str(e)]
        problems: list[str] = []
        try:
            if self.spec.cursor:
                with self._db_errors("inspect"), self._engine.connect() as conn:
                    where = (conn, self.spec.table, self.spec.schema_, self.spec.cursor, self.object)
                    # statistics matter only to a table that has the index
                    problems += inspection.cursor_index_warnings(*where) or inspection.cursor_statistics_warnings(*where)
                    problems += inspection.cursor_update_warnings(*where)
        except TransientError as e:
            problems.append(str(e))
        finally:
            if opened_here:
                self.close()
        return problems

    def _where(self, option: str) -> str:
        """The key path of an option, as the route's capture section (where a table's
        options are usually written; the source section may hold them too)."""
        return f"routes.{self.context.route}.capture.{option}" if self.context.route else option

    def _no_such_table(self, conn) -> str:
        return inspection.no_such_table(conn, self.spec.table, self.spec.schema_, self._where("table"), self._safe_url)

    def reflected_columns(self) -> dict[str, dict]:
        """The polled table's columns for ``outpost check`` (agent/check_columns.py); after ``open``."""
        with self._db_errors("inspect"), self._engine.connect() as conn:
            is_view = self.spec.table in sa.inspect(conn).get_view_names(schema=self.spec.schema_)
        return inspection.reflected_columns(self._table, is_view)

    def sample(self, column: str, limit: int = 200) -> list:
        """Some non-NULL values of a column (``outpost check`` tries text columns with them)."""
        col = self._table.c[column]
        with self._db_errors("sample"), self._engine.connect() as conn:
            return list(conn.execute(sa.select(col).where(col.is_not(None)).limit(limit)).scalars())

    def reconciler(self, rows_per_query: int = 5000):
        """The source side of reconciliation (``adapters.sql_poll.reconcile``)."""
        from .reconcile import SqlPollReconciler
        return SqlPollReconciler(self, rows_per_query)

    def _resolve(self, table: sa.Table, dialect: str) -> None:
        c = self._columns = columns.resolve(self.spec, table, dialect, self._where, self.object)
        self.kind, self._table, self._pk, self._pk_names = c.kind, table, c.pk, c.pk_names
        self._selected, self._ck, self._aware, self._sqlite_ts = c.selected, c.ck, c.aware, c.sqlite_ts
        self._values = c.values
        self._clock_is_utc = dialect == "sqlite"
        self._row_values = dialect in ROW_VALUE_DIALECTS

    # -- capture --

    def batches(self, checkpoint: Any) -> Iterator[SourceBatch]:
        if self._engine is None:
            self.open()
        cp = checkpoint
        if cp is not None and (not isinstance(cp, dict) or cp.get("v") != CHECKPOINT_VERSION):
            raise ConfigError([f"sql_poll {self.object}: unrecognised checkpoint {cp!r}; "
                               "reset the route's checkpoint to start over"])
        signpost = self._signpost() if self.kind else None
        if cp is None:
            if self.spec.snapshot == "initial":
                cp = {"v": 1, "phase": "snapshot", "pk": None,
                      "start": encode_value(self._snapshot_start(signpost)), "rows": 0,
                      "total": self._estimated_rows()}
            else:   # only changes from now on; persist the start so no gap opens before the next run
                cp = {"v": 1, "phase": "incremental", "cursor": encode_value(signpost), "pk": None}
                yield SourceBatch([], cp, self._progress(cp, signpost))
        if cp["phase"] == "snapshot":
            cp = yield from self._snapshot(cp)
        if cp["phase"] == "incremental":
            yield from self._incremental(cp, signpost)

    def _snapshot(self, cp: dict) -> Iterator[SourceBatch]:
        last = [decode_value(v) for v in cp["pk"]] if cp["pk"] is not None else None
        rows_read, chunk = cp["rows"], self.spec.snapshot_chunk
        while True:
            rows = self._fetch(*self._pages.snapshot(last), cache=True)
            rows_read += len(rows)
            if rows:
                last = [rows[-1][n] for n in self._pk_names]
            if len(rows) < chunk:
                nxt = ({"v": 1, "phase": "done", "rows": rows_read} if self.spec.mode == "snapshot_only"
                       else {"v": 1, "phase": "incremental", "cursor": cp["start"], "pk": None})
            else:
                nxt = {**cp, "pk": [encode_value(v) for v in last], "rows": rows_read}
            yield SourceBatch([self._record(r, snapshot=True) for r in rows], nxt,
                              {"phase": "snapshot", "rows": rows_read, "total": cp.get("total"),
                               "done": nxt["phase"] != "snapshot"})
            if nxt["phase"] != "snapshot":
                return nxt

    def _incremental(self, cp: dict, signpost: Any) -> Iterator[SourceBatch]:
        if signpost is None:   # integer cursor on an empty table: nothing to read yet
            return
        cursor = decode_value(cp["cursor"])
        pk = [decode_value(v) for v in cp["pk"]] if cp["pk"] is not None else None
        # child tables of roll-ups are polled from where the parent's polling started
        children = cp.get("children") or {name: {"cursor": cp["cursor"], "pk": None} for name in self._children}
        while True:
            rows = self._fetch(*self._pages.incremental(self._bind(signpost), self._bind(cursor), pk), cache=True)
            if not rows:
                break
            cursor, pk = rows[-1][self.spec.cursor], [rows[-1][n] for n in self._pk_names]
            cp = {"v": 1, "phase": "incremental", "cursor": encode_value(cursor),
                  "pk": [encode_value(v) for v in pk], **({"children": children} if children else {})}
            yield SourceBatch(self._without_echoes([self._record(r, snapshot=False) for r in rows]), cp,
                              self._progress(cp, signpost))
            if len(rows) < self.spec.batch_size:
                break
        for name in self._children:
            cp = yield from self._child_changes(name, cp, children, signpost)

    def _child_changes(self, name: str, cp: dict, children: dict, signpost: Any) -> Iterator[SourceBatch]:
        """Parents whose children changed, read again with their roll-ups (see ``rollups``)."""
        child = self._children[name]
        while True:
            pk = [decode_value(v) for v in children[name]["pk"]] if children[name]["pk"] else None
            changed = self._fetch(*self._pages.changed_children(
                child, self._bind(signpost), decode_value(children[name]["cursor"]), pk), cache=True)
            if not changed:
                return cp
            newest: dict = {}
            for row in changed:
                newest[row[child.key.name]] = row[child.cursor.name]
            parents = self._fetch(sa.select(*self._selected).where(self._pk[0].in_(list(newest))))
            records = []
            for row in parents:
                record = self._record(row, snapshot=False)
                stamp = plain(newest[row[self._pk_names[0]]])
                records.append(dataclasses.replace(record, position=f"{record.position}+{name}@{stamp}"))
            last = changed[-1]
            children = {**children, name: {"cursor": encode_value(last[child.cursor.name]),
                                           "pk": [encode_value(last[c.name]) for c in child.pk]}}
            cp = {**cp, "children": children}
            yield SourceBatch(records, cp, self._progress(cp, signpost))
            if len(changed) < self.spec.batch_size:
                return cp

    def _record(self, row: dict, *, snapshot: bool) -> SourceRecord:
        cursor = self.spec.cursor
        cv = row[cursor] if cursor else None
        pos, utc = row_position_utc([row[n] for n in self._pk_names], cv)
        values = self._values(row)
        stamp = values[cursor] if cursor else None
        if utc is not None and stamp is cv:
            occurred = utc
        else:
            occurred = to_utc(stamp, self.zone) if isinstance(stamp, datetime) else None
        if self.spec.soft_delete and self.spec.soft_delete.matches(row):
            return SourceRecord(self.object, "delete", pos, after=None, before=values, occurred_at=occurred)
        # Polling cannot tell an insert from an update, so every incremental row is "update".
        return SourceRecord(self.object, "snapshot" if snapshot else "update", pos,
                            after=values, before=None, occurred_at=occurred)

    def _without_echoes(self, records: list) -> list:
        """Drop the row versions a sql_apply sink wrote (it records (object, position) in its
        transaction), so Outpost's own writes never come back to the fabric (docs/inbound.md)."""
        if not self.spec.skip_applied or not records:
            return records
        schema, _, name = self.spec.skip_applied.rpartition(".")
        if getattr(self, "_applied_table", None) is None:
            with self._db_errors("look for the applied rows table"), self._engine.connect() as conn:
                if not sa.inspect(conn).has_table(name, schema=schema or None):
                    return records          # the applier has not run yet: nothing can be an echo
            self._applied_table = sa.table(name, sa.column("object"), sa.column("position"), schema=schema or None)
        t = self._applied_table
        found = set()
        positions = [r.position for r in records]
        for start in range(0, len(positions), 500):
            found.update(r["position"] for r in self._fetch(sa.select(t.c.position).where(
                t.c.object == self.object, t.c.position.in_(positions[start:start + 500]))))
        return [r for r in records if r.position not in found]

    # -- I/O helpers --

    def _signpost(self) -> Any:
        with self._db_errors("read the signpost"), self._engine.connect() as conn:
            if self.kind == "number":
                return conn.execute(sa.select(sa.func.max(self._table.c[self.spec.cursor]))).scalar()
            now = conn.execute(sa.select(sa.func.current_timestamp())).scalar()
        if isinstance(now, str):   # drivers without a datetime processor for this function
            now = datetime.fromisoformat(now)
        now = align_clock(now, clock_is_utc=self._clock_is_utc, column_aware=self._aware, zone=self.zone)
        return now - timedelta(seconds=self.spec.lag_seconds)

    def _snapshot_start(self, signpost: Any) -> Any:
        # An extra lag of margin for clock skew between app-stamped cursors and the DB clock;
        # rows re-read because of it keep their position, so the queue drops the repeats.
        if self.kind == "timestamp":
            return signpost - timedelta(seconds=self.spec.lag_seconds)
        return signpost

    def _bind(self, v: Any) -> Any:
        if self._sqlite_ts and isinstance(v, datetime):
            if v.tzinfo:
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
            return v.strftime("%Y-%m-%d %H:%M:%S.") + f"{v.microsecond // 1000:03d}"
        return v

    def _fetch(self, stmt, params: Optional[dict] = None, *, cache: bool = False) -> list[dict]:
        """Rows as dicts, on the driver's cursor where the dialect allows (``driver``);
        ``cache``: ``stmt`` is one of ``self._pages``' shapes."""
        with self._db_errors("poll"), self._engine.connect() as conn:
            # One short transaction per query: nothing stays open while the caller commits
            # (the pool rolls the driver's transaction back when the connection returns).
            return self._reader.rows(conn, stmt, params, cache=cache)

    def _estimated_rows(self) -> Optional[int]:
        """How many rows a snapshot will read, for its progress (None: unknown)."""
        try:
            with self._db_errors("estimate the size of"), self._engine.connect() as conn:
                return inspection.estimated_rows(conn, self._table, self.object, self.spec.table, self.spec.schema_)
        except TransientError:
            return None      # progress without a total; the snapshot itself goes on

    def _progress(self, cp: dict, signpost: Any) -> dict:
        return {"phase": cp["phase"], "cursor": plain(decode_value(cp.get("cursor"))),
                "signpost": plain(signpost)}

    @contextmanager
    def _db_errors(self, doing: str):
        try:
            yield
        except sa.exc.SQLAlchemyError as e:
            raise TransientError(f"sql_poll {self.object}: cannot {doing} on {self._safe_url}: "
                                 f"{self._scrub(e)}") from None

    def _scrub(self, e: BaseException) -> str:
        lines = str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__]
        return lines[0].replace(self._password, "***") if self._password else lines[0]


Source = SqlPollSource

