"""``file_drop`` source: watched inboxes of legacy finance exports (see docs/file_drop.md).

One file at a time per route, in three steps:

1. **Find and claim.** watchdog events only *wake* a scan (events are lost on network
   shares, on Windows and across restarts), so inboxes are also scanned at start and
   every ``rescan_every``. A file is finished when ``min_age`` old with a stable size
   over two looks (and its trigger / sidecar is there); it is claimed by an atomic
   rename into ``processing/<owner>/``: two agents can never both read it.
2. **Check (pass 1).** Stream the whole file: parse, apply the route's mapping gates
   (``context.validate``) and the control checks, collecting every problem. Nothing is
   emitted yet, so a file can still be rejected as a whole.
3. **Emit (pass 2).** Stream it again and yield batches whose checkpoint names the file
   hash and the last record number; the pipeline commits them with the events
   (invariant 1), so after a SIGKILL the next run skips what was committed. Event
   positions are ``sha256:<hash>:<record>``: the same record always gets the same id.
   Only when the generator is resumed after the final batch (the batch is durable) is
   the file recorded in the ledger and moved to ``archive/YYYY-MM-DD/``.

Checkpoint: ``{"v": 1, "file": null}`` when idle, else ``{"v": 1, "file": {"inbox",
"name", "sha", "record", "mtime", "done"?, "outcome"?}}``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import stat
import threading
import time
from typing import Any, Iterator, Mapping, Optional


from agent.contracts import AdapterContext, ConfigError, Source, SourceBatch, SourceRecord, TransientError

from .checks import Controls, parse_sidecar
from .claim import Claimed, Inbox, Readiness, agent_id, network_fs, open_nofollow, route_id, write_json
from .formats import FileRejected, LineReader, Row, problem, read_rows
from .outcomes import file_exception, file_report, mapping_problem, now_text, row_exception
from .progress import Progress
from .records import RecordLedger
from .spec import SourceOptions
from .watch import start_observer

VERSION = 1
IDLE = {"v": VERSION, "file": None}


class FileDropSource(Source):
    options_model = SourceOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        self.log = context.log
        self.wake = threading.Event()
        self.readiness = Readiness(self.spec.min_age, self.spec.settle)
        self.inboxes: list[Inbox] = []
        self._observer = None
        self.ledger: Optional[RecordLedger] = None
        self._last_scan = 0.0
        self._waiting: list[str] = []
        checks = self.spec.checks
        self.sidecar_suffix = checks.sidecar_suffix if checks and checks.source == "sidecar" else None
        self.companions = tuple(s for s in (self.spec.trigger, self.sidecar_suffix) if s)

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        if self.inboxes:
            return
        spec_id = hashlib.sha1(f"{self.spec.pattern}|{self.spec.format}".encode()).hexdigest()[:8]
        owner = f"{agent_id(self.context.state_dir)}-{spec_id}"
        # what this route published is its own: the same bytes may be meant for another route
        route = route_id(self.context.route) if self.context.route else spec_id
        inboxes = [Inbox(root, self.spec.pattern, owner, self.companions, route) for root in self._roots()]
        self.ledger = RecordLedger(os.path.join(self.context.state_dir, "file_drop", f"records-{route}.db"))
        for inbox in inboxes:
            if not inbox.root.is_dir():
                raise TransientError(f"file_drop inbox {inbox.root} is not reachable (share not mounted?)")
            try:
                inbox.ensure()
            except OSError as exc:
                raise TransientError(f"file_drop inbox {inbox.root}: cannot create its folders: {exc}") from None
        self.inboxes = inboxes
        if self.spec.observer != "none":
            folders = [str(inbox.root) for inbox in inboxes]
            try:
                self._observer = start_observer(self.spec.observer == "polling", self.spec.poll_interval,
                                                folders, self.wake)
            except OSError as exc:   # e.g. the inotify watch limit: polling still wakes the scan
                self.log.warning("native file events unavailable (%s); using the polling observer", exc)
                self._observer = start_observer(True, self.spec.poll_interval, folders, self.wake)
        self.wake.set()          # scan at start: events from before the start are lost

    def _roots(self) -> list[str]:
        """Inbox folders; relative ones are relative to the state directory (as for avro_files)."""
        return [root if os.path.isabs(root) else os.path.join(self.context.state_dir, root)
                for root in self.spec.inboxes]

    def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)
        self.inboxes = []
        if self.ledger is not None:
            self.ledger.close()

    def check(self) -> list[str]:
        problems = []
        for root in self._roots():
            if not os.path.isdir(root):
                problems.append(f"file_drop inbox {root}: not a reachable folder")
            elif not os.access(root, os.W_OK):
                problems.append(f"file_drop inbox {root}: not writable (files are claimed by renaming them)")
            elif self.spec.observer == "native" and network_fs(root):
                problems.append(f"warning: inbox {root} is on a network share ({network_fs(root)}): set observer: "
                                "polling (native events do not cross the network; the timer scan still runs)")
        return problems

    # -- capture --------------------------------------------------------------------------

    def batches(self, checkpoint: Any) -> Iterator[SourceBatch]:
        if not self.inboxes:
            self.open()
        cp = checkpoint or IDLE
        if not isinstance(cp, dict) or cp.get("v") != VERSION:
            raise ConfigError([f"file_drop: unrecognised checkpoint {cp!r}; reset the route's checkpoint"])
        stop = self.context.stop
        if cp["file"] is not None:
            if not (yield from self._resume(cp["file"])):
                return
        for inbox in self.inboxes:
            for claimed in inbox.orphans():   # claimed before a crash, nothing committed yet
                if stop.is_set() or not (yield from self._process(claimed)):
                    return
        while not stop.is_set():
            claimed = self._next_ready()
            if claimed is None:
                return
            if not (yield from self._process(claimed)):
                return

    def _next_ready(self) -> Optional[Claimed]:
        due = (self.wake.is_set() or self.readiness.pending
               or time.monotonic() - self._last_scan >= self.spec.rescan_every)
        if not due:
            return None
        self.wake.clear()
        self._last_scan = time.monotonic()
        seen, ready, waiting_files = set(), [], []
        for inbox in self.inboxes:
            try:
                candidates = inbox.candidates()
            except OSError as exc:
                raise TransientError(f"file_drop inbox {inbox.root} is not reachable: {exc}") from None
            for path, st in candidates:
                seen.add(str(path))
                if stat.S_ISREG(st.st_mode):
                    if not self.readiness.ready(path, st):
                        continue
                    waiting = [s for s in self.companions if inbox.companion(path, s) is None]
                    if waiting:
                        waiting_files.append(f"{path.name} (needs {' and '.join(waiting)})")
                        continue
                ready.append((inbox, path))   # links and special files are claimed to be refused
        if waiting_files != self._waiting:   # shown in status, written only when it changes
            self._waiting = waiting_files
            self.log.info("finished file(s) waiting for their trigger / sidecar: %s",
                          ", ".join(waiting_files) or "none")
            self.context.set_health(state="waiting for companion files" if waiting_files else "ok",
                                    details={**self.context.health.details,
                                             "waiting for companion file": ", ".join(waiting_files) or None})
        self.readiness.forget(seen)
        for inbox, path in ready:
            claimed = inbox.claim(path)
            if claimed is not None:
                self.readiness.forget(seen - {str(path)})
                return claimed
        return None

    def _process(self, claimed: Claimed) -> Iterator[SourceBatch]:
        """A freshly claimed file from the start. Returns True when it is settled."""
        inbox = claimed.inbox
        state = {"inbox": str(inbox.root), "name": claimed.name, "sha": None, "record": 0}
        refusal = inbox.refusal(claimed, self.spec.max_size)
        if refusal:
            return (yield from self._reject(claimed, state, [problem(None, "refused", refusal)], 1))
        try:
            with open_nofollow(claimed.path) as handle:
                st = os.fstat(handle.fileno())
                digest = hashlib.sha256()
                while block := handle.read(1 << 20):
                    digest.update(block)
        except FileRejected as exc:
            return (yield from self._reject(claimed, state, [exc.problem], 1))
        state.update(sha=digest.hexdigest(), size=st.st_size, mtime=st.st_mtime)
        prior = inbox.ledger_entry(state["sha"])
        if prior is not None:
            self._skip_duplicate(claimed, state, prior)
            return True
        try:
            problems, total, blocking = self._check(claimed, state)
        except _Stopped:   # stays claimed: the next run checks it again from the start
            return False
        if blocking:
            return (yield from self._reject(claimed, state, problems, total))
        if problems:   # publish the good rows; the bad ones travel with the file as a report
            write_json(inbox.processing / f"{claimed.name}.rejected-rows.json",
                       file_report(state, problems, total, "rows rejected, the rest was published"))
        return (yield from self._emit(claimed, state))

    def _resume(self, current: dict) -> Iterator[SourceBatch]:
        inbox = next((i for i in self.inboxes if str(i.root) == current["inbox"]), None)
        if inbox is None:
            self.log.error("file %s was in flight in inbox %s, which is no longer configured; it stays in its "
                           "processing folder", current["name"], current["inbox"])
            yield SourceBatch([], IDLE)
            return True
        claimed = inbox.in_processing(current["name"])
        if current.get("outcome") == "rejected":
            inbox.move_out(claimed, "error", current.get("sha"))
            yield SourceBatch([], IDLE)
            return True
        if current.get("done"):
            self._remember_all(claimed, current)
            return (yield from self._finish(claimed, current))
        if not claimed.path.exists():
            self.log.error("file %s vanished from %s after %d of its records were queued", current["name"],
                           inbox.processing, current["record"])
            yield SourceBatch([], IDLE)
            return True
        self.log.info("resuming file %s after record %d", current["name"], current["record"])
        return (yield from self._emit(claimed, current))

    # -- the two passes -------------------------------------------------------------------

    def _rows(self, claimed: Claimed, progress: Progress, push: bool) -> Iterator[Row]:
        with open_nofollow(claimed.path) as handle:
            lines = LineReader(handle, self.spec.encoding, self.spec.max_line)
            for row in read_rows(handle, self.spec, lines, needed=self.context.columns()):
                yield row
                if row.number % 1000 == 0:
                    progress.tick(row.number, lines.bytes_read, push)
            progress.tick(progress.rows, lines.bytes_read, push)

    def _check(self, claimed: Claimed, state: dict) -> tuple[list, int, bool]:
        """Pass 1: (problems listed, problems counted, whether the file must be rejected)."""
        spec = self.spec
        listed, total = [], 0
        controls = Controls(spec.checks, spec.format_options) if spec.checks else None
        progress = Progress(claimed.name, "checking", state["size"], self.log, spec.progress_log_every,
                            self.context.report_progress)
        try:
            for row in self._rows(claimed, progress, push=True):
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
                    raise _Stopped
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

    def _remember_all(self, claimed: Claimed, state: dict) -> None:
        """After a crash between the final commit and the archive move: the last batch's
        rows may not be remembered yet (idempotent: the rows are committed)."""
        if not claimed.path.exists():
            return
        progress = Progress(claimed.name, "publishing", state["size"], self.log, self.spec.progress_log_every,
                            self.context.report_progress)
        for row in self._rows(claimed, progress, push=False):
            if row.kind == "detail" and not row.problems:
                self._changed(row, state)
        self.ledger.settle()

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

    def _emit(self, claimed: Claimed, state: dict) -> Iterator[SourceBatch]:
        """Pass 2 from ``state['record']`` on. Returns True when the file is settled."""
        after, size = state["record"], state["size"]
        progress = Progress(claimed.name, "publishing", size, self.log, self.spec.progress_log_every,
                            self.context.report_progress)
        records, exceptions, last, unchanged = [], [], after, state.get("unchanged", 0)
        for row in self._rows(claimed, progress, push=False):
            if row.kind != "detail":
                continue
            if row.number <= after:      # committed before a restart: make sure it is remembered
                if not row.problems:
                    self._changed(row, state)
                continue
            last = row.number
            if row.problems:
                exceptions.append(row_exception(state, row, self.spec.operation))
            else:
                record = self._changed(row, state)
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
                    return False
        done = {**state, "record": last, "done": True, "unchanged": unchanged}
        yield SourceBatch(records, {"v": VERSION, "file": done}, {**progress.snapshot(), "bytes_pct": 100.0},
                          exceptions=exceptions)
        self.ledger.settle()
        # resumed: the final batch is committed, so the file may leave processing/
        return (yield from self._finish(claimed, done))

    def _changed(self, row: Row, state: dict) -> Optional[SourceRecord]:
        """The record to publish, or None when the route already published this key with
        this content. A record the mapping can key is identified by route, business key and
        content (a re-dropped corrected file repeats the ids of its unchanged rows and
        publishes a changed row as an update of the earlier one); any other keeps its
        place in the file as identity, and the route parks it as usual."""
        record = self._record(row, state)
        identity = self.context.identify(record)
        if identity is None:
            return record
        key, digest = identity
        prior = self.ledger.last(key)
        if prior is not None and prior[0] == digest:
            return None
        self.ledger.note(key, digest, record.after)
        position = f"key:{key}:sha256:{digest}"
        if prior is None:
            return dataclasses.replace(record, position=position)
        return dataclasses.replace(record, operation="update", position=position, before=prior[1])

    # -- outcomes ---------------------------------------------------------------------------

    def _finish(self, claimed: Claimed, state: dict) -> Iterator[SourceBatch]:
        inbox = claimed.inbox
        inbox.record_in_ledger(state["sha"], {"name": state["name"], "records": state["record"],
                                              "published_at": now_text(), "inbox": state["inbox"]})
        final = inbox.move_out(claimed, "archive", state["sha"])
        self.log.info("file %s published: %d record(s) (%d unchanged since published before), archived as %s",
                      state["name"], state["record"], state.get("unchanged", 0), final)
        yield SourceBatch([], IDLE, {"file": state["name"], "phase": "archived", "rows_read": state["record"],
                                     "bytes_pct": 100.0})
        return True

    def _reject(self, claimed: Claimed, state: dict, problems: list, total: int) -> Iterator[SourceBatch]:
        inbox = claimed.inbox
        report = file_report(state, problems, total, "file rejected, nothing was published")
        write_json(inbox.processing / f"{claimed.name}.error.json", report)
        entry = file_exception(state, problems, total, str(inbox.error))
        self.log.error("%s; moved to %s with %s.error.json", entry["reason"], inbox.error, claimed.name)
        yield SourceBatch([], {"v": VERSION, "file": {**state, "outcome": "rejected"}}, exceptions=[entry])
        inbox.move_out(claimed, "error", state.get("sha"))
        yield SourceBatch([], IDLE, {"file": claimed.name, "phase": "rejected"})
        return True

    def _skip_duplicate(self, claimed: Claimed, state: dict, prior: dict) -> None:
        inbox = claimed.inbox
        write_json(inbox.processing / f"{claimed.name}.skipped.json", {
            "file": claimed.name, "sha256": state["sha"], "skipped_at": now_text(),
            "reason": "identical content was already published", "first_published": prior})
        final = inbox.move_out(claimed, "archive", state["sha"])
        self.log.warning("file %s skipped: identical to %s published at %s; archived as %s", claimed.name,
                         prior.get("name"), prior.get("published_at"), final)
        self.context.set_health(details={**self.context.health.details, "last skipped file":
                                         f"{claimed.name} at {now_text()} (same content as {prior.get('name')})"})

    def _record(self, row: Row, state: dict) -> SourceRecord:
        occurred = dt.datetime.fromtimestamp(state["mtime"], dt.timezone.utc) if state.get("mtime") else None
        # The object is the file spec, not the file name: ids then depend on the content
        # alone, so the same record dropped under two names is one event. The name and line
        # ride along as pseudo-columns (mappable, and shown in the exception queue).
        return SourceRecord(object=self.spec.pattern, operation=self.spec.operation,
                            position=f"sha256:{state['sha']}:{row.number}",
                            after={**row.values, "_file": state["name"], "_line": row.line}, occurred_at=occurred)

class _Stopped(Exception):
    pass


Source = FileDropSource
