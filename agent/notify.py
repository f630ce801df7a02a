"""How the agent talks to systemd: READY, WATCHDOG, STOPPING and STATUS over $NOTIFY_SOCKET.

The sd_notify protocol is one datagram of ``KEY=value`` lines to the unix socket named in
``$NOTIFY_SOCKET`` (``@name`` = abstract namespace). It is written here in a few lines
rather than taken from the ``sdnotify`` package: that package is unmaintained (last
release 2017), and its whole content is the same ``sendto``. Without ``$NOTIFY_SOCKET``
(Windows, a terminal, a container) every call is a no-op.

The watchdog keeps the unit alive only while the pipeline makes progress. "Stuck" means:

- a delivery thread died, or its sink has events waiting and no batch was settled
  (acknowledged, rejected or failed) for longer than the sink can legitimately take:
  one write bound (the sink's ``delivery_timeout_s`` + margin) plus the longest backoff.
  A broker that is down is NOT stuck: every write attempt ends with a transient error
  and is settled, so queueing while the fabric is away keeps the watchdog fed;
- a capture pass has been running without committing anything for ``capture_after``
  seconds (a source blocked forever, e.g. a TCP connection into a black hole).

Either threshold is at least the watchdog interval. When stuck, WATCHDOG=1 stops and
systemd restarts the service (``Restart=on-failure``); nothing is lost, the queue is
durable and event ids are deterministic.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional

from .build import delivery_bound
from .supervise import RETRY_CAP_S as MAX_BACKOFF_S   # SinkDelivery's default backoff cap

log = logging.getLogger("outpost.notify")

WRITE_MARGIN_S = 15.0


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify datagram; False when not run under a notify-aware manager."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode("utf-8"), address)
        return True
    except OSError as exc:      # the manager went away: nothing the agent can do about it
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """Seconds from $WATCHDOG_USEC, when the watchdog is enabled for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class Stall:
    """Pure logic: is something that should move not moving? (``observe`` once a tick)."""

    def __init__(self, after: float):
        self.after = after
        self._since: Optional[float] = None     # when the current busy stretch last moved
        self._last_counter: Optional[int] = None

    def observe(self, busy: bool, counter: int, now: float) -> bool:
        """``busy``: work is waiting; ``counter``: grows with every bit of progress."""
        if not busy:
            self._since = None
        elif self._since is None or counter != self._last_counter:
            self._since = now
        self._last_counter = counter
        return busy and now - self._since > self.after


class Watchdog:
    """Reads the agent's progress counters and says whether the pipeline is stuck."""

    def __init__(self, agent, interval: float, delivery_after: Optional[float] = None,
                 capture_after: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.agent, self.clock = agent, clock
        self.delivery: dict[str, Stall] = {}
        for name, delivery in agent.deliveries.items():
            bound = delivery_bound(agent.config, name) + WRITE_MARGIN_S
            self.delivery[name] = Stall(max(interval, delivery_after if delivery_after is not None
                                            else bound + MAX_BACKOFF_S))
        self.capture = {name: Stall(max(interval, capture_after)) for name in agent.captures}

    def problems(self) -> list[str]:
        from .runtime import State
        if self.agent.state != State.RUNNING:
            return []
        now, seen, found = self.clock(), self.agent.queue.observed, []
        for name, stall in self.delivery.items():
            thread = self.agent.deliveries[name]
            if thread.ident is not None and not thread.is_alive():
                found.append(f"delivery thread of sink {name} died")
            elif stall.observe(self.agent.queue.depth(name) > 0, seen.settled_batches(name), now):
                found.append(f"sink {name}: events waiting, no batch settled for {stall.after:.0f}s")
        for name, stall in self.capture.items():
            started = self.agent.capture_started.get(name)
            if stall.observe(started is not None, seen.captures.get(name, 0), now):
                found.append(f"route {name}: capture pass running for {stall.after:.0f}s without progress")
        return found


class SystemdNotifier(threading.Thread):
    """READY once the agent runs, then WATCHDOG every half interval while not stuck."""

    def __init__(self, agent, environ: Mapping[str, str] = os.environ, **watchdog_options):
        super().__init__(name="sd-notify", daemon=True)
        self.agent, self.environ = agent, dict(environ)
        self.interval = watchdog_interval(self.environ)
        self.watchdog = Watchdog(agent, self.interval or 60.0, **watchdog_options)
        self.done = threading.Event()
        self.stuck: list[str] = []     # last verdict; /healthz shows it too
        # without a systemd watchdog the check still runs, for /healthz
        self.tick = self.interval / 2 if self.interval else 5.0

    def send(self, message: str) -> bool:
        return notify(message, self.environ)

    def ready(self) -> None:
        self.send(f"READY=1\nSTATUS=running: {len(self.agent.captures)} route(s)\nMAINPID={os.getpid()}")
        if not self.is_alive():
            self.start()

    def run(self) -> None:
        while not self.done.wait(self.tick):
            problems = self.watchdog.problems()
            if problems:
                if problems != self.stuck:
                    log.error("pipeline stuck, withholding the systemd watchdog: %s", "; ".join(problems))
                    self.send("STATUS=stuck: " + "; ".join(problems)[:400])
            else:
                if self.stuck:
                    log.warning("pipeline moving again")
                    self.send("STATUS=running")
                if self.interval:
                    self.send("WATCHDOG=1")
            self.stuck = problems

    def stopping(self) -> None:
        self.done.set()
        self.send("STOPPING=1\nSTATUS=stopping: finishing in-flight batches")


def host(agent) -> bool:
    """Run a built-or-not agent until its stop event (set by a signal or the Windows
    service stop), with the status endpoint and systemd notifications around it.

    Returns ``Agent.stop``'s verdict: False means the shutdown bound was reached and the
    caller should exit at once rather than wait for abandoned threads.
    """
    if agent.queue is None:
        agent.build()
    notifier = SystemdNotifier(agent)
    server = None
    if agent.config.http.enabled:
        from .http import StatusServer
        try:
            server = StatusServer(agent, notifier=notifier)
            server.start()
        except OSError as exc:      # a taken port must not stop the data flowing
            log.error("status endpoint not started on %s:%s: %s", agent.config.http.bind,
                      agent.config.http.port, exc)
    notifier.send("STATUS=delivering the queued backlog")
    clean = False
    try:
        if _start_or_stop_request(agent):
            notifier.ready()
            agent.wait()
            notifier.stopping()
            clean = agent.stop()
        else:
            # stopped during the start-up drain while the sink still waits on a batch: it
            # stays queued; the caller exits without waiting for the blocked write
            log.warning("stop requested during start-up; the batch in flight stays queued")
            notifier.stopping()
    except BaseException:
        notifier.stopping()
        agent.stop()
        raise
    finally:
        if server is not None:
            server.stop()
    return clean


def _start_or_stop_request(agent) -> bool:
    """``agent.start()``, but a stop request during the start-up drain (a write waiting
    for a broker that does not answer) is honoured within ``shutdown_timeout``."""
    failure: list[BaseException] = []

    def start():
        try:
            agent.start()
        except BaseException as exc:
            failure.append(exc)

    starter = threading.Thread(target=start, name="agent-start", daemon=True)
    starter.start()
    while starter.is_alive() and not agent.stop_event.wait(0.2):
        pass
    starter.join(agent.config.shutdown_timeout if agent.stop_event.is_set() else None)
    if failure:
        raise failure[0]
    return not starter.is_alive()
