"""How the ``sql_apply`` sink sends a batch's planned statements, in order, inside the
apply transaction: consecutive statements of one kind on one table as one ``executemany``,
or, for upserts where ``statements.batch_fits``, as one ``INSERT ... SELECT`` per run of
distinct keys (from ``unnest`` arrays on PostgreSQL, a ``JSON_TABLE`` on MariaDB)."""
from __future__ import annotations

from adapters.sql_apply import statements as sql
from adapters.sql_apply.reverse_mapping import ProcedurePlan

__all__ = ["execute"]


def execute(conn, ops: list, stmts: dict, row_by_row: dict) -> None:
    """Consecutive statements of one kind on one table go as one executemany, in order."""
    group, current = [], None
    for kind, plan, row in ops + [(None, None, None)]:
        shape = (kind, plan.object if plan else None, tuple(row) if row else None)
        if shape != current and group:
            if current[0] in ("call", "delete") and isinstance(group[0][0], ProcedurePlan):
                p = group[0][0]
                conn.execute(p.call if current[0] == "call" else p.delete_call, [r for _, r in group])
            elif current[0] == "upsert" and current[1] in row_by_row:
                (update, params), insert = row_by_row[current[1]]
                for _, r in group:
                    if conn.execute(update, params(r)).rowcount == 0:
                        conn.execute(insert, r)
            elif current[0] == "upsert" and sql.batch_fits(conn, group[0][0].sa_table, current[2]):
                table, key = group[0][0].sa_table, group[0][0].key
                for run in _distinct_keys(group):
                    sql.insert_rows(conn, table, [r for _, r in run], key)
            else:
                stmt, params = stmts[(current[0], current[1])]
                conn.execute(stmt, [params(r) for _, r in group])
            group = []
        current = shape
        if kind is not None:
            group.append((plan, row))


def _distinct_keys(group: list) -> list[list]:
    """Consecutive runs of (plan, row) in which no key repeats, in order: one statement may
    not touch a row twice, and each write of a key stays a write (its triggers fire as often
    as there were changes)."""
    runs, seen = [[]], set()
    for plan, row in group:
        key = plan.key_of(row)
        if key in seen:
            runs.append([])
            seen = set()
        seen.add(key)
        runs[-1].append((plan, row))
    return runs
