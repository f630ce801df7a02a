"""Delivery in its own process, so capture and delivery no longer share one interpreter.

The queue stays the single source of truth: the capture process commits events into it,
the delivery process sends and settles them; neither passes events to the other. What
crosses the process boundary is small:

- control, on one pipe: wake-ups after capture commits (coalesced by a waker thread, so
  capture never blocks on the pipe; the sink loops wait on them, no hot polling), "stop",
  and the pipe's end-of-file when the capture process dies (the delivery process then
  exits at once: what it had in flight stays queued, invariant 3);
- health: every second the delivery process reports each sink's state and its cumulative
  observations (``agent.observe``), so ``status``, ``/metrics``, ``/readyz`` and the
  systemd watchdog see one agent;
- log records, on the same pipe, written by the capture process's handlers (one writer
  per log file, redacted there).

At most one delivery process per state directory: it holds ``delivery.lock`` (the agent
itself holds ``agent.lock``), so an orphan left by a SIGKILLed agent has exited before a
new one delivers. The capture side restarts a delivery process that died, with backoff.
"""
from __future__ import annotations

import copy
import gc
import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from .supervise import Backoff

__all__ = ["DeliveryProcess", "SinkHandle"]

log = logging.getLogger("outpost.worker")

REPORT_EVERY_S = 1.0
LOCK_WAIT_S = 30.0


class SinkHandle:
    """What the capture side knows of a sink delivered by the delivery process."""

    def __init__(self, name: str, process: "DeliveryProcess"):
        self.sink_name = name
        self.wakeup = _Wakeup(process, name)
        self.connected = False
        self.ident: Optional[int] = None      # set once the delivery process has run this sink
        self._alive = False

    def is_alive(self) -> bool:
        return self._alive


class _Wakeup:
    """``wakeup.set()`` as capture calls it for a sink in this process."""

    def __init__(self, process: "DeliveryProcess", sink: str):
        self.process, self.sink = process, sink

    def set(self) -> None:
        self.process.wake(self.sink)


class DeliveryProcess:
    """Starts, watches, restarts and stops the delivery process (capture side)."""

    def __init__(self, config, observed, drain_timeout: float):
        from .build import used_sinks
        self.config, self.observed, self.drain_timeout = config, observed, drain_timeout
        self._ctx = multiprocessing.get_context("spawn")
        self.handles = {name: SinkHandle(name, self) for name in used_sinks(config)}
        self._to_wake: set = set()
        self._wake_signal = threading.Condition()
        self._process = None
        self._conn = None
        self._generation = 0
        self._stopping = threading.Event()
        self._stopped_clean: Optional[bool] = None
        self._backoff = Backoff()
        self._watcher: Optional[threading.Thread] = None
        self._sending = threading.Lock()
        self._active: Optional[bool] = None       # None: not one of an HA pair

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="delivery-process", daemon=True)
        self._watcher.start()
        threading.Thread(target=self._send_wakeups, name="delivery-wakeups", daemon=True).start()

    def wake(self, sink: str) -> None:
        """After a capture commit: never blocks (the waker thread does the sending)."""
        with self._wake_signal:
            self._to_wake.add(sink)
            self._wake_signal.notify()

    def _send_wakeups(self) -> None:
        while not self._stopping.is_set():
            with self._wake_signal:
                while not self._to_wake and not self._stopping.is_set():
                    self._wake_signal.wait(1.0)
                sinks, self._to_wake = self._to_wake, set()
            if sinks:
                try:
                    self._send(("wake", sorted(sinks)))
                except OSError:       # the process is being restarted: it drains at start
                    pass

    def _send(self, message) -> None:
        with self._sending:
            self._conn.send(message)

    def set_active(self, active: bool) -> None:
        """HA pairs: only the active agent's delivery process sends (and claims the
        transactional ids); a restarted delivery process is told again."""
        self._active = active
        if self._conn is None:       # not started yet: told when it is spawned
            return
        try:
            self._send(("active", active))
        except OSError:
            pass

    def stop(self, deadline: float) -> bool:
        self._stopping.set()
        clean = False
        with self._wake_signal:
            self._wake_signal.notify_all()
        if self._process is not None and self._process.is_alive():
            try:
                self._send(("stop", max(0.1, deadline - time.monotonic())))
            except OSError:
                pass
            self._process.join(max(0.1, deadline - time.monotonic()) + 2.0)
            if self._process.is_alive():
                log.warning("the delivery process did not stop within the shutdown bound; killed (its batch in "
                            "flight stays queued)")
                self._process.kill()
                self._process.join(5)
            else:
                clean = bool(self._stopped_clean)
        if self._watcher is not None:
            self._watcher.join(5)
        return clean

    def _spawn(self) -> None:
        self._generation += 1
        args = (self.config, logging.getLogger().level, self.drain_timeout)
        if _PLAIN_POSIX:
            self._process, self._conn = _Child.start(args)
        else:       # Windows, or a frozen build (packaging/outpost_entry.py calls freeze_support)
            parent, child = self._ctx.Pipe()
            self._process = self._ctx.Process(target=delivery_main, name="outpost-delivery", daemon=False,
                                              args=(args[0], child, *args[1:]))
            self._process.start()
            child.close()
            self._conn = parent
        log.info("delivery process started (PID %d)", self._process.pid)
        if self._active is not None:
            self._send(("active", self._active))

    def _watch(self) -> None:
        """Reads the delivery process's reports; restarts it when it died unasked."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                for handle in self.handles.values():
                    handle._alive, handle.connected = False, False
                if self._stopping.is_set():
                    return      # stop() reaps it: two threads waiting on one child race
                self._process.join(5)
                delay = self._backoff.failed()
                log.error("the delivery process exited unexpectedly (exit code %s); restarting in %.1fs",
                          self._process.exitcode, delay)
                if self._stopping.wait(delay):
                    return
                self._spawn()
                continue
            kind = message[0]
            if kind == "log":
                _write_here(message[1])
            elif kind == "health":
                _, sinks, snapshot = message
                for name, state in sinks.items():
                    handle = self.handles[name]
                    handle._alive, handle.connected = state["alive"], state["connected"]
                    handle.ident = handle.ident or self._process.pid
                self.observed.absorb(self._generation, snapshot)
                self._backoff.succeeded()
            elif kind == "stopped":
                self._stopped_clean = message[1]


_PLAIN_POSIX = os.name == "posix" and not getattr(sys, "frozen", False)


class _Child:
    """The delivery process as ``python -m agent.delivery_child FD`` (POSIX, not frozen), its
    control pipe a socket pair (as multiprocessing's Pipe() is on POSIX). "spawn" would also
    start multiprocessing's resource tracker (a third process, 13 MB, for semaphores the
    agent never makes) and re-import the parent's ``__main__`` in the child (under ``outpost
    run``, the whole CLI). The interface is the part of ``multiprocessing.Process`` used here."""

    def __init__(self, popen: subprocess.Popen):
        self._popen, self.pid = popen, popen.pid

    @classmethod
    def start(cls, args: tuple) -> tuple["_Child", multiprocessing.connection.Connection]:
        ours, theirs = socket.socketpair()
        try:
            # the child imports what this process can: the same sys.path (a source checkout,
            # a test's support modules), as "spawn" would give it
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            popen = subprocess.Popen([sys.executable, "-m", "agent.delivery_child", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()       # the child's end: only the child holds it, so its EOF means we died
        conn = multiprocessing.connection.Connection(ours.detach())
        try:
            conn.send(args)
        except OSError:      # it died at start: the watcher reads the pipe's end and restarts it
            pass
        return cls(popen), conn

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: Optional[float] = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        self._popen.kill()

    @property
    def exitcode(self) -> Optional[int]:
        return self._popen.poll()


def _write_here(record: logging.LogRecord) -> None:
    """A record of the delivery process, through this process's handlers (so one process
    writes each log file, with the same redaction)."""
    if not logging.getLogger(record.name).isEnabledFor(record.levelno):
        return
    for handler in logging.getLogger().handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


class _PipeHandler(logging.handlers.QueueHandler):
    """In the delivery process: records go to the capture process over the control pipe
    (``QueueHandler.prepare`` turns them into plain, picklable records)."""

    def __init__(self, send):
        super().__init__(None)
        self._send = send

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The message and the traceback apart (QueueHandler would fold the traceback into
        the message, and the text format then shows it escaped on one line)."""
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self._send(("log", record))
        except OSError:          # the capture process is gone; so is the log's reader
            pass


# ---- the delivery process ---------------------------------------------------------------

def delivery_main(config, conn, level: int, drain_timeout: float) -> None:
    """Entry point of the delivery process, a fresh interpreter (``agent.delivery_child``, or
    "spawn" on Windows and in frozen builds)."""
    # The capture process owns the lifecycle: a terminal's Ctrl-C or systemd's SIGTERM to
    # the whole group must not stop delivery halfway; "stop" comes through the pipe.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    os.umask(0o077)
    child = _DeliveryChild(config, conn, drain_timeout)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_PipeHandler(child.send))
    root.setLevel(level)
    clean = child.run()
    conn.close()
    if not clean:     # a thread still waits on its destination: do not wait for it
        os._exit(0)


class _DeliveryChild:
    """The delivery process's body: listen from the first moment (a stop can come while
    the backlog drains), then deliver until told to stop."""

    def __init__(self, config, conn, drain_timeout: float):
        self.config, self.conn, self.drain_timeout = config, conn, drain_timeout
        self.stop = threading.Event()
        self.bound = 30.0
        self.group = None
        self.active = not config.ha          # an HA pair's member waits to be told
        self._sending = threading.Lock()
        threading.Thread(target=self._listen, name="delivery-control", daemon=True).start()

    def send(self, message) -> None:
        with self._sending:
            self.conn.send(message)

    def _listen(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "wake" and self.group is not None:
                    for name in message[1]:
                        self.group.handles[name].wakeup.set()
                elif message[0] == "active":
                    self.active = message[1]
                    if self.group is not None:
                        self.group.set_active(self.active)
                elif message[0] == "stop":
                    self.bound = message[1]
                    self.stop.set()
        except (EOFError, OSError):
            # The capture process is gone (SIGKILL, crash): exit now, without touching the
            # queue; a new agent must not find this process still delivering.
            os._exit(0)

    def run(self) -> bool:
        from .delivery import DeliveryGroup
        from .logs import RedactingFilter
        from .observe import ObservedQueue, label
        from .schemas import SchemaCatalog
        from .statedir import StateDirInUse, StateLock

        lock = StateLock(self.config.state_dir, "outpost delivery", name="delivery.lock")
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                lock.acquire()
                break
            except StateDirInUse as exc:
                if time.monotonic() > deadline:
                    log.error("delivery not started: %s", exc)
                    os._exit(3)
                if self.stop.wait(0.5):
                    return True
        cfg = self.config
        queue = ObservedQueue(cfg.state_dir, max_bytes=cfg.queue.max_bytes, dedup_retention=cfg.queue.dedup_retention,
                              redact=RedactingFilter(cfg.secrets).redact)
        label(queue.observed, cfg)
        group = DeliveryGroup(cfg, SchemaCatalog.load(cfg.schema_dir), queue, self.stop)
        self.group = group
        group.set_active(self.active)     # again if a message came meanwhile: the same value

        def report() -> None:
            while not self.stop.wait(REPORT_EVERY_S):
                try:
                    self.send(("health", _sink_states(group), queue.observed.snapshot()))
                except OSError:
                    return

        group.drain(self.drain_timeout)
        group.start()
        gc.freeze()      # built once, lives as long as the process (see Agent.start)
        self.send(("health", _sink_states(group), queue.observed.snapshot()))
        threading.Thread(target=report, name="delivery-report", daemon=True).start()
        self.stop.wait()
        clean = group.stop(time.monotonic() + self.bound)
        self.send(("health", _sink_states(group), queue.observed.snapshot()))
        queue.close()
        lock.release()
        self.send(("stopped", clean))
        return clean


def _sink_states(group) -> dict:
    return {name: {"alive": delivery.is_alive(), "connected": delivery.connected}
            for name, delivery in group.handles.items()}
