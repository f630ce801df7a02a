"""``file_drop`` source: watched inboxes of legacy finance exports (see docs/file_drop.md).

One file at a time per route, in three steps:

1. **Find and claim.** watchdog events only *wake* a scan (events are lost on network
   shares, on Windows and across restarts), so inboxes are also scanned at start and
   every ``rescan_every``. A file is finished when ``min_age`` old with a stable size
   over two looks (and its trigger / sidecar is there); it is claimed by an atomic
   rename into ``processing/<owner>/``: two agents can never both read it.
2. **Check (pass 1)** and 3. **Emit (pass 2)**: ``passes.FilePasses``. The whole file is
   checked before any of it is emitted; pass 2 yields batches whose checkpoint names the
   file hash and the last record number (committed with the events: invariant 1). Only
   when the generator is resumed after the final batch (the batch is durable) is the file
   recorded in the ledger and moved to ``archive/YYYY-MM-DD/`` (``_finish``); a rejected
   file goes to ``error/`` with its report (``_reject``).

Checkpoint: ``{"v": 1, "file": null}`` when idle, else ``{"v": 1, "file": {"inbox",
"name", "sha", "record", "mtime", "done"?, "outcome"?}}``.
"""
from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from typing import Any, Iterator, Mapping, Optional


from agent.contracts import AdapterContext, ConfigError, Source, SourceBatch, TransientError

from .claim import Claimed, Inbox, Readiness, agent_id, network_fs, open_nofollow, route_id, write_json
from .formats import FileRejected, problem
from .outcomes import file_exception, file_report, now_text
from .passes import VERSION, FilePasses, Stopped
from .records import RecordLedger
from .spec import SourceOptions
from .watch import start_observer

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
        self.passes: Optional[FilePasses] = None
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
        self.passes = FilePasses(self.spec, self.context, self.ledger, self.sidecar_suffix)
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
            problems, total, blocking = self.passes.check(claimed, state)
        except Stopped:   # stays claimed: the next run checks it again from the start
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
            self.passes.remember_all(claimed, current)
            return (yield from self._finish(claimed, current))
        if not claimed.path.exists():
            self.log.error("file %s vanished from %s after %d of its records were queued", current["name"],
                           inbox.processing, current["record"])
            yield SourceBatch([], IDLE)
            return True
        self.log.info("resuming file %s after record %d", current["name"], current["record"])
        return (yield from self._emit(claimed, current))

    def _emit(self, claimed: Claimed, state: dict) -> Iterator[SourceBatch]:
        """Pass 2 from ``state['record']`` on. Returns True when the file is settled."""
        done = yield from self.passes.emit(claimed, state)
        if done is None:
            return False
        # resumed: the final batch is committed, so the file may leave processing/
        return (yield from self._finish(claimed, done))

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


Source = FileDropSource
