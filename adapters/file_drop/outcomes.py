"""What the operator sees about a file: reports written next to it and exception-queue
entries (pure: dicts in, dicts out)."""
from __future__ import annotations

import datetime as dt

from .formats import Row, problem


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_report(state: dict, problems: list, total: int, outcome: str) -> dict:
    """``<name>.error.json`` / ``<name>.rejected-rows.json``: every problem listed."""
    return {"file": state["name"], "sha256": state.get("sha"), "inbox": state["inbox"], "outcome": outcome,
            "at": now_text(), "problems_total": total, "problems_listed": len(problems), "problems": problems}


def file_exception(state: dict, problems: list, total: int, error_folder: str) -> dict:
    """One exception-queue entry for a whole rejected file (the report has the full list)."""
    first = problems[0]
    where = f"line {first['line']}: " if first.get("line") else ""
    summary = f"{total} problem(s); first: {where}{first['message']}"
    return {"stage": "file", "reason": f"file {state['name']} rejected: {summary}"[:1000], "context": {
        "file": state["name"], "sha256": state.get("sha"), "inbox": state["inbox"],
        "error_folder": error_folder, "error_report": f"{state['name']}.error.json",
        "problems_total": total, "problems": problems[:50]}}


def row_exception(state: dict, row: Row, operation: str) -> dict:
    """A row that cannot be parsed, in per-row mode (no event could be built from it)."""
    reason = "; ".join(f"{p['column'] or 'line'}: {p['message']}" for p in row.problems)
    return {"stage": "file", "reason": f"{state['name']} record {row.number} (line {row.line}): {reason}"[:1000],
            "operation": operation, "context": {
                "file": state["name"], "sha256": state["sha"], "record": row.number, "line": row.line,
                "position": f"sha256:{state['sha']}:{row.number}", "values": row.values,
                "problems": row.problems}}


def mapping_problem(row: Row, found: dict) -> dict:
    """A problem from the route's mapping gates, located in the file."""
    field = found.get("field")
    message = f"{field}: {found.get('message')}" if field else str(found.get("message"))
    return problem(row.line, found.get("rule", "mapping"), message, found.get("column"), found.get("value"),
                   row.number)
