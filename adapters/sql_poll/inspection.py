"""What ``outpost check`` and progress reports ask of the polled table: its columns in the
check's words, the names it could have meant, and how many rows a snapshot will read.

Reads the database through the connection it is given; no state of its own.
"""
from __future__ import annotations

from typing import Optional

import sqlalchemy as sa

from agent.config_checks import close_matches

__all__ = ["reflected_columns", "cursor_index_warnings", "cursor_statistics_warnings", "cursor_update_warnings",
           "no_such_table", "estimated_rows"]


def reflected_columns(table: sa.Table, is_view: bool = False) -> dict[str, dict]:
    """name -> {kind: text|number|date|timestamp|other, nullable, type}. A view's columns
    reflect as nullable whatever the tables behind them say: None there (unknown)."""
    return {c.name: {"kind": _kind(c.type), "nullable": None if is_view else bool(c.nullable), "type": str(c.type)}
            for c in table.columns}


def cursor_index_warnings(conn, name: str, schema: Optional[str], cursor: str, qualified: str) -> list[str]:
    """A table without an index that starts with the cursor: every poll scans it. A view
    has no index of its own: asking for one would be advice nobody can follow."""
    insp = sa.inspect(conn)
    if name in insp.get_view_names(schema=schema):
        return []
    firsts = [i["column_names"][0] for i in insp.get_indexes(name, schema) if i.get("column_names")]
    firsts += (insp.get_pk_constraint(name, schema) or {}).get("constrained_columns", [])[:1]
    if cursor in firsts:
        return []
    return [f"warning: no index starts with cursor column {cursor!r} on {qualified}: every poll scans the table"]


def cursor_statistics_warnings(conn, name: str, schema: Optional[str], cursor: str, qualified: str) -> list[str]:
    """PostgreSQL: a table never analysed. Its planner then guesses a few hundred rows past
    any position, and each page sorts every remaining row instead of reading the cursor
    index (measured: 4.0 instead of 0.9 µs of server CPU per event, docs/sql_poll.md).
    ``reltuples`` is -1 until the first ANALYZE (PostgreSQL 14 and later)."""
    if conn.dialect.name != "postgresql":
        return []
    never = conn.execute(sa.text("SELECT c.reltuples < 0 FROM pg_class c WHERE c.oid = to_regclass(:name)"
                                 " AND c.relkind IN ('r', 'p')"), {"name": qualified}).scalar()
    if not never:
        return []
    return [f"warning: {qualified} has never been analysed: PostgreSQL cannot plan the poll on its cursor index "
            f"and sorts the rest of the table for every page. Run ANALYZE {qualified} (autovacuum does it when "
            "it is on)"]


def cursor_update_warnings(conn, name: str, schema: Optional[str], cursor: str, qualified: str) -> list[str]:
    """MariaDB/MySQL: a cursor that nothing in the database keeps current. An ERP's
    ``tms timestamp`` used to update itself; since MariaDB 10.10 (explicit_defaults_for_
    timestamp) a new column does not, and polling then silently sees no more changes.
    Other databases: the application usually sets the column, so nothing is said."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return []
    where = {"schema": schema, "t": name, "c": cursor}
    extra = conn.execute(sa.text("SELECT extra FROM information_schema.columns WHERE table_schema = "
                                 "coalesce(:schema, database()) AND table_name = :t AND column_name = :c"),
                         where).scalar()
    triggers = conn.execute(sa.text("SELECT count(*) FROM information_schema.triggers WHERE event_object_schema = "
                                    "coalesce(:schema, database()) AND event_object_table = :t"), where).scalar()
    if "on update" in str(extra or "").lower() or triggers:
        return []
    return [f"warning: cursor column {cursor!r} of {qualified} has no ON UPDATE and the table no trigger: unless "
            f"the application sets it on every change, polling stops seeing changes. Make it "
            f"'{cursor} TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP' (or use the "
            "binlog source)"]


def no_such_table(conn, name: str, schema: Optional[str], where: str, safe_url: str) -> str:
    """The problem of a table the database does not have, with the names it does."""
    insp = sa.inspect(conn)
    known = insp.get_table_names(schema=schema) + insp.get_view_names(schema=schema)
    return (f"{where}: table {name!r} not found in {safe_url}{close_matches(name, known)} (tables and views: "
            f"{', '.join(sorted(known)[:40]) or 'none'}{', ...' if len(known) > 40 else ''}); write the name as "
            "the database has it (and 'schema' if it is not in the default one)")


def estimated_rows(conn, table: sa.Table, qualified: str, name: str, schema: Optional[str]) -> Optional[int]:
    """The planner's estimate where the database keeps one (no scan of a large table),
    else a count."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        found = conn.execute(sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:name)"),
                             {"name": qualified}).scalar()
        if found is not None and found >= 0:     # -1: never analysed
            return int(found)
    elif dialect in ("mysql", "mariadb"):
        found = conn.execute(sa.text("SELECT table_rows FROM information_schema.tables WHERE "
                                     "table_schema = coalesce(:schema, database()) AND table_name = :t"),
                             {"schema": schema, "t": name}).scalar()
        if found:
            return int(found)
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar())


def _kind(typ) -> str:
    """A column type in the words the check uses; DATETIME before DATE (it is not one)."""
    for kind, types in (("timestamp", (sa.DateTime,)), ("date", (sa.Date,)), ("number", (sa.Integer, sa.Numeric)),
                        ("text", (sa.String, sa.Text, sa.Enum))):
        if isinstance(typ, types):
            return kind
    return "other"
