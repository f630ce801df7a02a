"""`outpost status`: read from the queue database, so it works while the agent runs."""
from __future__ import annotations

import shutil
import time
from typing import Optional

from .cli_common import open_queue


def collect(cfg) -> dict:
    store = open_queue(cfg, max_bytes=cfg.queue.max_bytes)
    try:
        per_route = store.status()
        routes = {}
        for name, route in cfg.routes.items():
            entry = per_route.get(name, {"queue_depth": 0, "oldest_queued_age_s": None, "open_exceptions": 0})
            routes[name] = {"source": route.source, "sink": route.sink, **entry}
        return {"state_dir": str(cfg.state_dir), "state_dir_free_bytes": _free_bytes(cfg.state_dir),
                "queue_bytes": store.used_bytes(),
                "queue_quota_bytes": cfg.queue.max_bytes, "backpressure": store.over_quota(),
                "open_exceptions": store.count_exceptions(), "routes": routes}
    finally:
        store.close()


def _free_bytes(path) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# A full disk under the state directory stops capture and settling: say so before it happens.
LOW_DISK_BYTES = 64 << 20

# What log-based and file sources report about themselves (see their docs), when present.
_SOURCE_DETAILS = (("engine", "engine_state"), ("replication slot retains (bytes)", "slot_retained_bytes"),
                   ("slot warning", "slot_warning"), ("binlog", "binlog"), ("snapshot", "snapshot"),
                   ("source warning", "source_warning"), ("waiting for companion file", "waiting_for_companion"),
                   ("unknown fields dropped (since start)", "unknown_fields"))


def _ago(timestamp) -> str:
    if not timestamp:
        return "never"
    seconds = time.time() - float(timestamp)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 \
        else f"{seconds / 3600:.1f}h ago"


def _next_attempt(at) -> str:
    if not at:
        return ""
    seconds = float(at) - time.time()
    return f", next attempt in {seconds:.0f}s" if seconds > 0 else ", next attempt due now"


def render(report: dict) -> str:
    lines = [f"state: {report['state_dir']}  queue: {report['queue_bytes'] / 1e6:.1f} MB of "
             f"{report['queue_quota_bytes'] / 1e6:.0f} MB" + ("  BACKPRESSURE: capture paused" if report["backpressure"]
                                                              else "")
             + f"  open exceptions: {report['open_exceptions']}"]
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
            lines.append(f"  progress: {r['progress']}")
        for label, key in _SOURCE_DETAILS:
            if r.get(key) not in (None, "", {}):
                lines.append(f"  {label}: {r[key]}")
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
