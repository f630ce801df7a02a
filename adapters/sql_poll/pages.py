"""The page queries of the ``sql_poll`` source, built with SQLAlchemy Core once per shape.

Every value a page depends on (the signpost, the position) is a named bound parameter, so
a shape (which also covers the Python types of its values, since bind types
follow them as for literals) is one long-lived statement: ``driver.PageReader`` compiles it once and each page
only binds values. Shapes:

- a snapshot chunk, in primary-key order: from the start, or after the last key read;
- an incremental page, in (cursor, pk) order, capped by the signpost (``cursor <= :sp``):
  everything, from a cursor value inclusive (``pk`` unknown), or after a (cursor, pk)
  position, as a row-value comparison where the dialect has one (``keyset.keyset_after``);
- a roll-up child table's changed rows, on the same terms (``rollups``).

Bind names: ``sp`` the signpost, ``c`` the cursor, ``k0``.. the primary key values.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.sql import operators

from . import keyset

__all__ = ["PageQueries"]


def _bind(name: str, expr, value: Any):
    """A named bound parameter typed as SQLAlchemy types a literal compared with ``expr``
    (the column's type, or the value's own where they differ: SQLite's text timestamps)."""
    return sa.bindparam(name, type_=expr.type.coerce_compared_value(operators.gt, value))


def _binds(exprs: Sequence, prefix: str, values: Sequence) -> list:
    return [_bind(f"{prefix}{i}", e, v) for i, (e, v) in enumerate(zip(exprs, values))]


def _keys(prefix: str, values: Sequence) -> dict:
    return {f"{prefix}{i}": v for i, v in enumerate(values)}


def _types(*values) -> tuple:
    return tuple(type(v) for v in values)


class PageQueries:
    def __init__(self, selected: list, pk: list, ck, *, row_values: bool, batch_size: int, snapshot_chunk: int):
        self.selected, self.pk, self.ck = selected, pk, ck
        self.row_values, self.batch_size, self.snapshot_chunk = row_values, batch_size, snapshot_chunk
        self._shapes: dict[tuple, Any] = {}

    def _shape(self, key: tuple, build):
        stmt = self._shapes.get(key)
        if stmt is None:
            stmt = self._shapes[key] = build()
        return stmt

    def snapshot(self, last: Optional[Sequence]) -> tuple[Any, dict]:
        """The next chunk in primary-key order after ``last`` (None: from the start)."""
        def build():
            stmt = sa.select(*self.selected).order_by(*self.pk).limit(self.snapshot_chunk)
            if last is None:
                return stmt
            return stmt.where(keyset.keyset_after(list(zip(self.pk, _binds(self.pk, "k", last))), self.row_values))
        key = ("snapshot", last is None, _types(*(last or ())))
        return self._shape(key, build), ({} if last is None else _keys("k", last))

    def incremental(self, signpost: Any, cursor: Any, pk: Optional[Sequence]) -> tuple[Any, dict]:
        """The next page after (cursor, pk) up to the signpost (pk None: from cursor on, inclusive)."""
        stmt = self._shape(("incremental", _types(signpost, cursor, *(pk or ())), pk is None), lambda: self._changes(
            self.selected, self.ck, self.pk, signpost, cursor, pk, self.batch_size))
        return stmt, self._values(signpost, cursor, pk)

    def changed_children(self, child, signpost: Any, cursor: Any, pk: Optional[Sequence]) -> tuple[Any, dict]:
        """The next changed rows of a roll-up child table, as (parent key, cursor, child pk...)."""
        stmt = self._shape(("child", child.name, _types(signpost, cursor, *(pk or ())), pk is None),
                           lambda: self._changes([child.key, child.cursor, *child.pk], child.cursor, child.pk,
                                                 signpost, cursor, pk, self.batch_size))
        return stmt, self._values(signpost, cursor, pk)

    @staticmethod
    def _values(signpost: Any, cursor: Any, pk: Optional[Sequence]) -> dict:
        values = {"sp": signpost}
        if cursor is not None:
            values["c"] = cursor
            if pk is not None:
                values.update(_keys("k", pk))
        return values

    def _changes(self, columns: list, ck, pk: list, signpost: Any, cursor: Any, pk_values: Optional[Sequence],
                 limit: int):
        conds = [ck <= _bind("sp", ck, signpost)]
        if cursor is not None:
            at = _bind("c", ck, cursor)
            if pk_values is None:
                conds.append(ck >= at)
            else:
                pairs = [(ck, at)] + list(zip(pk, _binds(pk, "k", pk_values)))
                conds.append(keyset.keyset_after(pairs, self.row_values))
        return sa.select(*columns).where(*conds).order_by(ck, *pk).limit(limit)
