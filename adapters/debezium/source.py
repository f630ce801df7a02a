"""``debezium`` source: one Debezium embedded engine per route, in a worker thread.

Lifecycle (see docs/debezium.md and ``engine``):

* constructed by ``Agent.build()`` on the main thread: the JVM starts there (pitfall 2);
* ``open()``: PostgreSQL only, a plain session reads the column types used to convert values;
* ``batches(checkpoint)``: starts the engine if needed, then yields each batch the engine
  hands over. Each batch's checkpoint carries the engine offsets after it (invariant 1, see
  ``offsets``); resuming the generator means the batch is committed in the local queue, and
  only then are the batch's records marked processed for Debezium (invariant 2). A batch
  yielded but never resumed stays "in flight": it is yielded again by the next call, unless
  the checkpoint handed in shows that it was committed after all;
* every engine start first regenerates the offsets file from the committed checkpoint and
  checks, PostgreSQL only, that stored offsets still have their replication slot (a dropped
  slot stops the route with the recovery command instead of letting Debezium create a fresh
  slot and fail, or skip changes);
* the engine stopping on its own is a failure: ``ConfigError`` (route stopped, message names
  the recovery) for a lost slot / missing history / unreadable offsets / bad credentials,
  else ``TransientError`` (the pipeline backs off and starts a new engine, which resumes
  from the committed checkpoint);
* ``close()`` (agent stop, SIGTERM): closes the engine; unacknowledged batches come again.
"""
from __future__ import annotations

import queue
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional


from agent.contracts import AdapterContext, ConfigError, Source, SourceBatch, TransientError

from .events import EchoTransactions, parse_notification, to_records
from .offsets import encode, recovery_hint
from .spec import (SourceOptions, engine_properties, qualified_table, route_key, slot_and_publication,
                   state_paths)

__all__ = ["DebeziumSource", "Source", "classify_failure"]

_RETRY_MARKS = ("restart connector", "of unlimited retries", "connection refused", "terminating connection",
                "connection attempt failed", "i/o error")


def classify_failure(reason: str, source_name: str) -> Exception:
    """Why the engine stopped -> ConfigError (stop the route, needs a person) or TransientError."""
    from .pg import RESET_HINT
    text, hint = reason.lower(), RESET_HINT.format(source=source_name)
    if "no longer available on the server" in text or ("replication slot" in text and "does not exist" in text):
        return ConfigError([f"debezium {source_name}: stored offsets and the server disagree (replication slot "
                            f"dropped or its WAL removed): {reason}; {hint}"])
    if "streamcorruptedexception" in text or ("offset" in text and "eofexception" in text):
        # our own offsets file, rewritten before every start: the state directory itself is in trouble
        return ConfigError([f"debezium {source_name}: offset store corrupt: the engine cannot read the offsets file "
                            f"Outpost wrote before starting it ({reason}): check the state directory's disk and "
                            f"permissions; {recovery_hint(source_name)}"])
    if "history" in text and ("missing" in text or "not exist" in text or "corrupt" in text
                              or "unable to read object content" in text):
        return ConfigError([f"debezium {source_name}: the schema history is missing or damaged: {reason}; {hint}"])
    if "password authentication failed" in text or "access denied" in text or "login failed" in text:
        return ConfigError([f"debezium {source_name}: the database refused the credentials: {reason}"])
    if "configuration is not valid" in text or "invalid value" in text:
        return ConfigError([f"debezium {source_name}: Debezium rejected the configuration: {reason}"])
    if "must be superuser or replication role" in text or "permission denied" in text or "wal_level" in text:
        return ConfigError([f"debezium {source_name}: missing privilege or server setting (run `outpost check`): "
                            f"{reason}"])
    return TransientError(f"debezium {source_name}: the engine stopped: {reason}")




class DebeziumSource(Source):
    options_model = SourceOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        self.name = context.name
        self.key = route_key(self.name, self.spec)
        self.paths = state_paths(context.state_dir, self.key)
        self.properties = engine_properties(self.name, self.spec, context.state_dir)
        self.slot, self.publication = slot_and_publication(self.name, self.spec)
        self.table = qualified_table(self.spec)
        self._skip = {t for t in (self.spec.signal_table, self.spec.heartbeat_table) if t}
        self._echoes = EchoTransactions() if self.spec.echo_marker_table else None
        self.runner = None
        self._inflight = None
        self._kinds: dict = {}
        self._run = uuid.uuid4().hex[:8]
        self._seq = 0
        self._last_lsn = None
        self._offsets: dict[str, str] = {}
        self._retrying: Optional[str] = None
        self._reported_retry: Optional[str] = None
        self._streaming_reported = False
        self._snapshot_rows = 0
        self._next_slot_check = 0.0
        self._next_request_check = 0.0
        self._signalled: dict[str, Any] = {}
        self.start_jvm()

    def start_jvm(self) -> None:
        """Start the JVM now, on the building (main) thread; later calls are no-ops."""
        try:
            from . import engine
            engine.ensure_jvm(self.paths["dir"], heap=self.spec.heap, level=self.spec.log_level,
                              options=self.spec.jvm_options, classpath=self.spec.extra_classpath)
        except ImportError as exc:
            raise ConfigError([f"debezium: {exc.name or exc} is not installed: pip install 'outpost[debezium]'"]) from None
        except Exception as exc:   # jpype.JVMNotFoundException and friends
            raise ConfigError([f"debezium: cannot start a Java runtime ({type(exc).__name__}: {exc}); install Java 17 "
                               "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME"]) from None

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """PostgreSQL: the column kinds used to convert values (and proof the database answers)."""
        if self.spec.connector != "postgres" or self._kinds:
            return
        from . import pg
        with pg.connect(self.spec) as conn:
            self._kinds = pg.column_kinds(conn, self.spec)

    def _guard_slot(self, plan) -> None:
        """Stored offsets (or a recovery from the slot) need their replication slot: without
        it Debezium would create a fresh one and silently skip the changes in between."""
        from . import pg
        with pg.connect(self.spec) as conn:
            state = pg.slot_state(conn, self.slot)
        stored = bool(plan.offsets) or plan.resume_from_slot
        if state is None and stored and self.spec.snapshot == "when_needed" and not plan.resume_from_slot:
            self.context.log.warning("debezium %s: replication slot %s is gone; snapshot 'when_needed' takes a new "
                                     "snapshot after the slot is created again", self.name, self.slot)
        elif state is None and stored:
            raise ConfigError([f"debezium {self.name}: offsets are stored ({plan.origin}) but replication slot "
                               f"{self.slot} does not exist (dropped?): changes made since are lost to log-based "
                               f"capture; " + pg.RESET_HINT.format(source=self.name)])
        if state is not None and state.get("wal_status") == "lost":
            raise ConfigError([f"debezium {self.name}: replication slot {self.slot} lost its WAL; "
                               + pg.RESET_HINT.format(source=self.name)])

    def close(self) -> None:
        runner, self.runner = self.runner, None
        self._inflight = None       # not acknowledged: Debezium sends it again after a restart
        if runner is not None:
            runner.close()
        self._kinds = {}

    def check(self) -> list[str]:
        import jpype
        problems = []
        try:
            jpype.getDefaultJVMPath()
        except Exception as exc:
            problems.append(f"no Java runtime found ({exc}): install Java 17 or set JAVA_HOME")
        if self.spec.connector == "postgres":
            from . import pg
            try:
                problems += pg.check(self.spec, self.name, self.paths["offsets"].exists())
            except (ConfigError, TransientError) as exc:
                problems += getattr(exc, "problems", None) or [str(exc)]
        else:
            problems.append(f"warning: connector {self.spec.connector!r} is untested here; see docs/debezium.md "
                            "for its prerequisites")
        return problems

    # -- capture ----------------------------------------------------------------------

    def batches(self, checkpoint: Any) -> Iterator[SourceBatch]:
        pending = self._inflight
        if pending is not None and checkpoint == pending.batch.checkpoint:
            self._acknowledge(pending)      # committed, but the generator was closed before resuming
            pending = None
        if self.runner is None:
            self._start_engine(checkpoint)
        deadline = time.monotonic() + self.spec.pass_seconds
        while not self.context.stop.is_set():
            if pending is None:
                try:
                    pending = self.runner.handoff.get(timeout=0.2)
                except queue.Empty:
                    self._idle_duties()
                    # While Debezium reconnects, the pass goes on: its status says so (the
                    # pipeline would overwrite it with "ok" at the end of a pass).
                    if time.monotonic() > deadline and not self._retrying:
                        return
                    continue
                pending.batch = self._to_batch(pending)
            self._inflight = pending
            yield pending.batch
            self._acknowledge(pending)      # resumed: the batch is durable in the local queue
            pending = None

    def _start_engine(self, checkpoint: Any) -> None:
        """Offsets first (regenerated from the committed checkpoint: the file Debezium may
        have torn is never read, see ``offsets``), then the engine."""
        from . import history, offsets
        from .engine import EngineRunner
        # Offsets/history files live here; Debezium does not create the folder (only the
        # first source of a process gets it from ensure_jvm).
        self.paths["dir"].mkdir(parents=True, exist_ok=True)
        plan = offsets.prepare(checkpoint, self.properties, self.paths["offsets"], self.name, self.context.log)
        self.open()
        if self.spec.connector == "postgres":
            self._guard_slot(plan)
        history_file = self.properties.get("schema.history.internal.file.filename")
        repaired = history.repair(Path(history_file)) if history_file else None
        if repaired:
            self.context.log.warning("debezium %s: schema history repaired: %s", self.name, repaired)
        self._offsets = dict(plan.offsets)
        self._retrying, self._streaming_reported = None, False
        self.runner = EngineRunner(self.key, {**self.properties, "snapshot.mode": plan.snapshot_mode}, self._on_log)
        self.runner.start()
        self.context.set_health(state="starting", details={**self.context.health.details,
                                                         "engine started": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.context.log.info("debezium %s: engine started (slot %s, snapshot mode %s, offsets: %s)", self.name,
                              self.slot, plan.snapshot_mode, plan.origin)

    def _acknowledge(self, pending) -> None:
        self._inflight = None
        self.runner.commit(pending)
        if not self._streaming_reported and self.runner is not None and self.runner.polling.is_set():
            self._streaming_reported = True
            self.context.set_health(state="streaming")
        if self._retrying:
            self._retrying, self._reported_retry = None, None
            self.context.log.info("debezium %s: the database is back, capture resumed", self.name)
            self.context.set_health(state="streaming", problem=None)

    def _to_batch(self, pending) -> SourceBatch:
        records, facts = to_records(pending.items, self._kinds, skip=self._skip, marker=self.spec.echo_marker_table,
                                    echoes=self._echoes)
        self._seq += 1
        self._last_lsn = facts["lsn"] or self._last_lsn
        if pending.position is not None:
            key, value = encode(*pending.position)
            self._offsets[key] = value
        # invariant 1 for the engine's position too: its offsets commit with these events
        checkpoint = {"v": 2, "run": self._run, "seq": self._seq, "lsn": self._last_lsn, "offsets": dict(self._offsets)}
        progress = None
        if facts["snapshot"] is not None:
            self._snapshot_rows += sum(1 for r in records if r.operation == "snapshot")
            progress = {"phase": "snapshot", "rows": self._snapshot_rows, "done": facts["snapshot"] == "last"}
        elif records:
            progress = {"phase": "streaming", "lsn": self._last_lsn}
        return SourceBatch(records, checkpoint, progress)

    def _idle_duties(self) -> None:
        failure = self.runner.failure
        if failure is not None:
            self.context.log.error("debezium %s: engine stopped: %s", self.name, failure)
            self.close()
            raise classify_failure(failure, self.name)
        if self._retrying and self._retrying != self._reported_retry:
            # Debezium reconnects by itself (every 10 s, forever) and resumes from its offsets.
            # The engine is kept: closing it in the middle of its restart left a zombie task.
            self._reported_retry = self._retrying
            message = (f"debezium {self.name}: database unreachable, the Debezium engine reconnects by itself "
                       f"every 10 s and capture resumes when it is back (engine reported: {self._retrying[:300]})")
            self.context.log.warning(message)
            self.context.set_health(state="retrying: database unreachable", problem=message)
        now = time.monotonic()
        if self.runner.polling.is_set() and now >= self._next_request_check:
            self._next_request_check = now + 2.0
            from .snapshots import serve_requests
            serve_requests(self)
        if self.spec.connector == "postgres" and now >= self._next_slot_check:
            self._next_slot_check = now + self.spec.slot_check_interval
            self._measure_slot()

    def _measure_slot(self) -> None:
        from . import pg
        try:
            with pg.connect(self.spec, timeout=5) as conn:
                state = pg.slot_state(conn, self.slot)
        except (TransientError, ConfigError) as exc:
            self.context.log.debug("slot check failed: %s", exc)
            return
        if state is None:
            return
        warning = None
        if state["retained_bytes"] > self.spec.slot_warn_bytes:
            warning = (f"replication slot {self.slot} retains {state['retained_bytes'] / 2**20:.0f} MiB of WAL "
                       f"(warning above {self.spec.slot_warn_bytes / 2**20:.0f} MiB)")
            self.context.log.warning("debezium %s: %s", self.name, warning)
        self.context.set_health(lag_bytes=state["retained_bytes"], warning=warning,
                                state=self.context.health.state if self.runner.polling.is_set() else "starting",
                                details={**self.context.health.details, "replication slot": self.slot,
                                         "slot active": state["active"],
                                         "slot confirmed flush LSN": state["confirmed_flush_lsn"]})

    def _on_log(self, level: int, text: str) -> None:
        """Engine log lines of this route (tailer thread): notice Debezium's own retry loop."""
        lowered = text.lower()
        if level >= 30 and any(mark in lowered for mark in _RETRY_MARKS):
            self._retrying = text
        if "notification service" in lowered and "snapshot" in lowered:
            note = parse_notification(text)
            if note:
                self.context.set_health(details={**self.context.health.details, "snapshot": note})
                from .snapshots import on_notification
                on_notification(self, note)


Source = DebeziumSource
