"""Delivery: one thread per sink drains its queue in ``seq`` order (hence per entity key),
removing only what the sink confirmed (invariant 3); what it rejected moves to the
exception queue, the only thing that may leave the order (invariant 5).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Optional

from .contracts import DeliveryReport, KeyHold, TransientError
from .queue import DurableQueue
from .supervise import RETRY_CAP_S, Backoff, StallWatch

__all__ = ["SinkDelivery", "DeliveryGroup", "in_key_order"]

log = logging.getLogger("outpost.delivery")


class SinkDelivery(threading.Thread):
    """Drains one sink's queue in order; backs off while the sink is unreachable."""

    def __init__(self, name: str, sink, queue: DurableQueue, stop: threading.Event, batch_size: int = 500,
                 max_backoff: float = RETRY_CAP_S, stall_after: float = 5.0, wakeup=None):
        super().__init__(name=f"deliver-{name}", daemon=True)
        self.sink_name, self.sink, self.queue, self.stop = name, sink, queue, stop
        self.batch_size = batch_size
        self.stall_after = stall_after
        # set by capture after a commit; a multiprocessing Event when capture is another process
        self.wakeup = wakeup if wakeup is not None else threading.Event()
        self.connected = False
        self.backoff = Backoff(initial=0.5, cap=max_backoff)
        # A sink may wait long for acknowledgements (librdkafka retries by itself, which
        # avoids duplicates); meanwhile status must already say that events are waiting.
        self.stalls = StallWatch(stall_after, self._stalled, stop, f"watch-{name}")
        self._opened = False
        # The worker thread and a synchronous drain must never send the same batch twice.
        self._one_at_a_time = threading.Lock()
        # Open unless this agent is the passive one of an HA pair; reopening the sink when
        # it becomes active claims (fences) the pair's transactional id.
        self.gate = threading.Event()
        self.gate.set()
        self._reopen = False

    def set_active(self, active: bool) -> None:
        if active:
            # Only a passive agent becoming active reopens (claims the pair's ids again):
            # "active" told again while active (the delivery process at its start) must not
            # open every sink twice.
            if not self.gate.is_set():
                self._reopen = True
            self.gate.set()
        else:
            self.gate.clear()
        self.wakeup.set()

    def deliver_once(self) -> Optional[int]:
        """One batch. Returns how many were settled, or None if the sink is unavailable."""
        with self._one_at_a_time:
            return self._deliver_batch()

    def _deliver_batch(self) -> Optional[int]:
        if not self.gate.is_set():
            return 0
        events = self.queue.peek(self.sink_name, self.batch_size)
        if not events:
            return 0
        try:
            # Opening is watched too: it may read the destination (reflection) and wait on
            # the same lock or the same silent broker as a write.
            with self.stalls.watching({e.route for e in events}):
                if self._reopen:
                    self._reopen, self._opened = False, False
                    self.sink.close()
                if not self._opened:
                    self.sink.open()
                    self._opened = True
                report = in_key_order(self.sink, events)
        except TransientError as exc:
            report = None
            error = str(exc)
        except Exception as exc:   # unknown = transient: the events stay queued
            log.exception("sink %s: write failed", self.sink_name)
            report, error = None, f"{type(exc).__name__}: {exc}"
        if report is None:
            report = DeliveryReport(transient_error=error)
        self.queue.settle(self.sink_name, events, report)
        self.connected = report.transient_error is None
        if report.transient_error:
            return None
        return len(report.delivered) + len(report.rejected)

    def _stalled(self, seconds: float, routes) -> None:
        self.connected = False
        # The status keeps when the outage began and renders its length and the waiting
        # events when read (agent.health): this text must not freeze "for 5s" into it.
        message = f"sink {self.sink_name}: no acknowledgement from the destination (unreachable?)"
        log.warning("%s for %.0fs; %d event(s) wait in the queue", message, seconds, self.queue.depth(self.sink_name))
        for route in routes:
            self.queue.update_status(route, sink_error=message)

    def run(self) -> None:
        """Until the agent stops: no error ends this loop (a dead delivery thread would
        leave the agent alive and delivering nothing)."""
        self._open_at_start()
        while not self.stop.is_set():
            settled = self._attempt()
            if settled is None:
                delay = self.backoff.failed()
                log.warning("sink %s unavailable, retrying in %.1fs", self.sink_name, delay)
                self.stop.wait(delay)
            elif settled == 0:
                self.backoff.succeeded()
                self.wakeup.wait(1.0)
                self.wakeup.clear()
                self.gate.wait(1.0)
            else:
                self.backoff.succeeded()

    def _open_at_start(self) -> None:
        """Open the sink before anything waits to be sent: ``open`` is where a sink takes
        over what a crash left (the avro_files sink's temp file holds acked events), which
        must not wait for the next event. A sink that cannot open yet opens with its first
        batch; the passive agent of an HA pair opens nothing (opening fences its pair)."""
        if not self.gate.is_set() or self.stop.is_set():
            return
        with self._one_at_a_time:
            if self._opened:
                return
            try:
                with self.stalls.watching(()):
                    self.sink.open()
                self._opened = True
            except Exception as exc:
                log.info("sink %s: not opened at start (%s: %s); its first batch opens it", self.sink_name,
                         type(exc).__name__, exc)

    def _attempt(self) -> Optional[int]:
        """``deliver_once``, with the local queue's own failures (a full disk) reported and
        retried like an unreachable sink. An event the sink acknowledged but the queue
        could not settle is sent again under the same id (consumers de-duplicate)."""
        try:
            return self.deliver_once()
        except Exception as exc:
            self.connected = False
            kind = "local queue unavailable" if isinstance(exc, sqlite3.Error) else "delivery failed"
            log.error("sink %s: %s: %s: %s", self.sink_name, kind, type(exc).__name__, exc,
                      exc_info=not isinstance(exc, sqlite3.Error))
            return None

    def drain(self, timeout: float) -> bool:
        """Deliver the backlog before capture starts; False if the sink is unavailable."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            settled = self._attempt()
            if settled is None:
                return False
            if settled == 0:
                return True
        return self.queue.depth(self.sink_name) == 0

    def close(self) -> None:
        self.sink.close()


def in_key_order(sink, events) -> DeliveryReport:
    """One write, per-key order kept around it: what the sink's ``screen`` refuses is
    rejected or held before anything is sent, and a held event holds the later events of
    its key (``KeyHold``); the rest is written. A sink that reports a later event of a key
    delivered while an earlier one stays queued broke the order: said loudly."""
    verdicts = sink.screen(events)
    hold, send, rejected, held_because = KeyHold(), [], {}, None
    if not verdicts:            # nothing refused or held: the whole batch goes, in order
        send = list(events)
    else:
        for event in events:
            verdict = verdicts.get(event.event_id)
            if verdict is not None and verdict[0]:
                rejected[event.event_id] = verdict[1]        # leaves the order: invariant 5
            elif verdict is not None or hold.blocked(event):
                hold.hold(event)
                held_because = held_because or (verdict[1] if verdict else None)
            else:
                send.append(event)
    report = sink.write(send) if send else DeliveryReport()
    report.rejected.update(rejected)
    if held_because and not report.transient_error:
        report.transient_error = f"held in the queue: {held_because}"
    if report.delivered.issuperset(e.event_id for e in events):
        return report           # all delivered: no order to check
    waiting = KeyHold()
    for event in events:
        if event.event_id in report.delivered and waiting.blocked(event):
            log.error("sink broke the order of key %s %s: event %s delivered while an earlier one stays queued",
                      event.entity, event.key, event.event_id)
        elif event.event_id not in report.delivered and event.event_id not in report.rejected:
            waiting.hold(event)
    return report


class DeliveryGroup:
    """Every sink's delivery thread in this process (tests, the demo, ``run --once``; and
    the body of the delivery process, ``agent.worker``)."""

    def __init__(self, config, catalog, queue: DurableQueue, stop: threading.Event, wakeups=None):
        from .build import make_sink, used_sinks
        self.queue, self.stop_event = queue, stop
        self.handles: dict[str, SinkDelivery] = {
            name: SinkDelivery(name, make_sink(config, catalog, name, stop), queue, stop,
                               batch_size=config.queue.delivery_batch,
                               wakeup=(wakeups or {}).get(name))
            for name in used_sinks(config)}

    def drain(self, timeout: float) -> bool:
        """Deliver the backlog before capture starts ("drain pending work, then extract")."""
        drained = True
        for name, delivery in self.handles.items():
            if self.queue.depth(name) and not delivery.drain(timeout):
                drained = False
                if not self.stop_event.is_set():
                    log.warning("sink %s: %d events still queued after the start-up drain; going on",
                                name, self.queue.depth(name))
        return drained

    def start(self) -> None:
        for delivery in self.handles.values():
            delivery.start()

    def set_active(self, active: bool) -> None:
        """The passive agent of an HA pair sends nothing; the active reopens its sinks."""
        for delivery in self.handles.values():
            delivery.set_active(active)

    def stop(self, deadline: float) -> bool:
        """Let each thread finish its batch, then close the sinks; False at the deadline."""
        clean = True
        for delivery in self.handles.values():
            delivery.wakeup.set()
            if delivery.is_alive():
                delivery.join(max(0.1, deadline - time.monotonic()))
        for delivery in self.handles.values():
            if delivery.is_alive():
                # still waiting on the destination: its batch stays queued and is sent again
                # (same event ids) after the restart; closing under it would only add noise
                log.warning("sink %s did not finish within the shutdown bound; %d event(s) stay queued",
                            delivery.sink_name, self.queue.depth(delivery.sink_name))
                clean = False
                continue
            try:
                delivery.close()
            except Exception:
                log.warning("closing sink %s failed", delivery.sink_name, exc_info=True)
        return clean
