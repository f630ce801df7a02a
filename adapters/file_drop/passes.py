"""The two passes over one claimed file (``source`` finds, claims and settles files).

1. **Check** (``FilePasses.check``): stream the whole file, parse, apply the route's
   mapping gates (``context.validate``) and the control checks, collecting every problem.
   Nothing is emitted, so a file can still be rejected as a whole.
2. **Emit** (``FilePasses.emit``): stream it again and yield batches whose checkpoint names
   the file hash and the last record number; the pipeline commits them with the events
   (invariant 1), so after a SIGKILL the next run skips what was committed. Only what
   changed is published (``records.RecordLedger``); a record's position is
   ``key:<business key>:sha256:<digest>``, or ``sha256:<file hash>:<record>`` when the
   mapping cannot key it.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Iterator, Optional

from agent.contracts import AdapterContext, SourceBatch, SourceRecord

from .checks import Controls, parse_sidecar
from .claim import Claimed, open_nofollow
from .formats import FileRejected, LineReader, Row, problem, read_rows
from .outcomes import mapping_problem, row_exception
from .progress import Progress
from .records import RecordLedger
from .spec import SourceOptions

VERSION = 1
LOOKAHEAD = 500      # pass 2 reads this many rows ahead, to look their keys up together


class Stopped(Exception):
    """The agent stops during the check pass: the file stays claimed and is checked again."""


class FilePasses:
    def __init__(self, spec: SourceOptions, context: AdapterContext, ledger: RecordLedger,
                 sidecar_suffix: Optional[str]):
        self.spec, self.context, self.ledger, self.sidecar_suffix = spec, context, ledger, sidecar_suffix
        self.log = context.log
        self._occurred_of: tuple = (None, None)

    def rows(self, claimed: Claimed, progress: Progress, push: bool) -> Iterator[Row]:
        with open_nofollow(claimed.path) as handle:
            lines = LineReader(handle, self.spec.encoding, self.spec.max_line)
            for row in read_rows(handle, self.spec, lines, needed=self.context.columns()):
                yield row
                if row.number % 1000 == 0:
                    progress.tick(row.number, lines.bytes_read, push)
            progress.tick(progress.rows, lines.bytes_read, push)

    def _progress(self, claimed: Claimed, phase: str, size: int) -> Progress:
        return Progress(claimed.name, phase, size, self.log, self.spec.progress_log_every,
                        self.context.report_progress)

    # -- pass 1 ---------------------------------------------------------------------------

    def check(self, claimed: Claimed, state: dict) -> tuple[list, int, bool]:
        """Pass 1: (problems listed, problems counted, whether the file must be rejected)."""
        spec = self.spec
        listed, total = [], 0
        controls = Controls(spec.checks, spec.format_options) if spec.checks else None
        progress = self._progress(claimed, "checking", state["size"])
        try:
            for row in self.rows(claimed, progress, push=True):
                if controls:
                    controls.add(row)
                found = row.problems
                if row.kind == "detail" and not found and spec.all_or_nothing:
                    # per-row mode skips this (it costs a mapping and an encode per row): there
                    # the pipeline parks each mapping failure in the exception queue itself
                    found = self._gates(row, state)
                total += len(found)
                listed.extend(found[:max(0, spec.max_problems - len(listed))])
                if self.context.stop.is_set():
                    raise Stopped
        except FileRejected as exc:   # the rest of the file cannot be read: always fatal
            return [exc.problem] + listed[:spec.max_problems - 1], total + 1, True
        control_problems = controls.problems(self._sidecar(claimed)) if controls else []
        now = os.stat(claimed.path)
        if (now.st_size, now.st_mtime) != (state["size"], state["mtime"]):
            # a writer still had it open although it looked finished: never publish a moving target
            control_problems.insert(0, problem(None, "changed", "the file changed while it was being read (still "
                                               "being written? raise min_age or use a trigger file)"))
        blocking = bool(control_problems) or (spec.all_or_nothing and total > 0)
        return control_problems + listed, total + len(control_problems), blocking

    def _gates(self, row: Row, state: dict) -> list[dict]:
        try:
            return [mapping_problem(row, p) for p in self.context.validate(self._record(row, state))]
        except Exception as exc:   # a record the mapping cannot even process must not block the route
            return [problem(row.line, "mapping", f"cannot be mapped: {type(exc).__name__}: {exc}",
                            record=row.number)]

    def _sidecar(self, claimed: Claimed) -> Optional[dict]:
        if not self.sidecar_suffix:
            return None
        path = claimed.inbox.companion_in_processing(claimed, self.sidecar_suffix)
        if path is None:
            return None
        try:
            with open_nofollow(path) as handle:
                return parse_sidecar(handle.read(1 << 20).decode(self.spec.encoding))
        except (ValueError, UnicodeDecodeError) as exc:
            self.log.warning("sidecar %s is unreadable: %s", path.name, exc)
            return None

    # -- pass 2 ---------------------------------------------------------------------------

    def emit(self, claimed: Claimed, state: dict) -> Iterator[SourceBatch]:
        """Pass 2 from ``state['record']`` on. Returns the final state (``done``) once the
        last batch is committed, or None when the agent stopped half-way."""
        after, size = state["record"], state["size"]
        progress = self._progress(claimed, "publishing", size)
        records, exceptions, last, unchanged = [], [], after, state.get("unchanged", 0)
        for row, record, identity in self._identified(self.rows(claimed, progress, push=False), state):
            if row.number <= after:      # committed before a restart: make sure it is remembered
                if record is not None:
                    self._changed(record, identity)
                continue
            last = row.number
            if record is None:
                exceptions.append(row_exception(state, row, self.spec.operation))
            else:
                record = self._changed(record, identity)
                if record is None:
                    unchanged += 1
                else:
                    records.append(record)
            if len(records) + len(exceptions) >= self.spec.batch_size:
                yield SourceBatch(records, {"v": VERSION, "file": {**state, "record": last, "unchanged": unchanged}},
                                  progress.snapshot(), exceptions=exceptions)
                self.ledger.settle()      # resumed: the batch is durable
                records, exceptions = [], []
                if self.context.stop.is_set():
                    return None
        done = {**state, "record": last, "done": True, "unchanged": unchanged}
        yield SourceBatch(records, {"v": VERSION, "file": done}, {**progress.snapshot(), "bytes_pct": 100.0},
                          exceptions=exceptions)
        self.ledger.settle()
        return done

    def remember_all(self, claimed: Claimed, state: dict) -> None:
        """After a crash between the final commit and the archive move: the last batch's
        rows may not be remembered yet (idempotent: the rows are committed)."""
        if not claimed.path.exists():
            return
        progress = self._progress(claimed, "publishing", state["size"])
        for _, record, identity in self._identified(self.rows(claimed, progress, push=False), state):
            if record is not None:
                self._changed(record, identity)
        self.ledger.settle()

    def _identified(self, rows: Iterator[Row], state: dict) -> Iterator[tuple]:
        """(row, record, identity) of every detail row (record None: the row did not parse),
        read ``LOOKAHEAD`` rows at a time so that the record ledger is asked for all their
        keys in one query. What identify() raises is raised at its row, as before."""
        window: list = []
        for row in rows:
            if row.kind != "detail":
                continue
            if row.problems:
                window.append((row, None, None))
            else:
                record = self._record(row, state)
                try:
                    identity = self.context.identify(record)
                except Exception as exc:      # raised when its row is reached
                    identity = _Raise(exc)
                window.append((row, record, identity))
            if len(window) >= LOOKAHEAD:
                yield from self._prefetched(window)
                window = []
        yield from self._prefetched(window)

    def _prefetched(self, window: list) -> list:
        self.ledger.prefetch(identity[0] for _, _, identity in window if type(identity) is tuple)
        return window

    def _changed(self, record: SourceRecord, identity) -> Optional[SourceRecord]:
        """The record to publish, or None when the route already published this key with
        this content. A record the mapping can key is identified by route, business key and
        content (a re-dropped corrected file repeats the ids of its unchanged rows and
        publishes a changed row as an update of the earlier one); any other keeps its
        place in the file as identity, and the route parks it as usual."""
        if identity is None:
            return record
        if type(identity) is _Raise:
            raise identity.exc
        key, digest = identity
        prior = self.ledger.last(key)
        if prior is not None and prior[0] == digest:
            return None
        self.ledger.note(key, digest, record.after)
        position = f"key:{key}:sha256:{digest}"
        # built directly (dataclasses.replace costs twice as much, per row)
        if prior is None:
            return SourceRecord(record.object, record.operation, position, record.after, record.before,
                                record.occurred_at)
        return SourceRecord(record.object, "update", position, record.after, prior[1], record.occurred_at)

    def _occurred(self, mtime: Optional[float]) -> Optional[dt.datetime]:
        """When the file's records happened: its mtime (converted once per file, not per row)."""
        if self._occurred_of[0] != mtime:
            self._occurred_of = (mtime, dt.datetime.fromtimestamp(mtime, dt.timezone.utc) if mtime else None)
        return self._occurred_of[1]

    def _record(self, row: Row, state: dict) -> SourceRecord:
        occurred = self._occurred(state.get("mtime"))
        # The object is the file spec, not the file name: ids then depend on the content
        # alone, so the same record dropped under two names is one event. The name and line
        # ride along as pseudo-columns (mappable, and shown in the exception queue).
        # The row's own dict becomes the record's (a row is read for one record only).
        after = row.values
        after["_file"], after["_line"] = state["name"], row.line
        return SourceRecord(object=self.spec.pattern, operation=self.spec.operation,
                            position=f"sha256:{state['sha']}:{row.number}", after=after, occurred_at=occurred)


class _Raise:
    """What identify() raised for a row read ahead, raised when that row is reached."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc
