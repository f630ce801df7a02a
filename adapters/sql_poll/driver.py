"""Page queries on the driver's own cursor: SQLAlchemy compiles, the DBAPI cursor runs.

SQLAlchemy's execute path (execution context, ``CursorResult``, a ``Row`` per row) is paid
on every page the poller reads; what polling needs from it is kept here and nothing else:

- the SQL and its paramstyle come from the dialect's compiler (each page shape compiled
  once, see ``pages``), and every value is a bound parameter;
- bind and result values go through the column types' processors, chosen as SQLAlchemy
  chooses them (result processors by the cursor's type codes): SQLite's text timestamps
  and REAL-backed decimals, for instance, read exactly as before;
- row keys are the cursor's column names, as ``Result.keys()`` gave them;
- ``before_cursor_execute`` / ``after_cursor_execute`` listeners still see every statement
  (with no execution context), so instrumentation and the plan tests keep working;
- driver errors are raised as SQLAlchemy's ``DBAPIError``, and a connection the dialect
  says is lost is invalidated, so the pool never hands it out again.

Dialects whose execution context types the binds itself (``BindTyping.SETINPUTSIZES``:
Oracle, SQL Server with pyodbc), and statements whose SQL is only complete at execution
(post-compile parameters: expanding IN lists, a literal TOP), keep SQLAlchemy's execute
path: there the raw cursor would bind differently (Oracle binds a datetime as DATE and
drops its fraction).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import BindTyping

__all__ = ["PageReader"]


class _Compiled:
    __slots__ = ("stmt", "sql", "compiled", "order", "escaped", "bind_processors", "types", "results")

    def __init__(self, stmt, compiled, dialect):
        self.stmt, self.compiled, self.sql = stmt, compiled, compiled.string
        self.order = tuple(compiled.positiontup) if compiled.positional else None
        self.escaped = dict(compiled.escaped_bind_names or {})
        self.bind_processors = {}
        for name, bind in compiled.binds.items():
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.bind_processors[name] = proc
        self.types = [c.type for c in stmt.selected_columns]
        self.results: dict[tuple, tuple] = {}      # cursor type codes -> (names, [(name, processor)])


class PageReader:
    """Runs SQLAlchemy Core selects on the raw DBAPI cursor of a pooled connection."""

    def __init__(self, engine: sa.Engine):
        self.dialect = engine.dialect
        self.raw = self.dialect.bind_typing is not BindTyping.SETINPUTSIZES
        self._compiled: dict[int, _Compiled] = {}

    def rows(self, conn: sa.Connection, stmt, params: Optional[Mapping[str, Any]] = None, *,
             cache: bool = False) -> list[dict]:
        """The rows of ``stmt`` as dicts; ``cache``: ``stmt`` is a long-lived page shape
        (compiled once; its values come in ``params``)."""
        c = self._compiled.get(id(stmt)) if cache else None
        if c is None or c.stmt is not stmt:
            c = None
            if self.raw:
                compiled = stmt.compile(dialect=self.dialect)
                if not (compiled.post_compile_params or compiled.literal_execute_params):
                    c = _Compiled(stmt, compiled, self.dialect)
                    if cache:
                        self._compiled[id(stmt)] = c
        if c is None:
            return self._through_sqlalchemy(conn, stmt, params)
        return self._run(conn, c, params or {})

    @staticmethod
    def _through_sqlalchemy(conn, stmt, params) -> list[dict]:
        result = conn.execute(stmt, params) if params else conn.execute(stmt)
        names = tuple(result.keys())   # tuples + zip: a third of the cost of .mappings()
        return [dict(zip(names, r)) for r in result.fetchall()]

    def _run(self, conn: sa.Connection, c: _Compiled, params: Mapping[str, Any]) -> list[dict]:
        dialect = self.dialect
        values = c.compiled.construct_params(params, escape_names=False)
        for name, proc in c.bind_processors.items():
            values[name] = proc(values[name])
        if c.order is not None:
            args: Any = dialect.execute_sequence_format([values[n] for n in c.order])
        elif c.escaped:
            args = {c.escaped.get(n, n): v for n, v in values.items()}
        else:
            args = values
        fairy = conn.connection
        dispatch = conn.dispatch
        cursor = fairy.cursor()
        try:
            if dispatch.before_cursor_execute:
                for fn in dispatch.before_cursor_execute:
                    fn(conn, cursor, c.sql, args, None, False)
            cursor.execute(c.sql, args)
            # fetchall: one driver call per page (iterating fetched row by row)
            raw = cursor.fetchall()
            description = cursor.description
            if dispatch.after_cursor_execute:
                for fn in dispatch.after_cursor_execute:
                    fn(conn, cursor, c.sql, args, None, False)
        except dialect.loaded_dbapi.Error as e:
            lost = dialect.is_disconnect(e, fairy.dbapi_connection, cursor)
            if lost:
                conn.invalidate(e)
            raise sa.exc.DBAPIError.instance(c.sql, args, e, dialect.loaded_dbapi.Error,
                                             connection_invalidated=lost, dialect=dialect) from e
        finally:
            try:
                cursor.close()
            except Exception:   # the connection is gone already; the error above says why
                pass
        names, processors = self._results(c, description)
        rows = [dict(zip(names, r)) for r in raw]
        for name, proc in processors:
            for row in rows:
                row[name] = proc(row[name])
        return rows

    def _results(self, c: _Compiled, description) -> tuple[tuple, list]:
        codes = tuple(d[1] for d in description)
        hit = c.results.get(codes)
        if hit is None:
            dialect = self.dialect
            names = tuple(d[0] for d in description)
            if dialect.requires_name_normalize:
                names = tuple(dialect.normalize_name(n) for n in names)
            if len(names) != len(c.types) or len(set(names)) != len(names):
                raise RuntimeError(f"sql_poll: the cursor described {names}, not the {len(c.types)} selected columns")
            processors = []
            for name, typ, code in zip(names, c.types, codes):
                proc = typ.dialect_impl(dialect).result_processor(dialect, code)
                if proc is not None:
                    processors.append((name, proc))
            hit = c.results[codes] = (names, processors)
        return hit
