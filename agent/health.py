"""What health reports say beyond "connected or not": how long an outage has lasted, how
many events wait behind it, and the open exceptions a person has to look at.

Pure functions over a route's stored status (``DurableQueue.status()``). An outage is
timed from the first failure the route recorded (``sink_error_since``, kept by
``note_outages`` as the status is merged), not from the watch that noticed it: a stall
detected after 5 s of a 45 s broker outage must read "for 45s", not "for 5s".
"""
from __future__ import annotations

import time
from typing import Optional

from .exception_view import age_text, describe_summary

__all__ = ["note_outages", "outage_text", "route_problems", "verdict"]

_ERRORS = ("sink_error", "source_error")


def note_outages(current: dict, update: dict, now: float) -> None:
    """Keep ``<error>_since`` in ``current`` (a route's status, about to take ``update``):
    set when an error appears, kept while it lasts (whatever its text), gone when cleared."""
    for name in _ERRORS:
        if name not in update:
            continue
        if update[name] and not current.get(name):
            current[f"{name}_since"] = now
        elif not update[name]:
            current.pop(f"{name}_since", None)


def outage_text(status: dict, name: str, now: float) -> str:
    """The stored error with how long it has lasted and what waits behind it."""
    text = str(status[name])
    since = status.get(f"{name}_since")
    facts = [f"for {age_text(max(0.0, now - float(since)))}"] if since else []
    if name == "sink_error":
        facts.append(f"{status.get('queue_depth', 0):,} event(s) wait in the local queue")
    return f"{text} ({', '.join(facts)})" if facts else text


def verdict(routes: dict, exceptions: dict, now: float) -> dict:
    """``{"health": "ok" | "degraded", "problems": [...]}`` for ``outpost status`` and the
    page: every route's problem (outages with their length) and the open exceptions."""
    problems = [f"route {name}: {p}" for name, status in routes.items() for p in route_problems(status, now)]
    line = describe_summary(exceptions)
    problems += [line] if line else []
    return {"health": "degraded" if problems else "ok", "problems": problems}


def route_problems(status: dict, now: Optional[float] = None) -> list[str]:
    """Why a route is not healthy, from its stored status (empty = healthy); an outage
    says how long it has lasted and what waits behind it."""
    now = time.time() if now is None else now
    problems = []
    if status.get("source_error"):
        problems.append(f"source: {outage_text(status, 'source_error', now)}")
    if (status.get("health") or {}).get("problem"):
        problems.append(f"source: {status['health']['problem']}")
    if status.get("sink_error"):
        problems.append(f"sink: {outage_text(status, 'sink_error', now)}")
    if status.get("backpressure"):
        problems.append("backpressure: the local queue reached its quota")
    return problems
