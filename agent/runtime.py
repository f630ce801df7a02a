"""The ``Agent``: one object with an explicit lifecycle, hosted by the CLI, systemd or
the Windows service manager (thin shells that only call ``start``/``stop``).

Lifecycle: CREATED -> STARTING -> DRAINING -> RUNNING -> STOPPING -> STOPPED.
On start the agent first delivers what is already queued, then captures anything new.
"""
from __future__ import annotations

import datetime as dt
import enum
import functools
import logging
import sqlite3
import threading
import time
from typing import Optional

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config
from .contracts import AdapterContext
from .logs import RedactingFilter
from .mapping import EntityMapping
from .metrics import ObservedQueue, instrument
from .capture import RouteCapture
from .delivery import SinkDelivery
from .translate import Translator
from .queue import DurableQueue
from .registry import adapter_class
from .schemas import SchemaCatalog
from .statedir import StateLock

log = logging.getLogger("outpost.agent")


class State(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    DRAINING = "draining"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Agent:
    def __init__(self, config: Config, *, drain_timeout: float = 30.0):
        self.config = config
        self.state = State.CREATED
        self.stop_event = threading.Event()
        self.drain_timeout = drain_timeout
        self.catalog = SchemaCatalog.load(config.schema_dir)
        self.queue: Optional[DurableQueue] = None
        self.deliveries: dict[str, SinkDelivery] = {}
        self.captures: dict[str, RouteCapture] = {}
        self.scheduler: Optional[BackgroundScheduler] = None
        self.capture_started: dict[str, Optional[float]] = {}   # route -> when its running pass began
        self.lock = StateLock(config.state_dir, "outpost run")

    def _context(self, name: str, **extra) -> AdapterContext:
        return AdapterContext(name=name, state_dir=self.config.state_dir, schemas=self.catalog,
                              fabric=self.config.fabric.model_dump(), log=logging.getLogger(f"outpost.{name}"),
                              stop=self.stop_event, **extra)

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
        self.queue = ObservedQueue(cfg.state_dir, max_bytes=cfg.queue.max_bytes,
                                  dedup_retention=cfg.queue.dedup_retention, redact=RedactingFilter(cfg.secrets).redact)
        used_sinks = {route.sink for route in cfg.routes.values()}
        for name in sorted(used_sinks):
            sink = adapter_class("sink", cfg.sinks[name]["type"])(cfg.sink_options(name), self._context(name))
            self.deliveries[name] = SinkDelivery(name, sink, self.queue, self.stop_event,
                                                 batch_size=cfg.queue.delivery_batch)
        for name, route in cfg.routes.items():
            translator = make_translator(cfg, self.catalog, name)
            context = self._context(route.source, validate=translator.problems,
                                    report_status=functools.partial(self.queue.update_status, name))
            source = adapter_class("source", cfg.sources[route.source]["type"])(cfg.source_options(name), context)
            self.captures[name] = RouteCapture(name, source, translator, self.queue, self.stop_event,
                                               on_enqueue=self.deliveries[route.sink].wakeup.set)
        instrument(self)

    def start(self, capture: bool = True) -> None:
        self.state = State.STARTING
        if self.queue is None:
            self.build()
        self.state = State.DRAINING
        for name, delivery in self.deliveries.items():
            backlog = self.queue.depth(name)
            if backlog and not delivery.drain(self.drain_timeout):
                log.warning("sink %s: %d events still queued after the start-up drain; capture starts anyway",
                            name, self.queue.depth(name))
        for delivery in self.deliveries.values():
            delivery.start()
        if capture:
            self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                               "misfire_grace_time": None})
            for name, capture_job in self.captures.items():
                schedule = self.config.routes[name].schedule
                trigger = IntervalTrigger(seconds=schedule.every) if schedule.every else \
                    CronTrigger.from_crontab(schedule.cron)
                # run at once on start, then on the schedule
                self.scheduler.add_job(functools.partial(self._capture, name), trigger, id=name,
                                       name=f"capture {name}", next_run_time=dt.datetime.now(self.scheduler.timezone))
            # on a timer, not after deliveries: an idle queue must forget old ids too
            self.scheduler.add_job(self._prune, IntervalTrigger(seconds=self.config.queue.prune_every),
                                   id="outpost-prune", name="forget old delivered ids",
                                   next_run_time=dt.datetime.now(self.scheduler.timezone))
            self.scheduler.start()
        self.state = State.RUNNING
        log.info("agent running: %d route(s), %d sink(s), state in %s", len(self.captures), len(self.deliveries),
                 self.config.state_dir)

    def _capture(self, name: str) -> int:
        """One scheduled pass; its start time lets the systemd watchdog see a pass that hangs."""
        self.capture_started[name] = time.monotonic()
        try:
            return self.captures[name].run_once()
        finally:
            self.capture_started[name] = None

    def _prune(self) -> None:
        try:
            removed = self.queue.prune()
        except sqlite3.Error as exc:     # a full disk: the next tick tries again
            log.warning("forgetting old delivered ids failed: %s", exc)
            return
        if removed:
            log.info("forgot %d delivered event id(s) older than %.0fs", removed, self.config.queue.dedup_retention)

    def run_pass(self) -> int:
        """Capture every route once, synchronously (used by tests, the demo and one-shot runs)."""
        return sum(capture.run_once() for capture in self.captures.values())

    def deliver_all(self, timeout: float = 30.0) -> bool:
        """Synchronously drain every sink (no delivery threads needed)."""
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
        clean = True
        self.state = State.STOPPING
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.stop_event.set()
        if self.scheduler is not None:
            # a pass blocked on its source must not hold the stop beyond the bound: its
            # uncommitted batch is captured again after the restart (invariant 1)
            waiter = threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True)
            waiter.start()
            waiter.join(max(0.1, deadline - time.monotonic()))
            if waiter.is_alive():
                clean = False
                log.warning("a capture pass did not finish within the shutdown bound; it is abandoned uncommitted")
        for delivery in self.deliveries.values():
            delivery.wakeup.set()
            if delivery.is_alive():
                delivery.join(max(0.1, deadline - time.monotonic()))
        for delivery in self.deliveries.values():
            if delivery.is_alive():
                # still waiting on the destination: its batch stays queued and is sent again
                # (same event ids) after the restart; closing under it would only add noise
                log.warning("sink %s did not finish within the shutdown bound; %d event(s) stay queued",
                            delivery.sink_name, self.queue.depth(delivery.sink_name))
                clean = False
                continue
            _quietly(delivery.close, f"closing sink {delivery.sink_name}")
        for name, capture in self.captures.items():
            _quietly(capture.close, f"closing source of route {name}")
        if self.queue is not None:
            self.queue.close()
        self.lock.release()
        self.state = State.STOPPED
        log.info("agent stopped" + ("" if clean else " (shutdown bound reached)"))
        return clean


def make_translator(config: Config, catalog: SchemaCatalog, route_name: str) -> Translator:
    route = config.routes[route_name]
    if route.mapping is None:   # the source yields canonical events (inbound): keep them as they are
        from .passthrough import PassThroughTranslator
        return PassThroughTranslator(route_name, route.sink, catalog)
    mapping_cfg = config.mappings[route.mapping]
    mapping = EntityMapping(route.mapping, mapping_cfg, catalog.entity(mapping_cfg.entity), config.lookups)
    system = config.sources[route.source].get("system") or route.source
    keep = None if config.queue.exception_context == "full" else mapping.columns
    return Translator(route_name, route.sink, system, mapping, keep_columns=keep)


def _quietly(action, what: str) -> None:
    try:
        action()
    except Exception:
        log.warning("%s failed", what, exc_info=True)
