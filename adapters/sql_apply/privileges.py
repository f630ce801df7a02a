"""What the database user of the ``sql_apply`` sink must be allowed to do (``outpost check``)."""
from __future__ import annotations

from adapters.sql_apply.reverse_mapping import ProcedurePlan

__all__ = ["needed", "missing_on_postgres"]


def _bookkeeping_parts(spec) -> list[tuple]:
    names = [spec.ledger.table, spec.ledger.rows_table, spec.ledger.keys_table]
    parts = [(spec.ledger.schema_, n) for n in names]
    return parts + ([(spec.marker.schema_, spec.marker.table)] if spec.marker.enabled else [])


def _bookkeeping(spec) -> list[str]:
    return [f"{schema}.{n}" if schema else n for schema, n in _bookkeeping_parts(spec)]


def needed(spec, targets) -> list[str]:
    """One line per object: the least privileges the apply user needs."""
    lines = []
    for plans in targets.values():
        for plan in plans:
            if isinstance(plan, ProcedurePlan):
                extra = f" and {plan.target.delete_name}" if plan.target.delete_name else ""
                lines.append(f"EXECUTE on procedure {plan.object}{extra}")
                continue
            rights = ["SELECT", "INSERT", "UPDATE"] + (["DELETE"] if plan.target.delete.policy == "hard" else [])
            lines.append(f"{', '.join(rights)} on {plan.object} (columns: {', '.join(plan.referenced_columns())})")
            table = getattr(plan, "sa_table", None)      # reflected when the sink opened
            parents = sorted({fk.column.table.fullname for fk in table.foreign_keys} if table is not None else ())
            if parents:
                lines.append(f"SELECT on {', '.join(parents)} (parents of {plan.object}: a child waits for its parent)")
    tables = ", ".join(_bookkeeping(spec))
    lines.append(f"SELECT, INSERT, UPDATE, DELETE on {tables}")
    if spec.ledger.create:
        lines.append(f"CREATE TABLE in schema {spec.ledger.schema_ or '(default)'} on the first run only "
                     f"(or create {tables} beforehand and set ledger.create: false)")
    return lines


def missing_on_postgres(conn, spec, targets) -> list[str]:
    """PostgreSQL can tell what the current user lacks; each gap is a problem to fix."""
    import sqlalchemy as sa
    # has_table_privilege parses its argument as SQL: an unquoted CUSTMAST means custmast
    quote = conn.dialect.identifier_preparer.quote_identifier
    problems = []
    wanted = []
    for plans in targets.values():
        for plan in plans:
            if not isinstance(plan, ProcedurePlan):
                privs = ["SELECT", "INSERT", "UPDATE"] + (["DELETE"] if plan.target.delete.policy == "hard" else [])
                wanted.append((plan.object, (plan.schema, plan.table), privs))
    wanted += [(f"{schema}.{n}" if schema else n, (schema, n), ["SELECT", "INSERT", "UPDATE", "DELETE"])
               for schema, n in _bookkeeping_parts(spec)]
    for name, (schema, table), privs in wanted:
        quoted = ".".join(quote(part) for part in (schema, table) if part)
        for priv in privs:
            ok = conn.execute(sa.text("SELECT has_table_privilege(current_user, :t, :p)"),
                              {"t": quoted, "p": priv}).scalar()
            if not ok:
                problems.append(f"the apply user lacks {priv} on {name}")
    return problems
