"""The ``Agent``: one object with an explicit lifecycle, hosted by the CLI, systemd or
the Windows service manager (thin shells that only call ``start``/``stop``).

Lifecycle: CREATED -> STARTING -> DRAINING -> RUNNING -> STOPPING -> STOPPED.
On start what is already queued is delivered first, then anything new (with delivery in
this process, capture waits for that drain; a delivery process drains before it sends
anything captured meanwhile, which queue order puts behind the backlog anyway).

Capture runs here: polling routes on the scheduler (APScheduler, ``coalesce``, one
instance at a time), streaming routes (Debezium, binlog, Kafka) each in a loop of its own.
Delivery runs either in this process (threads: tests, the demo, ``run --once``) or, with
``separate_delivery`` (``outpost run``), in a delivery process of its own
(``agent.worker``), so that capture and delivery do not share one interpreter. Hosts,
``status``, ``/metrics`` and the watchdog see one agent either way.
"""
from __future__ import annotations

import datetime as dt
import enum
import functools
import gc
import logging
import sqlite3
import threading
import time
from typing import Optional

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .build import make_lookups, make_source, make_translator, streams
from .capture import RouteCapture, StreamLoop
from .config import Config
from .contracts import OutpostError
from .delivery import DeliveryGroup
from .logs import RedactingFilter
from .observe import ObservedQueue, label
from .reload import LiveTranslator, Reloader
from .schemas import SchemaCatalog
from .statedir import StateLock

__all__ = ["Agent", "State", "make_translator"]

log = logging.getLogger("outpost.agent")


class State(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    DRAINING = "draining"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


# The only moves the lifecycle allows: an agent starts once, and may be stopped from any
# state before it stopped (a stop during start-up included).
_NEXT = {State.CREATED: {State.STARTING, State.STOPPING}, State.STARTING: {State.DRAINING, State.STOPPING},
         State.DRAINING: {State.RUNNING, State.STOPPING}, State.RUNNING: {State.STOPPING},
         State.STOPPING: {State.STOPPED}, State.STOPPED: set()}


class Agent:
    def __init__(self, config: Config, *, drain_timeout: float = 30.0, separate_delivery: bool = False,
                 config_path=None):
        self.config = config
        self.reloader = Reloader(self, config_path)     # SIGHUP, the service control, `outpost reload`
        self.state = State.CREATED
        self.stop_event = threading.Event()
        self.drain_timeout = drain_timeout
        self.separate_delivery = separate_delivery
        self.catalog = SchemaCatalog.load(config.schema_dir)
        self.queue: Optional[ObservedQueue] = None
        self.delivery = None                  # DeliveryGroup (threads here) or DeliveryProcess
        self.deliveries: dict = {}            # sink name -> its delivery thread or handle
        self.captures: dict[str, RouteCapture] = {}
        self.scheduler: Optional[BackgroundScheduler] = None
        self.streams: list[StreamLoop] = []
        self.capture_started: dict[str, Optional[float]] = {}   # route -> when its running pass began
        self.lock = StateLock(config.state_dir, "outpost run")
        self.ha = None                        # agent.ha.Coordinator when one of an HA pair

    def build(self) -> None:
        """Create the queue, sinks and sources (imports only the adapters configured)."""
        self.lock.acquire()     # before anything is opened: a second agent must not capture
        try:
            self._build()
        except BaseException:
            self.lock.release()
            raise

    def _build(self) -> None:
        cfg = self.config
        slower = [n for n in self.catalog.names() if not self.catalog.entity(n).has_generated_encoder]
        if slower:      # correct, about 10 µs more per event (docs/schemas.md)
            log.info("Avro: %s written by fastavro (no encoder was generated for these schemas when the "
                     "package was built)", ", ".join(slower))
        self.queue = ObservedQueue(cfg.state_dir, max_bytes=cfg.queue.max_bytes, track_marks=cfg.ha is not None,
                                   dedup_retention=cfg.queue.dedup_retention, redact=RedactingFilter(cfg.secrets).redact)
        label(self.queue.observed, cfg)
        if self.separate_delivery:
            from .worker import DeliveryProcess
            self.delivery = DeliveryProcess(cfg, self.queue.observed, self.drain_timeout)
        else:
            self.delivery = DeliveryGroup(cfg, self.catalog, self.queue, self.stop_event)
        self.deliveries = self.delivery.handles
        lookups = make_lookups(cfg)
        if cfg.ha is not None:      # one of a pair: passive until the group says otherwise
            from .ha import Coordinator, agent_identity
            self.ha = Coordinator(cfg, self.queue, self._on_role, agent_identity(cfg.state_dir))
            self.delivery.set_active(False)
        for name, route in cfg.routes.items():
            translator = LiveTranslator(make_translator(cfg, self.catalog, name, lookups))
            source = make_source(cfg, self.catalog, name, self.stop_event, translator,
                                 functools.partial(self.queue.update_status, name))
            self.captures[name] = RouteCapture(name, source, translator, self.queue, self.stop_event,
                                               on_enqueue=self.deliveries[route.sink].wakeup.set,
                                               allowed=self.may_capture)

    def may_capture(self) -> bool:
        """Always, unless this agent is the passive one of an HA pair."""
        return self.ha is None or self.ha.role.value == "active"

    def _on_role(self, role) -> None:
        """The pair's coordinator moved this agent to ``role`` (its own thread)."""
        self.delivery.set_active(role.value == "active")

    def _enter(self, state: State) -> None:
        if state not in _NEXT[self.state]:
            raise OutpostError(f"the agent is {self.state.value}: it cannot become {state.value} "
                               "(an agent starts once; build a new one to start again)")
        self.state = state

    def start(self, capture: bool = True) -> None:
        self._enter(State.STARTING)
        if self.queue is None:
            self.build()
        self._enter(State.DRAINING)
        if self.separate_delivery:
            # the delivery process drains the backlog first by itself; capture need not
            # wait for it, they no longer compete for one interpreter (order is queue order)
            self.delivery.start()
        else:
            self.delivery.drain(self.drain_timeout)
            self.delivery.start()
        if self.ha is not None:
            self.ha.start()
        if capture:
            self._start_capture()
        # everything built so far lives as long as the agent: the cyclic collector need
        # not walk it again at every collection of the hot path's short-lived objects
        gc.freeze()
        self._enter(State.RUNNING)
        log.info("agent running: %d route(s), %d sink(s), state in %s", len(self.captures), len(self.deliveries),
                 self.config.state_dir)

    def _start_capture(self) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": None})
        for name, capture in self.captures.items():
            if streams(self.config, name):
                self.streams.append(StreamLoop(capture, self.stop_event, self.capture_started))
                continue
            schedule = self.config.routes[name].schedule
            trigger = IntervalTrigger(seconds=schedule.every) if schedule.every else \
                CronTrigger.from_crontab(schedule.cron)
            # run at once on start, then on the schedule
            self.scheduler.add_job(functools.partial(self._capture, name), trigger, id=name,
                                   name=f"capture {name}", next_run_time=now)
        # on a timer, not after deliveries: an idle queue must forget old ids too
        self.scheduler.add_job(self._prune, IntervalTrigger(seconds=self.config.queue.prune_every),
                               id="outpost-prune", name="forget old delivered ids", next_run_time=now)
        self.scheduler.add_job(self._serve_reload, IntervalTrigger(seconds=1.0), id="outpost-reload",
                               name="serve reload requests")
        for name, route in self.config.routes.items():      # docs/reconciliation.md
            if route.reconcile is not None and route.reconcile.cron:
                self.scheduler.add_job(functools.partial(self._reconcile, name), CronTrigger.from_crontab(
                    route.reconcile.cron, timezone=route.reconcile.zone), id=f"reconcile-{name}",
                    name=f"reconcile {name}")
        self.scheduler.start()
        for stream in self.streams:
            stream.start()

    def _capture(self, name: str) -> int:
        """One scheduled pass; its start time lets the systemd watchdog see a pass that hangs."""
        self.capture_started[name] = time.monotonic()
        try:
            return self.captures[name].run_once()
        finally:
            self.capture_started[name] = None

    def _reconcile(self, name: str) -> None:
        """A scheduled reconciliation: its result is queued and recorded in the route's status;
        a failure is logged and the next run tries again (capture never waits on it)."""
        from .reconcile_run import reconcile_route
        if not self.may_capture():
            return          # the passive agent of a pair: the active one reconciles
        try:
            reconcile_route(self.config, self.catalog, self.queue, name)
        except Exception as exc:
            log.error("route %s: scheduled reconciliation failed: %s: %s", name, type(exc).__name__, exc)
            self.queue.update_status(name, reconcile={"ran_at": time.time(), "error": str(exc)[:500]})

    def _prune(self) -> None:
        try:
            removed = self.queue.prune()
        except sqlite3.Error as exc:     # a full disk: the next tick tries again
            log.warning("forgetting old delivered ids failed: %s", exc)
            return
        if removed:
            log.info("forgot %d delivered event id(s) older than %.0fs", removed, self.config.queue.dedup_retention)

    def request_reload(self) -> None:
        """Re-read the config at the next look (safe to call from a signal handler)."""
        self.reloader.wanted.set()

    def _serve_reload(self) -> None:
        try:
            self.reloader.serve()
        except sqlite3.Error as exc:     # a full disk: the next look tries again
            log.warning("reload requests cannot be read: %s", exc)

    def run_pass(self) -> int:
        """Capture every route once, synchronously (used by tests, the demo and one-shot runs)."""
        return sum(capture.run_once() for capture in self.captures.values())

    def deliver_all(self, timeout: float = 30.0) -> bool:
        """Synchronously drain every sink (delivery in this process only)."""
        return all(delivery.drain(timeout) for delivery in self.deliveries.values())

    def wait(self) -> None:
        while not self.stop_event.wait(1.0):
            pass

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Graceful: stop capture, let in-flight batches finish, flush sinks, close the queue.

        Bounded by ``timeout`` (default ``shutdown_timeout``). Returns False when a capture
        pass or a delivery did not finish in time: what they had not committed stays safely
        queued or is captured again (same event ids); the host should then exit promptly.
        """
        if self.state in (State.STOPPING, State.STOPPED):
            return True
        self._enter(State.STOPPING)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.stop_event.set()
        clean = self._stop_capture(deadline)
        if self.ha is not None:
            self.ha.stop()
        if self.delivery is not None:
            clean = self.delivery.stop(deadline) and clean
        for name, capture in self.captures.items():
            _quietly(capture.close, f"closing source of route {name}")
        if self.queue is not None:
            self.queue.close()
        self.lock.release()
        self._enter(State.STOPPED)
        log.info("agent stopped" + ("" if clean else " (shutdown bound reached)"))
        return clean

    def _stop_capture(self, deadline: float) -> bool:
        """A pass blocked on its source must not hold the stop beyond the bound: its
        uncommitted batch is captured again after the restart (invariant 1)."""
        waiters = [threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True)] \
            if self.scheduler is not None else []
        for waiter in waiters:
            waiter.start()
        for thread in waiters + self.streams:
            thread.join(max(0.1, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in waiters + self.streams):
            log.warning("a capture pass did not finish within the shutdown bound; it is abandoned uncommitted")
            return False
        return True


def _quietly(action, what: str) -> None:
    try:
        action()
    except Exception:
        log.warning("%s failed", what, exc_info=True)
