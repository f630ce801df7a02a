"""How the ``sql_apply`` sink sends a batch's planned statements, in order, inside the
apply transaction: consecutive statements of one kind on one table as one ``executemany``."""
from __future__ import annotations

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
            else:
                stmt, params = stmts[(current[0], current[1])]
                conn.execute(stmt, [params(r) for _, r in group])
            group = []
        current = shape
        if kind is not None:
            group.append((plan, row))
