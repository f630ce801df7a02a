"""`outpost status`: read from the queue database, so it works while the agent runs."""
from __future__ import annotations

import shutil
import time
from typing import Optional

from .cli_common import open_queue
from .exception_view import summary
from .ha import STATUS_ROW
from .health import verdict
from .progress import describe


def collect(cfg) -> dict:
    store = open_queue(cfg, max_bytes=cfg.queue.max_bytes)
    try:
        per_route = store.status()
        routes = {}
        for name, route in cfg.routes.items():
            entry = per_route.get(name, {"queue_depth": 0, "oldest_queued_age_s": None, "open_exceptions": 0})
            routes[name] = {"source": route.source, "sink": route.sink, **entry}
            routes[name]["progress_text"] = describe(entry.get("progress"))     # the page shows it as is
        ha = store.status_of(STATUS_ROW) if cfg.ha is not None else None
        now = time.time()
        exceptions = summary(store.reader(), now)
        return {"state_dir": str(cfg.state_dir), "state_dir_free_bytes": _free_bytes(cfg.state_dir), "ha": ha,
                "queue_bytes": store.used_bytes(), "queue_waiting_bytes": store.pending_bytes(),
                "queue_quota_bytes": cfg.queue.max_bytes, "backpressure": store.over_quota(),
                "open_exceptions": exceptions["count"], "exceptions": exceptions, "routes": routes,
                **verdict(routes, exceptions, now)}
    finally:
        store.close()


def _free_bytes(path) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# A full disk under the state directory stops capture and settling: say so before it happens.
LOW_DISK_BYTES = 64 << 20

def _ago(timestamp) -> str:
    if not timestamp:
        return "never"
    seconds = time.time() - float(timestamp)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 \
        else f"{seconds / 3600:.1f}h ago"


def _health_lines(health) -> list[str]:
    """The source's own report (``Health``), whatever the adapter: state, lag, problem,
    warning and details as it labelled them."""
    if not health:
        return []
    facts = [health.get("state") or "ok"]
    if health.get("lag_seconds") is not None:
        facts.append(f"{health['lag_seconds']:.1f}s behind")
    if health.get("lag_bytes") is not None:
        facts.append(f"{health['lag_bytes']} bytes of change log not yet read")
    lines = [f"  source: {', '.join(facts)}"]
    lines += [f"  {label}: {health[label]}" for label in ("problem", "warning") if health.get(label)]
    lines += [f"  {label}: {value}" for label, value in (health.get("details") or {}).items()
              if value not in (None, "", {}, [])]
    return lines


def _plain(progress) -> str:
    """A source's own progress fields as 'phase incremental, cursor ...', not a dict's repr."""
    if not isinstance(progress, dict):
        return str(progress)
    return ", ".join(f"{name} {value}" for name, value in progress.items() if value not in (None, ""))


def _next_attempt(at) -> str:
    if not at:
        return ""
    seconds = float(at) - time.time()
    return f", next attempt in {seconds:.0f}s" if seconds > 0 else ", next attempt due now"


def render(report: dict) -> str:
    lines = [f"state: {report['state_dir']}  queue: {report['queue_waiting_bytes'] / 1e6:.1f} MB waiting of a "
             f"{report['queue_quota_bytes'] / 1e6:.0f} MB quota (file {report['queue_bytes'] / 1e6:.1f} MB)"
             + ("  BACKPRESSURE: capture paused" if report["backpressure"]
                                                              else "")
             + f"  open exceptions: {report['open_exceptions']}"]
    if report.get("health"):
        lines.append(f"health: {report['health']}")
        lines += [f"  - {problem}" for problem in report.get("problems", [])]
    ha = report.get("ha")
    if ha:
        last = ha.get("last_handover") or {}
        lines.append(f"ha: group {ha.get('group')}, this agent is {str(ha.get('role', '?')).upper()} since "
                     f"{_ago(ha.get('since'))} ({ha.get('agent')}), group last answered {ha.get('lease_age_s')}s ago "
                     f"(lease {ha.get('lease_s')}s), {ha.get('handovers', 0)} handover(s)"
                     + (f", last: {last.get('from')} -> {last.get('to')} {_ago(last.get('at'))} ({last.get('why')})"
                        if last else ""))
        windows = [(name, (r.get("health") or {}).get("retention_s")) for name, r in report["routes"].items()]
        windows = [(name, s) for name, s in windows if s]
        if windows:
            name, seconds = min(windows, key=lambda pair: pair[1])
            lines.append(f"ha: a failover may wait at most {seconds / 3600:.1f} h before changes are lost "
                         f"(route {name}: how long its source keeps its change log)")
    free = report.get("state_dir_free_bytes")
    if free is not None and free < LOW_DISK_BYTES:
        lines.append(f"WARNING: only {free / 1e6:.1f} MB free under the state directory; capture and delivery "
                     "stop (and retry) while the disk is full")
    for name, r in report["routes"].items():
        age = r.get("oldest_queued_age_s")
        lines.append(f"route {name} ({r['source']} -> {r['sink']})")
        lines.append(f"  capture: {r.get('capture_state', 'not run yet')}, last change {_ago(r.get('last_capture_at'))}"
                     f", captured {r.get('captured_total', 0)}, rejected {r.get('rejected_total', 0)}"
                     + _next_attempt(r.get("next_attempt_at")))
        if r.get("progress"):
            lines.append(f"  progress: {describe(r['progress']) or _plain(r['progress'])}")
        lines.extend(_health_lines(r.get("health")))
        lines.append(f"  queue: {r['queue_depth']} waiting" + (f", oldest {age:.1f}s" if age is not None else ""))
        if r.get("waiting"):
            lines.append(f"  held back: {r['waiting']} event(s) wait, the oldest for {r['oldest_waiting_s']:.0f}s: "
                         f"{r.get('waiting_reason')}")
        lines.append(f"  publish: last {_ago(r.get('last_publish_at'))}, published {r.get('published_total', 0)}, "
                     f"dead-lettered {r.get('dead_lettered_total', 0)}, open exceptions {r['open_exceptions']}")
        for label, key in (("source error", "source_error"), ("sink error", "sink_error")):
            if r.get(key):
                lines.append(f"  {label}: {r[key]}")
    return "\n".join(lines)
