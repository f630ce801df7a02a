"""Roll-ups: values of a parent row computed over a child table (counts and sums), and
the parents to publish again when child rows change.

The values are correlated subqueries selected with the parent row, so the snapshot and
every poll carry them. A child table with a ``cursor`` is polled too, on the same terms as
the parent (keyset on (cursor, child primary key), capped by the pass's signpost, its
position in the route's checkpoint under ``children``): each changed child names its
parent, which is read again with its roll-ups and published as an update. That record's
position is the parent's own plus the child table and the newest child change it
reflects, so every recomputation has an id of its own and a re-read after a crash has the
same one. Deleted child rows are invisible to polling, as deleted parents are
(docs/sql_poll.md): a soft delete, or a periodic re-snapshot, covers them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sqlalchemy as sa

from agent.contracts import ConfigError


@dataclass
class ChildTable:
    name: str
    table: sa.Table
    key: sa.Column          # the column holding the parent's key
    cursor: sa.Column
    pk: list[sa.Column]


def reflect(conn, rollups: dict, schema: Optional[str], parent_pk: list) -> tuple[list, dict[str, ChildTable]]:
    """(the roll-up columns to select with the parent, the child tables to poll)."""
    if not rollups:
        return [], {}
    if len(parent_pk) != 1:
        raise ConfigError(["sql_poll rollups need a parent table with a one-column primary key"])
    tables: dict[str, sa.Table] = {}
    problems, columns, children = [], [], {}
    for name, rollup in rollups.items():
        if rollup.table not in tables:
            try:
                tables[rollup.table] = sa.Table(rollup.table, sa.MetaData(), schema=schema, autoload_with=conn)
            except sa.exc.NoSuchTableError:
                problems.append(f"sql_poll rollups.{name}: child table {rollup.table!r} not found")
                continue
        child = tables[rollup.table]
        wanted = [rollup.key, rollup.sum, rollup.cursor]
        missing = [c for c in wanted if c and c not in child.c]
        if missing:
            problems.append(f"sql_poll rollups.{name}: column(s) {', '.join(missing)} not found in {rollup.table}")
            continue
        aggregate = sa.func.coalesce(sa.func.sum(child.c[rollup.sum]), 0) if rollup.sum else sa.func.count()
        columns.append(sa.select(aggregate).where(child.c[rollup.key] == parent_pk[0])
                       .scalar_subquery().label(name))
        if rollup.cursor and rollup.table not in children:
            pk = list(child.primary_key.columns)
            if not pk:
                problems.append(f"sql_poll rollups.{name}: child table {rollup.table!r} has no primary key")
                continue
            children[rollup.table] = ChildTable(rollup.table, child, child.c[rollup.key], child.c[rollup.cursor], pk)
    if problems:
        raise ConfigError(problems)
    return columns, children

