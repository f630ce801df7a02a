"""What the ``sql_poll`` source reads from its reflected table, and how each value is typed.

``resolve`` checks the configured columns against the table (every problem at once, with
its key path and close matches), picks the cursor's kind and the expression pages compare
and order on, and the select list; ``ReadColumns.values`` turns a row as read into the row
the mapping sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Optional

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from agent.config_checks import close_matches
from agent.contracts import ConfigError, approximate

__all__ = ["ReadColumns", "resolve"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SQLITE_TS = "%Y-%m-%d %H:%M:%f"   # SQLite's own canonical text form, millisecond precision


@dataclass
class ReadColumns:
    pk_names: list[str]
    pk: list                      # the primary key's columns
    kind: Optional[str]           # the cursor's: "timestamp", "number", None (no cursor)
    ck: Any                       # the cursor expression pages compare and order on
    aware: bool                   # the cursor column stores aware timestamps
    sqlite_ts: bool               # SQLite text timestamps: compared in SQLite's normalised form
    selected: list                # the select list (columns, then UNIX_TIMESTAMP of MariaDB TIMESTAMPs)
    approximate: dict[str, Optional[int]]    # binary floating-point column -> declared scale
    instants: dict[str, str]      # MariaDB/MySQL TIMESTAMP column -> label of its UNIX_TIMESTAMP

    def values(self, row: dict) -> dict:
        """The row as the mapping sees it (positions are taken from the row as read).

        A binary floating-point column (DOUBLE, REAL, FLOAT) becomes ``Approximate``, rounded
        to its declared scale (SQLAlchemy gives a MariaDB ``double(24,8)`` as a Decimal, which
        the mapping would refuse for its places; the binlog gives the same value as a float).
        A MariaDB/MySQL TIMESTAMP is an instant, but the driver shows it as naive wall time
        of the session's zone: it is read as ``UNIX_TIMESTAMP(col)`` and made aware UTC, so
        that no ``source_timezone`` is ever applied to it (DATETIME stays naive)."""
        if not self.approximate and not self.instants:
            return row
        values = dict(row)
        for name, scale in self.approximate.items():
            values[name] = approximate(values[name], scale)
        for name, label in self.instants.items():
            seconds = values.pop(label)
            values[name] = None if values[name] is None or not seconds else \
                _EPOCH + timedelta(seconds=int(seconds), microseconds=int((Decimal(seconds) % 1) * 1_000_000))
        return values


def resolve(spec, table: sa.Table, dialect: str, where: Callable[[str], str], object_: str) -> ReadColumns:
    """``where(option)``: the option's key path in the config, for the problems raised."""
    s, problems = spec, []
    cols = table.c
    pk = s.primary_key or [c.name for c in table.primary_key.columns]
    if not pk:
        problems.append(f"{where('primary_key')}: sql_poll table {object_!r} has no primary key: "
                        "set 'primary_key' to the column(s) that identify a row")
    wanted = {"primary_key": pk, "columns": s.columns or [],
              "cursor": [s.cursor] if s.cursor else [],
              "soft_delete.column": [s.soft_delete.column] if s.soft_delete else []}
    for what, names in wanted.items():
        problems += [f"{where(what)}: sql_poll {what}: column {n!r} not found in {object_}"
                     f"{close_matches(n, cols.keys())} (its columns: {', '.join(sorted(cols.keys()))})"
                     for n in names if n not in cols]
    kind = None
    if s.cursor and s.cursor in cols:
        typ = cols[s.cursor].type
        if isinstance(typ, sa.DateTime):
            kind = "timestamp"
        elif isinstance(typ, (sa.Integer, sa.Numeric)):
            kind = "number"
        else:
            problems.append(f"{where('cursor')}: found {s.cursor!r}, a column of type {typ}; the cursor "
                            "must be a timestamp or an integer column that grows on every change "
                            "(e.g. updated_at, a row version)")
    if problems:
        raise ConfigError(problems)
    names = list(s.columns or [c.name for c in table.columns])
    names += [n for n in pk + [s.cursor, s.soft_delete and s.soft_delete.column]
              if n and n not in names]
    read = [cols[n] for n in names]
    instants = [(c, f"outpost_utc_{i}") for i, c in enumerate(read)
                if dialect in ("mysql", "mariadb") and isinstance(c.type, mysql.TIMESTAMP)]
    cur = cols[s.cursor] if s.cursor else None
    # SQLite keeps timestamps as text in whatever format the writer chose; compare and
    # order on SQLite's normalised form so '10:00:00' and '10:00:00.000000' tie.
    sqlite_ts = kind == "timestamp" and dialect == "sqlite"
    return ReadColumns(
        pk_names=pk, pk=[cols[n] for n in pk], kind=kind,
        ck=sa.func.strftime(SQLITE_TS, cur) if sqlite_ts else cur,
        aware=bool(cur is not None and getattr(cur.type, "timezone", False)), sqlite_ts=sqlite_ts,
        selected=read + [sa.func.unix_timestamp(c).label(label) for c, label in instants],
        approximate={c.name: getattr(c.type, "scale", None) for c in read if isinstance(c.type, sa.Float)},
        instants={c.name: label for c, label in instants})
