"""Parents before children. The fabric's entity topics keep no order across entities, so
a closed-won deal can arrive milestones first, then the project, then the customer. A row
whose foreign key points at a parent row that is not there yet is not an error: the
event waits (a ``Deferral``: it stays queued in order, visible in ``status``) and is
applied once the parent committed; only a parent that never arrives parks it.

The foreign keys come from reflection (every constraint whose columns the applier
writes); a parent counts as there if the database has it or an earlier event of the same
batch writes it. The database's own check stays the final word (a violation it reports
is deferred the same way, see the sink).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable

import sqlalchemy as sa

from adapters.sql_apply import statements as sql

__all__ = ["Need", "Parents"]


@dataclass(frozen=True)
class Need:
    """One parent row: table, its referenced columns and their values (normalised)."""

    table: str
    columns: tuple[str, ...]
    values: tuple

    def describe(self) -> str:
        pairs = " and ".join(f"{c} = {v!r}" for c, v in zip(self.columns, self.values))
        return f"{self.table} with {pairs}"

    def token(self) -> str:
        """The same text for the row a child waits for and the row a batch writes."""
        return f"{self.table}({','.join(self.columns)})={self.values!r}"


def _normal(value: Any) -> Any:
    # CHAR(n) comes back blank-padded on some databases; numbers by driver type
    if isinstance(value, str):
        return value.rstrip(" ")
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return Decimal(value).normalize()
    return value


@dataclass(frozen=True)
class _ForeignKey:
    columns: tuple[str, ...]             # in the child table
    parent: sa.Table
    parent_columns: tuple[str, ...]


class Parents:
    """The foreign keys of the sink's tables, and the parent rows a batch needs."""

    def __init__(self, plans: Iterable):
        self._keys: dict[str, list[_ForeignKey]] = {}
        self._referenced: dict[str, set[tuple[str, ...]]] = {}    # table -> column sets children point at
        for plan in plans:
            written = set(plan.write_columns())
            for constraint in plan.sa_table.foreign_key_constraints:
                columns = tuple(constraint.column_keys)
                if not constraint.elements or not set(columns) <= written:
                    continue
                parent = constraint.elements[0].column.table
                key = _ForeignKey(columns, parent, tuple(e.column.name for e in constraint.elements))
                self._keys.setdefault(plan.object, []).append(key)
                self._referenced.setdefault(parent.fullname, set()).add(key.parent_columns)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def needs(self, steps: list) -> list[Need]:
        """The parent rows the upserts among ``steps`` point at (NULL points nowhere)."""
        found = []
        for kind, plan, row in steps:
            if kind != "upsert":
                continue
            for key in self._keys.get(plan.object, ()):
                values = tuple(row.get(c) for c in key.columns)
                if all(v is not None for v in values):
                    found.append(Need(key.parent.fullname, key.parent_columns, tuple(map(_normal, values))))
        return found

    def provided(self, steps: list) -> set[Need]:
        """The parent rows the upserts among ``steps`` write (for later events of the batch)."""
        found = set()
        for kind, plan, row in steps:
            if kind != "upsert":
                continue
            name = getattr(plan, "sa_table", None) is not None and plan.sa_table.fullname
            for columns in self._referenced.get(name, ()):
                if all(row.get(c) is not None for c in columns):
                    found.add(Need(name, columns, tuple(_normal(row[c]) for c in columns)))
        return found

    def present(self, conn, needs: Iterable[Need]) -> set[Need]:
        """Which of ``needs`` the database holds now (a query per parent table: one on PostgreSQL, one per 500 keys elsewhere)."""
        wanted: dict[tuple, set] = {}
        for need in needs:
            wanted.setdefault((need.table, need.columns), set()).add(need)
        tables = {key.parent.fullname: key.parent for keys in self._keys.values() for key in keys}
        found = set()
        for (name, columns), group in wanted.items():
            # by rows_by_keys: on PostgreSQL an IN list's generic plan may compare every row with every key
            rows = sql.rows_by_keys(conn, tables[name], list(columns), [], sorted({n.values for n in group}, key=repr),
                                    False)
            found |= {Need(name, columns, tuple(_normal(row[c]) for c in columns)) for row in rows}
        return found
