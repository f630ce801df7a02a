"""What ``outpost check`` and progress reports ask of the polled table: its columns in the
check's words, the names it could have meant, and how many rows a snapshot will read.

Reads the database through the connection it is given; no state of its own.
"""
from __future__ import annotations

from typing import Optional

import sqlalchemy as sa

from agent.config_checks import close_matches

__all__ = ["reflected_columns", "no_such_table", "estimated_rows"]


def reflected_columns(table: sa.Table) -> dict[str, dict]:
    """name -> {kind: text|number|date|timestamp|other, nullable, type}."""
    return {c.name: {"kind": _kind(c.type), "nullable": bool(c.nullable), "type": str(c.type)} for c in table.columns}


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
