"""What the ``sql_apply`` sink decides for each event before any write: the local rows a
batch's conflict checks compare with (read ``FOR UPDATE``), the schema's gates, and the
statements of one event (all or none: ``ApplyRejected`` says why not). Pure but for the
prefetch's read."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Optional

from adapters.sql_apply import statements as sql
from adapters.sql_apply.reverse_mapping import ApplyRejected, ProcedurePlan, TablePlan, side_by_side
from agent.contracts import QueuedEvent
from agent.mapping import gate_problems

__all__ = ["prefetch", "gate_failure", "plan_event", "check_conflict"]


def _plain(value: Any) -> str:
    return f"{value:f}" if isinstance(value, Decimal) else repr(value)


def prefetch(conn, targets: dict, todo: list, now) -> dict:
    """Current local rows of the keys this batch touches, for conflict checks."""
    wanted: dict[str, tuple[TablePlan, set]] = {}
    for event, payload in todo:
        image = payload.get("after") or payload.get("before")
        for plan in targets[event.entity]:
            # without a before image there is no base to compare (see TablePlan.conflict)
            if (isinstance(plan, TablePlan) and plan.target.conflict.mode != "none" and image
                    and (payload.get("before") is not None or plan.version_column)):
                try:
                    wanted.setdefault(plan.object, (plan, set()))[1].add(plan.key_values(image, now))
                except Exception:
                    pass        # reported when the event is planned
    local = {}
    lock = conn.dialect.name != "sqlite"
    for name, (plan, keys) in wanted.items():
        for row in sql.rows_by_keys(conn, plan.sa_table, plan.key, plan.referenced_columns(),
                                    sorted(keys, key=repr), lock):
            local[(name, plan.key_of(row))] = dict(row)
    return local


def gate_failure(gated: list, codes, event: QueuedEvent, payload: dict) -> Optional[str]:
    """The schema's gates, as outbound rows pass them (non-negative amounts, ISO 4217,
    known codes): an event that breaks one is parked, never applied."""
    image = payload.get("after") if event.operation != "delete" else None
    if not image:
        return None
    broken = [f"{spec.name} {_plain(image[spec.name])}: {message}" for spec in gated
              if image.get(spec.name) is not None
              for _, message in gate_problems(spec, image[spec.name], codes)]
    return f"gate: {event.entity} {event.key}: " + "; ".join(broken) if broken else None


def plan_event(plans: list, event: QueuedEvent, payload: dict, local: dict, now) -> list:
    """The statements of one event, all or none (raises ApplyRejected)."""
    before, after = payload.get("before"), payload.get("after")
    steps, updates = [], []
    for plan in plans:
        if isinstance(plan, ProcedurePlan):
            if event.operation != "delete" or plan.target.delete_name:
                steps.append(("delete" if event.operation == "delete" else "call", plan,
                              plan.args(after if event.operation != "delete" else before or after, now)))
            continue
        if event.operation == "delete":
            image = before or after
            if image is None or plan.target.delete.policy == "ignore":
                continue
            key = plan.key_values(image, now)
            check_conflict(plan, local.get((plan.object, key)), payload, now)
            row = dict(zip(plan.key, key))
            if plan.target.delete.policy == "hard":
                steps.append(("delete", plan, row))
                updates.append(((plan.object, key), None))
            else:
                row[plan.target.delete.column] = plan.target.delete.value
                steps.append(("soft", plan, row))
            continue
        if after is None:
            raise ApplyRejected(f"{event.entity} {event.operation} event without an after image")
        row = plan.row(after, now, (payload.get("metadata") or {}).get("version"))
        key = plan.key_of(row)
        current = local.get((plan.object, key))
        check_conflict(plan, current, payload, now)
        steps.append(("upsert", plan, row))
        updates.append(((plan.object, key), {**(current or {}), **row}))
    for where, row in updates:          # later events of the batch see this one's result
        local[where] = row
    return steps


def check_conflict(plan: TablePlan, current, payload: dict, now) -> None:
    reason = plan.conflict(current, payload.get("before"), now, (payload.get("metadata") or {}).get("version"))
    if reason:
        raise ApplyRejected(f"conflict: {plan.entity} {plan.object}: {reason} (outpost queue show: the local "
                            "row and the event side by side)",
                            {"conflict": {"table": plan.object, "reason": reason,
                                          "side_by_side": side_by_side(plan, current, payload, now)}})
