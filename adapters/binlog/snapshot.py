"""Snapshots of the ``binlog`` source: chunked primary-key reads, initial and requested.

Initial snapshot (before streaming): the binlog position is recorded first, the table is
read chunk by chunk (progress in the checkpoint), then streaming starts from the recorded
position; rows changed meanwhile come again from the binlog as later versions.

Requested snapshot (``outpost snapshot``, while streaming): a chunk is read whenever the
stream is caught up. It is held back, with a watermark (the server's binlog position
right after the chunk's SELECT), until the stream has read up to that watermark; chunk
rows whose key changed in between are dropped, because the binlog events just published
carry their newer state. So a requested snapshot never publishes an older version of a
row after a newer one (the DBLog watermark idea, simplified to one high watermark: the
stream was caught up when the chunk was read).
"""
from __future__ import annotations

import time
from typing import Iterator, Optional

from agent import snapshots
from agent.contracts import ConfigError, SourceBatch, SourceRecord

from .positions import TxnTracker, pk_from_json, pk_to_json, snapshot_position
from .server import exact_doubles, utc_timestamps

_REQUESTS_EVERY = 1.0     # seconds between looks at the snapshot request table


def binlog_order(file: str, pos: int) -> tuple:
    """Sortable (file, pos): the numeric suffix of a binlog name may outgrow its padding."""
    stem, _, number = file.rpartition(".")
    return (stem, int(number) if number.isdigit() else number, pos)


class SnapshotSupport:
    """Mixed into ``BinlogSource`` (uses its server, table metadata, context and ``_batch``)."""

    _held: Optional[dict] = None          # a requested chunk waiting for its watermark
    _next_requests = 0.0
    _next_progress_log = 0.0

    def _log_progress(self, rows: int, request: Optional[int]) -> None:
        if time.monotonic() >= self._next_progress_log:
            self._next_progress_log = time.monotonic() + 10.0
            self.context.log.info("binlog %s: snapshot of %s.%s%s: %d rows so far", self.context.name, self.schema,
                                  self.table, f" (request {request})" if request else "", rows)

    def _require_pk(self) -> None:
        if not self._pk:
            raise ConfigError([f"binlog: table {self.schema}.{self.table} has no primary key, so it cannot be "
                               "snapshotted in chunks: add a primary key or set 'snapshot: none'"])

    def _own_request(self) -> Optional[dict]:
        names = {self.table, f"{self.schema}.{self.table}", self.object}
        for req in snapshots.pending(self.context.state_dir, self.context.name):
            if req["table_name"] in names:
                return req
        return None

    def _chunk(self, cp: dict) -> tuple[list[SourceRecord], dict]:
        """The next chunk after the checkpoint's snapshot progress, and the progress after it."""
        snap = cp["snapshot"]
        after = pk_from_json(snap["after"]) if snap["after"] is not None else None
        rows = self._server.chunk(self.schema, self.table, self._names, self._pk, after, self.spec.snapshot_chunk)
        records = [SourceRecord(self.object, "snapshot", snapshot_position(snap["tag"], [r[k] for k in self._pk]),
                                after=exact_doubles(utc_timestamps(r, self._ts_cols, self._date_cols), self._doubles))
                   for r in rows]
        total = snap["rows"] + len(rows)
        if len(rows) < self.spec.snapshot_chunk:
            self.context.log.info("binlog %s: snapshot of %s.%s finished, %d rows", self.context.name, self.schema,
                                  self.table, total)
            return records, {**cp, "snapshot": None, "snap_done": max(snap.get("request") or 0, cp.get("snap_done", 0)),
                             "snap_rows": total}
        last = [rows[-1][k] for k in self._pk]
        return records, {**cp, "snapshot": {**snap, "after": pk_to_json(last), "rows": total}}

    def _initial_snapshot(self, cp: dict) -> Iterator[SourceBatch]:
        while cp.get("snapshot"):
            if self.context.stop.is_set():
                return cp
            request = cp["snapshot"].get("request")
            records, cp = self._chunk(cp)
            rows = cp.pop("snap_rows") if "snap_rows" in cp else cp["snapshot"]["rows"]
            self.context.report_progress({"phase": "snapshot", "table": self.table, "rows": rows,
                                                 "done": cp["snapshot"] is None})
            self._log_progress(rows, request)
            yield self._batch(records, cp)
            if cp["snapshot"] is None and request:
                snapshots.finish(self.context.state_dir, request)
        return cp

    # -- requested snapshots, interleaved with streaming --

    def _pick_up_request(self, base: dict) -> Optional[dict]:
        """A new snapshot progress dict when a request for this table is waiting."""
        now = time.monotonic()
        if base.get("snapshot") is not None or now < self._next_requests:
            return base.get("snapshot")
        self._next_requests = now + _REQUESTS_EVERY
        request = self._own_request()
        if request is None:
            return None
        if request["id"] <= (base.get("snap_done") or 0):
            snapshots.finish(self.context.state_dir, request["id"])    # finished just before a crash
            return None
        self._require_pk()
        self.context.log.info("binlog %s: snapshot request %d for %s.%s picked up; reading chunks of %d while "
                              "streaming", self.context.name, request["id"], self.schema, self.table,
                              self.spec.snapshot_chunk)
        return {"tag": f"request-{request['id']}", "table": self.table, "after": None, "rows": 0,
                "request": request["id"], "initial": False}

    def _read_held_chunk(self, base: dict, tracker: TxnTracker) -> None:
        """Read the next chunk (the stream is caught up) and hold it until the watermark."""
        snap = self._pick_up_request(base)
        if snap is None or self._held is not None or tracker.rows:
            return
        records, cp = self._chunk({**tracker.checkpoint(base), "snapshot": snap})
        until = self._server.master_status()
        self._held = {"records": records, "snapshot": cp["snapshot"], "snap_done": cp["snap_done"],
                      "rows": cp["snap_rows"] if "snap_rows" in cp else cp["snapshot"]["rows"],
                      "request": snap["request"],
                      "until": binlog_order(*until), "changed": set()}

    def _note_changes(self, images) -> None:
        if self._held is not None:
            self._held["changed"].update(tuple(image[k] for k in self._pk) for image in images if image)

    def _release_held(self, base: dict, tracker: TxnTracker, at: tuple) -> Iterator[SourceBatch]:
        """Publish the held chunk once the stream is at/after its watermark; returns the new base."""
        held = self._held
        if held is None or binlog_order(*at) < held["until"]:
            return base
        self._held = None
        changed = held["changed"]
        records = [r for r in held["records"] if tuple(r.after[k] for k in self._pk) not in changed]
        base = {**base, "snapshot": held["snapshot"], "snap_done": held["snap_done"]}
        done = held["snapshot"] is None
        self.context.report_progress({"phase": "streaming + snapshot", "table": self.table,
                                             "rows": held["rows"], "request": held["request"], "done": done})
        self._log_progress(held["rows"], held["request"])
        yield self._batch(records, tracker.checkpoint(base))
        if done:
            snapshots.finish(self.context.state_dir, held["request"])
        else:
            snapshots.progress(self.context.state_dir, held["request"], rows=held["rows"],
                               skipped_as_changed=len(held["records"]) - len(records))
        return base
