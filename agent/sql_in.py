"""Many keys, few statements: ``IN`` lists of at most 500 values (old SQLite builds allow
999 bound parameters). Asking one query per key cost a statement per row."""
from __future__ import annotations

from typing import Iterator, Sequence

__all__ = ["rows_in"]

CHUNK = 500


def rows_in(db, sql: str, values: Sequence, head: tuple = ()) -> Iterator[tuple]:
    """Rows of ``sql``, whose ``{}`` stands for the IN list, for all of ``values``;
    ``head``: the parameters before the list."""
    for start in range(0, len(values), CHUNK):
        chunk = values[start:start + CHUNK]
        yield from db.execute(sql.format(",".join("?" * len(chunk))), (*head, *chunk))
