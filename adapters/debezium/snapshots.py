"""Ad-hoc snapshots of the ``debezium`` source: ``outpost snapshot SOURCE TABLE...`` stores a
request (core module ``agent.snapshots``, in the state dir's queue.db); the running route
turns it into a Debezium ``execute-snapshot`` signal through the embedded engine's
in-process signaler (``signal.enabled.channels=in-process``: no table in the legacy database,
no file to poll). Progress comes back as Debezium notifications (log channel), which the
engine log tailer hands to ``on_notification``: they update the route status and the request.

Snapshot kind:
* with ``signal_table`` configured (a Debezium signalling table in the source database,
  captured by the route): ``incremental``, chunked by primary key, interleaved with streaming
  and resumable after a restart (Debezium keeps its progress in the offsets);
* without it: ``blocking``, streaming pauses while the tables are read, then resumes from
  where it stopped; an interrupted blocking snapshot is not resumed (request it again).
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Optional

log = logging.getLogger("outpost.debezium.snapshots")


def snapshot_kind(source) -> str:
    return "incremental" if source.spec.signal_table else "blocking"


def execute_snapshot(source, tables: list[str], signal_id: Optional[str] = None) -> str:
    """Send ``execute-snapshot`` for ``tables`` to the route's running engine; returns the signal id."""
    if source.runner is None or not source.runner.polling.is_set():
        raise RuntimeError("the engine is not streaming yet")
    signal_id = signal_id or uuid.uuid4().hex
    data = json.dumps({"data-collections": tables, "type": snapshot_kind(source)})
    source.runner.signal(signal_id, "execute-snapshot", data)
    source.context.set_health(details={**source.context.health.details, "snapshot": {
        "kind": f"ad-hoc {snapshot_kind(source)}", "state": "REQUESTED", "table": ",".join(tables)}})
    log.info("debezium %s: requested a %s snapshot of %s (signal %s)", source.name, snapshot_kind(source),
             ", ".join(tables), signal_id)
    return signal_id


def _mine(source, table_name: str) -> bool:
    own = source.properties["table.include.list"].split(",")[0]
    return table_name in (own, own.split(".", 1)[-1])


def serve_requests(source) -> None:
    """Turn pending ``outpost snapshot`` requests for this route's table into signals."""
    try:
        from agent import snapshots
    except ImportError:      # the core module is not there: only the signal API is available
        return
    state_dir = source.context.state_dir
    try:
        requests = [r for r in snapshots.pending(state_dir, source.name) if _mine(source, r["table_name"])]
    except Exception:        # a damaged request table must never stop capture
        log.warning("debezium %s: reading snapshot requests failed", source.name, exc_info=True)
        return
    own = source.properties["table.include.list"].split(",")[0]
    for req in requests:
        if req["id"] in source._signalled:
            continue
        # An incremental snapshot already running resumes by itself after a restart (its
        # progress is in the offsets); signalling it again would start it over.
        if req["state"] == "running" and req["progress"].get("kind") == "incremental":
            source._signalled[req["id"]] = req["progress"].get("signal")
            continue
        try:
            signal_id = execute_snapshot(source, [own], f"outpost-{req['id']}-{uuid.uuid4().hex[:6]}")
        except Exception as exc:
            log.warning("debezium %s: could not start snapshot request %s: %s", source.name, req["id"], exc)
            return
        source._signalled[req["id"]] = signal_id
        snapshots.progress(state_dir, req["id"], kind=snapshot_kind(source), signal=signal_id, phase="signalled")


def on_notification(source, note: dict) -> None:
    """Snapshot notifications: progress in the log and on the open ad-hoc requests."""
    log.info("debezium %s: %s %s%s%s", source.name, note.get("kind"), note.get("state"),
             f" {note['table']}" if note.get("table") else "", f" rows={note['rows']}" if "rows" in note else "")
    # A blocking snapshot notifies as 'Initial Snapshot' too; one snapshot runs at a time.
    if not source._signalled:
        return
    try:
        from agent import snapshots
        for request_id in list(source._signalled):
            if note.get("state") == "COMPLETED":
                snapshots.finish(source.context.state_dir, request_id)
                source._signalled.pop(request_id, None)
            elif note.get("state") == "ABORTED":
                snapshots.finish(source.context.state_dir, request_id, error="Debezium aborted the snapshot")
                source._signalled.pop(request_id, None)
            else:
                snapshots.progress(source.context.state_dir, request_id, phase=note.get("state"),
                                   **({"rows": note["rows"]} if "rows" in note else {}))
    except Exception:
        log.warning("debezium %s: updating snapshot requests failed", source.name, exc_info=True)
