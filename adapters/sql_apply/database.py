"""The database side of the ``sql_apply`` sink: how its sessions are set up, what a
reflected table tells the reverse mapping, and what a database error means for the
events of a batch (wait and retry, park one, or let a child wait for its parent)."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from adapters.sql_apply import statements as sql
from adapters.sql_apply.reverse_mapping import Column, TablePlan
from agent.contracts import TransientError

__all__ = ["Refused", "session_settings", "binary_arrays", "describe", "reflect", "errors"]

# MySQL/MariaDB errors about the data that PyMySQL reports as OperationalError/InternalError:
# CHECK constraint (4025 MariaDB, 3819 MySQL), incorrect value (1366, 1292), out of range
# (1264), truncated (1265). Retrying cannot fix them: the event is parked instead.
_MYSQL_DATA_ERRORS = {4025, 3819, 1366, 1292, 1264, 1265}
_QUOTED = re.compile(r"^'((?:[^']|'')*)'(?:::[\w\s]+)?$")


class Refused(Exception):
    """The database refused the data itself (constraint, value): isolate and park it, or
    let it wait when the refusal is a foreign key whose parent row is missing."""

    def __init__(self, message: str, missing_parent: bool = False):
        super().__init__(message)
        self.missing_parent = missing_parent


def session_settings(url: sa.URL, lock_wait: float) -> dict:
    """``create_engine`` arguments: connect timeout, and every lock wait bounded by
    ``lock_wait`` (the databases' own bounds are a day, MariaDB, or none, PostgreSQL)."""
    backend, wait = url.get_backend_name(), int(lock_wait)
    if backend == "postgresql":
        options = " ".join(filter(None, [str(url.query.get("options") or ""), f"-c lock_timeout={wait * 1000}"]))
        return {"connect_args": {"connect_timeout": 10, "options": options}}      # the URL's own options kept
    if backend in ("mysql", "mariadb"):
        # LOCK TABLES waits on a metadata lock (lock_wait_timeout), row locks on InnoDB's own
        return {"connect_args": {"connect_timeout": 10, "init_command": f"SET SESSION lock_wait_timeout={wait},"
                                                                       f" innodb_lock_wait_timeout={wait}"}}
    return {}


def binary_arrays(engine: sa.Engine) -> None:
    """On psycopg, send list parameters (the ``unnest`` arrays of ``statements``: one per
    column per batch) in binary: its text format quotes every element through a regular
    expression, about 10 µs of CPU per applied event (cProfile, bench/bench_inbound.py).
    Same values either way; each array parameter carries its column's cast."""
    if engine.dialect.driver != "psycopg":
        return
    from psycopg.types.array import ListBinaryDumper

    @sa.event.listens_for(engine, "connect")
    def _binary_lists(dbapi_connection, _record) -> None:
        dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def describe(column: sa.Column) -> Column:
    """What the reverse mapping needs to know about a reflected column."""
    t = column.type
    # MySQL and MariaDB store BOOLEAN as TINYINT(1), which reflection reports as an integer
    flag = isinstance(t, mysql.TINYINT) and getattr(t, "display_width", None) == 1
    kind = ("boolean" if isinstance(t, sa.Boolean) else "flag" if flag else "integer" if isinstance(t, sa.Integer)
            else "float" if isinstance(t, sa.Float) else "numeric" if isinstance(t, sa.Numeric)
            else "datetime" if isinstance(t, sa.DateTime) else "date" if isinstance(t, sa.Date)
            else "string" if isinstance(t, sa.String) else "other")
    # A float's "precision" is binary (53 for a double), never decimal digits: a legacy
    # double column receives an exact Decimal (the database rounds it once), never numeric(53,0).
    precision, scale = (None, None) if kind == "float" else (getattr(t, "precision", None), getattr(t, "scale", None))
    return Column(column.name, kind, bool(column.nullable), getattr(t, "length", None), precision, scale,
                  bool(getattr(t, "timezone", False)))


def _literal_default(column: sa.Column) -> tuple[bool, Any]:
    """(True, value) when the reflected server default is a plain literal ('N', 0, true)."""
    default = getattr(column.server_default, "arg", None)
    text = str(getattr(default, "text", default) if default is not None else "").strip().strip("()")
    if not text or text.upper() == "NULL":
        return False, None
    quoted = _QUOTED.match(text)
    if quoted:
        return True, quoted.group(1).replace("''", "'")
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return True, int(text)
    if text.lower() in ("true", "false"):
        return True, text.lower() == "true"
    return False, None


def reflect(conn, dialect, entity: str, plan: TablePlan, where: str, stmts: dict, row_by_row: dict) -> list[str]:
    """Check ``plan`` against the reflected table and fill in what it needs from it (column
    types, the "not deleted" value) and its statements; the problems found."""
    try:
        table = sa.Table(plan.table, sa.MetaData(), schema=plan.schema, autoload_with=conn)
    except sa.exc.NoSuchTableError:
        return [f"{entity}: table {plan.object} not found in {where}"]
    missing = [c for c in plan.referenced_columns() if c not in table.c]
    if missing:
        return [f"{entity}: column(s) {missing} not found in {plan.object}"]
    inspector = sa.inspect(conn)
    unique = [list(table.primary_key.columns.keys())]
    unique += [u["column_names"] for u in inspector.get_unique_constraints(plan.table, schema=plan.schema)]
    unique += [i["column_names"] for i in inspector.get_indexes(plan.table, schema=plan.schema) if i.get("unique")]
    if not any(set(u) == set(plan.key) for u in unique):
        return [f"{entity}: key {plan.key} of {plan.object} is not its primary key or a unique key "
                f"(an upsert needs one)"]
    plan.sa_table = table
    plan.columns = {c: describe(table.c[c]) for c in plan.referenced_columns()}
    if dialect.name == "postgresql":    # it gives CHAR(n) back blank-padded (MariaDB strips the blanks)
        plan.padded = frozenset(i for i, k in enumerate(plan.key) if isinstance(table.c[k].type, sa.CHAR))
    soft = plan.target.delete
    if soft.policy == "soft" and soft.column not in plan.rules:
        if "restore_value" in soft.model_fields_set:
            plan.restore = {soft.column: soft.restore_value}
        else:
            known, value = _literal_default(table.c[soft.column])
            if not known and not table.c[soft.column].nullable:
                return [f"{entity}: {plan.object}.{soft.column} is NOT NULL without a plain default: say what a "
                        "row that is not deleted holds (delete.restore_value)"]
            plan.restore = {soft.column: value}
    if dialect.name in ("mysql", "mariadb") and len({frozenset(u) for u in unique if u}) > 1:
        row_by_row[plan.object] = sql.update_then_insert(table, plan.key, plan.write_columns())
    stmts[("upsert", plan.object)] = sql.upsert(dialect, table, plan.key, plan.write_columns())
    stmts[("delete", plan.object)] = sql.delete(table, plan.key)
    if soft.policy == "soft":
        stmts[("soft", plan.object)] = sql.soft_delete(table, plan.key, soft.column)
    return []


def _missing_parent(exc: sa.exc.DBAPIError) -> bool:
    """A child row refused because its parent row is not there (not: a parent still referenced)."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23503":                      # PostgreSQL foreign_key_violation
        return str(orig).startswith("insert or update on table")
    code = (getattr(orig, "args", None) or [None])[0]
    return code == 1452 or "FOREIGN KEY constraint failed" in str(orig) and "INSERT" in str(exc.statement or "")


@contextmanager
def errors(cannot: str, scrub: Callable[[BaseException], str], lock_wait: float):
    """Database errors as the sink acts on them: ``Refused`` (the data: park or wait) or
    ``TransientError`` ("cannot <cannot>: ...": the destination, retried later)."""
    try:
        yield
    except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
        raise Refused(scrub(exc), isinstance(exc, sa.exc.IntegrityError) and _missing_parent(exc)) from None
    except sa.exc.DBAPIError as exc:
        code = (getattr(exc.orig, "args", None) or [None])[0]
        if code == 1205 or getattr(exc.orig, "sqlstate", None) == "55P03":      # lock wait timeout
            raise TransientError(f"{cannot}: waited {lock_wait:.0f}s for a lock another session holds (LOCK "
                                 f"TABLE(S) or a long transaction); retrying: {scrub(exc)}") from None
        if exc.connection_invalidated or code not in _MYSQL_DATA_ERRORS:
            raise TransientError(f"{cannot}: {scrub(exc)}") from None
        raise Refused(scrub(exc)) from None
    except sa.exc.StatementError as exc:
        # raised before the database saw the statement: a parameter this event carries
        # that the driver cannot take; retrying cannot help, so isolate and park it
        raise Refused(scrub(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        raise TransientError(f"{cannot}: {scrub(exc)}") from None
