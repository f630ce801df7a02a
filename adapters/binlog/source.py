"""``binlog`` source: MariaDB/MySQL row-based binlog capture with ``mysql-replication``.

Why in Python rather than through Debezium (docs/binlog.md, notes §4): the binlog position
is committed in the same SQLite transaction as the events it covers (invariant 1), so a
restart resumes exactly after the last queued row, even in the middle of a transaction.
Positions and the checkpoint are described in ``positions``.

One route reads one table. ``batches`` streams until the server has been idle for
``idle_return`` seconds (the server's heartbeat tells us we are caught up) or the agent
stops; the binlog connection stays open between calls. Initial snapshots run before
streaming; requested ones (``outpost snapshot``) are read one chunk at a time while
streaming, each held back until the stream reaches its watermark (see ``snapshot``).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import zlib
from typing import Any, Iterator, Mapping, Optional

import pymysql
import sqlalchemy as sa
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, RotateEvent,
                                      XidEvent)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from agent.contracts import AdapterContext, ConfigError, Source, SourceBatch, SourceRecord, TransientError

from .positions import (TIMESTAMP_TYPES, TxnTracker, expire_seconds, is_commit_query, new_checkpoint,
                        privilege_problems, retention_report, settings_problems, valid_checkpoint)
from .server import CONFIG_ERRORS, Server, connection_settings, exact_doubles, utc_timestamps
from .snapshot import SnapshotSupport
from .spec import SourceOptions

__all__ = ["BinlogSource", "Source"]

_EVENTS = [WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent,
           HeartbeatLogEvent, MariadbGtidEvent, GtidEvent]
_OPERATION = {WriteRowsEvent: "create", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}
_DML = {"INSERT", "UPDATE", "DELETE", "REPLACE"}
_POSITION_EVERY = 5.0     # seconds between position-only commits while other tables are busy
_RETENTION_EVERY = 60.0   # seconds between binlog retention checks
_CHUNK_EVERY = 0.25       # requested snapshot: a chunk at least this often when the stream is never idle
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)   # its reconnect chatter


class BinlogSource(SnapshotSupport, Source):
    options_model = SourceOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        url = sa.engine.make_url(self.spec.url)
        self.schema = self.spec.schema_ or url.database
        if not self.schema:
            raise ConfigError(["binlog: name the database in the url (mysql+pymysql://user@host/erp) or set 'schema'"])
        self.table = self.spec.table
        self.object = f"{self.schema}.{self.table}" if self.spec.schema_ else self.table
        self.settings = connection_settings(self.spec.url, self.spec.connect_timeout)
        where = f"{self.settings['host']}:{self.settings['port']} {self.schema}.{self.table}"
        self.where = where
        self.server_id = self.spec.server_id or 1_000_000 + zlib.crc32(
            f"{context.name}/{self.schema}.{self.table}/{context.state_dir}".encode()) % 3_000_000_000
        self._server = Server(self.settings, where)
        marker = self.spec.echo_marker_table
        self._marker = (tuple(marker.split(".", 1)) if "." in marker else (self.schema, marker)) if marker else None
        self._echoes = 0                # rows of Outpost's own apply transactions, not captured
        self._columns: Optional[list[tuple[str, str, bool]]] = None
        self._stream: Optional[BinLogStreamReader] = None
        self._tracker: Optional[TxnTracker] = None
        self._committed: Any = None     # the checkpoint the open stream's state corresponds to
        self._next_retention = self._last_position_commit = 0.0
        self._warned_at = 0.0
        self._retention: dict = {}      # the last retention summary, shown with every batch's progress
        self._progress: dict = {}

    # -- lifecycle --

    def open(self) -> None:
        if self._columns is None:
            self._columns = self._server.columns(self.schema, self.table)
            names = [c for c, _, _ in self._columns]
            self._names = names
            self._pk = [c for c in self._server.primary_key(self.schema, self.table) if c in names]
            self._ts_cols = [c for c, typ, _ in self._columns if typ == "timestamp"]
            self._date_cols = [c for c, typ, _ in self._columns if typ in ("date", "datetime", "timestamp")]
            self._doubles = self._server.approximate_columns(self.schema, self.table)

    def close(self) -> None:
        self._close_stream()
        self._server.close()
        self._columns = None

    def _close_stream(self) -> None:
        stream, self._stream, self._committed, self._held = self._stream, None, None, None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass

    def check(self) -> list[str]:
        problems: list[str] = []
        try:
            problems += settings_problems(self._server.variables())
            problems += privilege_problems(self._server.grants(), self.schema, self.table)
            self.open()
            if not self._columns:
                problems.append(f"table {self.schema}.{self.table} not found on {self.where.split()[0]}")
            elif not self._pk:
                streaming_only = self.spec.snapshot == "none"
                problems.append(("warning: " if streaming_only else "")
                                + f"table {self.schema}.{self.table} has no primary key: add one (ALTER TABLE ... "
                                "ADD PRIMARY KEY); snapshots read the table in primary-key chunks"
                                + (" (streaming alone works)" if streaming_only else " or set 'snapshot: none'"))
            if expire_seconds(self._server.variables()) is None:
                problems.append("warning: binlogs never expire automatically: disk use grows; set "
                                "binlog_expire_logs_seconds longer than any planned agent downtime")
        except (ConfigError, TransientError) as exc:
            problems += getattr(exc, "problems", None) or [str(exc)]
        return problems

    # -- capture --

    def batches(self, checkpoint: Any) -> Iterator[SourceBatch]:
        self.open()
        if not self._columns:
            raise ConfigError([f"binlog: table {self.schema}.{self.table} not found on {self.where.split()[0]}"])
        cp = checkpoint
        if cp is not None and not valid_checkpoint(cp):
            raise ConfigError([f"binlog {self.where}: unrecognised checkpoint {cp!r}; reset it with "
                               "`outpost snapshot --reset-checkpoint ROUTE` (see docs/binlog.md)"])
        if cp is None:
            snapshot = self.spec.snapshot != "none"
            request = self._own_request() if snapshot else None      # served by the initial snapshot
            cp = self._fresh_checkpoint(snapshot, snap_done=0, request=request and request["id"])
            yield self._batch([], cp)
        elif self._stream is None or cp != self._committed:
            replaced = self._verify_position(cp)
            if replaced is not None:
                cp = replaced
                yield self._batch([], cp)
        if cp.get("snapshot") and cp["snapshot"].get("initial"):
            cp = yield from self._initial_snapshot(cp)
            if cp.get("snapshot"):      # stopped half-way: the checkpoint resumes it
                return
        if self._stream is None or cp != self._committed:
            self._start_stream(cp)
        yield from self._stream_batches(cp)

    def _fresh_checkpoint(self, snapshot: bool, snap_done: int, request: Optional[int] = None) -> dict:
        """Record the position first, then snapshot: what changes meanwhile comes again from the log."""
        file, pos = self._server.master_status()
        snap = None
        if snapshot:
            self._require_pk()
            snap = {"tag": f"initial@{file}:{pos}", "table": self.table, "after": None, "rows": 0,
                    "request": request, "initial": True}
            self.context.log.info("binlog %s: snapshot of %s.%s starts; streaming will resume from %s:%d",
                                  self.context.name, self.schema, self.table, file, pos)
        return new_checkpoint(file, pos, snap, snap_done)

    def _verify_position(self, cp: dict) -> Optional[dict]:
        """Compare the stored position with the server; a new checkpoint if we re-snapshot."""
        logs = self._server.binary_logs()
        report = self._report_retention(cp, logs)
        if not report.get("purged"):
            return None
        request = self._own_request()
        if self.spec.snapshot == "when_needed" or request is not None:
            self.context.log.warning("binlog %s: stored position %s:%s was purged from the server; taking a new "
                                     "snapshot of %s.%s (changes in the gap are covered by it)",
                                     self.context.name, cp["file"], cp["pos"], self.schema, self.table)
            return self._fresh_checkpoint(True, cp.get("snap_done", 0), request and request["id"])
        raise ConfigError([
            f"binlog {self.where}: the stored position {cp['file']}:{cp['pos']} is no longer on the server "
            f"(oldest retained binlog: {report.get('oldest_retained')}); the changes in between cannot be read "
            f"from the log. Recover with a re-snapshot: `outpost snapshot {self.context.name} {self.table}` and "
            "restart the agent (or set 'snapshot: when_needed'); see docs/binlog.md, 'Recovery'"])

    def _batch(self, records: list, cp: dict) -> SourceBatch:
        # Resuming the generator after this yield means the batch is durable.
        self._committed = cp
        snap = cp.get("snapshot")
        progress = {"phase": "snapshot" if snap and snap.get("initial") else "streaming",
                    "position": f"{cp['file']}:{cp['pos']}" + (f"+{cp['rows']}" if cp["rows"] else ""),
                    "gtid": cp.get("gtid")}
        if self._marker:
            progress["own_changes_skipped"] = self._echoes
        if snap:
            progress["snapshot"] = {"table": self.table, "rows": snap["rows"], "request": snap.get("request")}
        self._progress = progress
        return SourceBatch(records, cp, {**progress, **self._retention})

    # -- streaming --

    def _start_stream(self, cp: dict) -> None:
        self._close_stream()
        # Without ROW/FULL, changes are missing from the log or lack their images: stop, say why.
        fatal = [p for p in settings_problems(self._server.variables()) if not p.startswith("warning:")]
        if fatal:
            raise ConfigError([f"binlog {self.where}: {p}" for p in fatal])
        settings = {**self.settings, "read_timeout": max(30, int(self.spec.heartbeat * 4))}
        self._stream = BinLogStreamReader(
            connection_settings=settings, server_id=self.server_id, log_file=cp["file"], log_pos=cp["pos"],
            resume_stream=True, blocking=True, only_events=_EVENTS,
            only_schemas=sorted({self.schema, *(self._marker[:1] if self._marker else ())}),
            only_tables=[self.table] + ([self._marker[1]] if self._marker else []),
            slave_heartbeat=self.spec.heartbeat, enable_logging=False,
            # parse a table's map event once per table id (2/3 of the decode time otherwise);
            # DDL and every switch to another binlog file clear that cache below
            freeze_schema=True)
        self._tracker = TxnTracker(cp["file"], cp["pos"], skip=cp["rows"], gtid=cp.get("gtid"))
        self._committed = cp
        self._next_retention = time.monotonic() + _RETENTION_EVERY
        self._report_retention(cp, self._server.binary_logs())

    def _fetch(self):
        try:
            return self._stream.fetchone()
        except pymysql.MySQLError as exc:
            self._close_stream()
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            text = f"binlog {self.where}: ({code}) {exc.args[1] if len(exc.args) > 1 else exc}"
            if code == 1236:   # the server cannot serve the requested position
                raise ConfigError([text + f"; recover with `outpost snapshot {self.context.name} {self.table}` "
                                          "and a restart (docs/binlog.md, 'Recovery')"]) from None
            if code in CONFIG_ERRORS:
                raise ConfigError([text + " - fix the user or its grants (docs/binlog.md)"]) from None
            raise TransientError(f"{text}; reconnecting from the last queued position") from None

    def _stream_batches(self, cp: dict) -> Iterator[SourceBatch]:
        tracker, base = self._tracker, {k: cp.get(k) for k in ("v", "snapshot", "snap_done")}
        batch: list[SourceRecord] = []
        started = last_activity = time.monotonic()
        first_at = last_chunk = 0.0
        read_to = None                 # a position up to which every event has been handled
        while not self.context.stop.is_set():
            event = self._fetch()
            now = time.monotonic()
            kind = type(event)
            if event is None:          # end of a non-blocking dump: reopen on the next call
                self._close_stream()
                break
            if kind in _OPERATION:
                if self._marker and (event.schema, event.table) == self._marker:
                    tracker.echo = True            # written first by the applier: its transaction
                    continue
                if event.schema != self.schema or event.table != self.table:
                    continue
                if tracker.echo:                   # Outpost applied it: not a new change (no echo)
                    for _ in event.rows:
                        tracker.row()              # counted all the same: positions stay the same
                    self._echoes += len(event.rows)
                    continue
                if not batch:
                    first_at = now
                self._add_rows(event, batch, tracker)
                last_activity = now
                if len(batch) >= self.spec.batch_size:
                    yield self._batch(batch, tracker.checkpoint(base))
                    batch = []
                continue
            if kind is XidEvent:
                tracker.commit(event.packet.log_pos)
                read_to = (tracker.file, tracker.boundary)
            elif kind is QueryEvent:
                verdict = is_commit_query(event.query)
                if verdict:
                    tracker.commit(event.packet.log_pos)
                    read_to = (tracker.file, tracker.boundary)
                    if event.query.strip().upper() != "COMMIT":     # DDL: table definitions may change
                        self._stream.table_map = {}
                        self._statement_logged(event)
                elif verdict is False:
                    tracker.begin()
            elif kind in (MariadbGtidEvent, GtidEvent):
                tracker.begin(getattr(event, "gtid", None))
            elif kind is RotateEvent:
                if event.next_binlog != tracker.file:
                    # table ids restart after a server restart, whose old binlog ends without the
                    # real rotate on which the library clears its cache: clear it on every switch
                    self._stream.table_map = {}
                tracker.rotate(event.next_binlog, event.position)
            elif kind is HeartbeatLogEvent:
                read_to = (event.ident, event.packet.log_pos)
            idle = kind is HeartbeatLogEvent
            if not idle:
                last_activity = now
            if batch and tracker.rows == 0 and (idle or now - first_at >= self.spec.max_delay):
                yield self._batch(batch, tracker.checkpoint(base))
                batch = []
            if self._held is not None and read_to is not None and not batch:
                base = yield from self._release_held(base, tracker, read_to)
                if self._held is None:
                    last_activity = now
            if tracker.rows == 0 and self._held is None and (idle or now - last_chunk >= _CHUNK_EVERY):
                self._read_held_chunk(base, tracker)       # a requested snapshot's next chunk, if any
                if self._held is not None:
                    last_chunk = last_activity = now
            if now >= self._next_retention:
                self._next_retention = now + _RETENTION_EVERY
                self._report_retention(tracker.checkpoint(base), self._server.binary_logs())
            if tracker.rows == 0 and (now - last_activity >= self.spec.idle_return
                                      or now - started >= self.spec.max_pass):
                break
        if batch:
            yield self._batch(batch, tracker.checkpoint(base))
        elif self._stream is not None and tracker.checkpoint(base) != self._committed and tracker.rows == 0 \
                and time.monotonic() - self._last_position_commit >= _POSITION_EVERY:
            # keep the stored position fresh while other tables are busy (retention, restart cost)
            self._last_position_commit = time.monotonic()
            yield self._batch([], tracker.checkpoint(base))

    def _statement_logged(self, event) -> None:
        """A session with binlog_format=STATEMENT/MIXED wrote DML: those rows cannot be captured."""
        words = event.query.split(None, 3)
        default_db = (getattr(event, "schema", b"") or b"").decode(errors="replace")
        if words and words[0].upper() in _DML and self.table in event.query \
                and (default_db == self.schema or self.schema in event.query):
            message = (f"a change to {self.schema}.{self.table} was logged as a statement, not as rows (a session "
                       "with binlog_format STATEMENT/MIXED): it cannot be captured; fix that writer's session "
                       f"and re-snapshot (`outpost snapshot {self.context.name} {self.table}`)")
            self.context.log.error("binlog %s: %s", self.context.name, message)
            self.context.set_health(warning=message)

    def _add_rows(self, event, batch: list, tracker: TxnTracker) -> None:
        operation = _OPERATION[type(event)]
        occurred = dt.datetime.fromtimestamp(event.timestamp, dt.timezone.utc)
        ts_cols = [c.name for c in event.columns if c.type in TIMESTAMP_TYPES]
        for row in event.rows:
            index = tracker.row()
            if index is None:          # queued before the restart
                continue
            if operation == "update":
                before, after = row["before_values"], row["after_values"]
            elif operation == "create":
                before, after = None, row["values"]
            else:
                before, after = row["values"], None
            if ts_cols:
                before = before and utc_timestamps(before, ts_cols)
                after = after and utc_timestamps(after, ts_cols)
            if self._doubles:
                before = before and exact_doubles(before, self._doubles)
                after = after and exact_doubles(after, self._doubles)
            if self._held is not None:
                self._note_changes((before, after))
            batch.append(SourceRecord(self.object, operation, tracker.position(index), after=after, before=before,
                                      occurred_at=occurred))

    def _report_retention(self, cp: dict, logs) -> dict:
        report = retention_report(cp["file"], cp["pos"], logs, expire_seconds(self._server.variables()),
                                  self.spec.retention_warn_bytes)
        self._retention = {"binlog_behind": f"{report.get('bytes_behind', '?')} bytes in "
                                            f"{report.get('files_behind', '?')} newer file(s)",
                           "oldest_retained": report.get("oldest_retained")}
        if report.get("warning"):
            self._retention["warning"] = report["warning"]
        self.context.set_health(lag_bytes=report.get("bytes_behind"), warning=report.get("warning"),
                                retention_s=report.get("expire_seconds"),
                                details={k: v for k, v in report.items() if k not in ("bytes_behind", "warning")})
        self.context.report_progress({**self._progress, **self._retention})
        if report.get("warning") and not report.get("purged") and time.monotonic() - self._warned_at > 600:
            self._warned_at = time.monotonic()
            self.context.log.warning("binlog %s: %s", self.context.name, report["warning"])
        return report


Source = BinlogSource
