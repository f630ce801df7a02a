"""What the running agent observes as events pass: in memory, since its processes started.

Delivery latency per (route, entity, sink), error counts by class, and the progress
counters the systemd watchdog reads (settled batches per sink, committed capture batches
per route). Plain counters and bucket counts, not Prometheus objects, so that a delivery
process can ship them to the process that serves ``/metrics`` (``snapshot`` there,
``absorb`` here) and the labels are resolved once per batch rather than once per event.

Delivery latency runs from the source change (``occurred_at``, else the time it was
queued) to the sink's confirmation: the broker ack for ``kafka``, the local commit for
``sql_apply`` (inbound event -> local commit).
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from typing import Optional

from .queue import DurableQueue

__all__ = ["Observations", "ObservedQueue", "LATENCY_BUCKETS", "ERROR_CLASSES", "label"]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
ERROR_CLASSES = ("mapping_rejected", "publish_rejected", "source_unavailable", "sink_unavailable")
_SUM = len(LATENCY_BUCKETS) + 1      # bins: one per bucket, +Inf, then the sum of seconds


def label(observed: "Observations", cfg) -> None:
    """What the counters are labelled with: each sink's type and each route's entity.
    (Here, not in ``agent.metrics``: the delivery process labels what it observes but
    serves no ``/metrics``, so it need not import prometheus_client.)"""
    observed.sink_types.update({name: str(options.get("type", "")) for name, options in cfg.sinks.items()})
    observed.entities.update({name: cfg.mappings[r.mapping].entity for name, r in cfg.routes.items()
                              if r.mapping in cfg.mappings})


class Observations:
    """Counters of one process, plus what other processes of the agent reported."""

    def __init__(self):
        self.lock = threading.Lock()
        self.settles: Counter = Counter()     # sink -> settled batches (any outcome)
        self.captures: Counter = Counter()    # route -> committed capture batches
        self.errors: Counter = Counter()      # (route, class) -> count
        self.latency: dict[tuple, list] = {}  # (route, entity, sink, sink type) -> bins
        # snapshot rows apart: their age is the row's, not a change's (78,033 s after an
        # initial snapshot would fire every latency alert)
        self.snapshot_latency: dict[tuple, list] = {}
        self.sink_types: dict[str, str] = {}
        self.entities: dict[str, str] = {}    # route -> entity
        self._reported: dict[object, dict] = {}   # another process's latest snapshot, by its generation

    # -- recording (the process that does the work) ---------------------------------------
    def settled(self, sink: str, events, report, now: float) -> None:
        delivered, rejected = report.delivered, report.rejected
        sink_type = self.sink_types.get(sink, "")
        with self.lock:
            self.settles[sink] += 1
            bins_of: dict = {}
            for event in events:
                if event.event_id in delivered:
                    snapshot = event.operation == "snapshot"
                    bins = bins_of.get((event.route, snapshot))
                    if bins is None:
                        label = (event.route, event.entity, sink, sink_type)
                        kept = self.snapshot_latency if snapshot else self.latency
                        bins = bins_of[(event.route, snapshot)] = kept.setdefault(label, [0] * (_SUM + 1))
                    age = now - (event.occurred_at or event.enqueued_at)
                    age = age if age > 0 else 0.0
                    bins[bisect_left(LATENCY_BUCKETS, age)] += 1
                    bins[_SUM] += age
                elif event.event_id in rejected:
                    self.errors[(event.route, "publish_rejected")] += 1
            if report.transient_error:
                for route in {e.route for e in events}:
                    self.errors[(route, "sink_unavailable")] += 1

    def captured(self, route: str, rejected: int) -> None:
        with self.lock:
            self.captures[route] += 1
            if rejected:
                self.errors[(route, "mapping_rejected")] += rejected

    def error(self, route: str, kind: str) -> None:
        with self.lock:
            self.errors[(route, kind)] += 1

    def snapshot(self) -> dict:
        """Everything counted so far, picklable (sent to the serving process)."""
        with self.lock:
            return {"settles": dict(self.settles), "errors": dict(self.errors),
                    "latency": {label: list(bins) for label, bins in self.latency.items()},
                    "snapshot_latency": {label: list(bins) for label, bins in self.snapshot_latency.items()}}

    # -- reading (what metrics, status and the watchdog see) ------------------------------
    def absorb(self, generation: object, snapshot: dict) -> None:
        """The latest cumulative snapshot of another process (a restarted one is a new
        generation: what the old one counted stays counted)."""
        with self.lock:
            self._reported[generation] = snapshot

    def settled_batches(self, sink: str) -> int:
        with self.lock:
            return self.settles.get(sink, 0) + sum(s["settles"].get(sink, 0) for s in self._reported.values())

    def error_counts(self) -> Counter:
        with self.lock:
            total = Counter(self.errors)
            for snapshot in self._reported.values():
                total.update(snapshot["errors"])
        return total

    def latency_bins(self, kind: str = "latency") -> dict[tuple, list]:
        """Delivery-latency bins of changes (``latency``) or of snapshot rows (``snapshot_latency``)."""
        with self.lock:
            total = {label: list(bins) for label, bins in getattr(self, kind).items()}
            for snapshot in self._reported.values():
                for label, bins in snapshot.get(kind, {}).items():
                    mine = total.setdefault(label, [0] * len(bins))
                    for i, count in enumerate(bins):
                        mine[i] += count
        return total


def cumulative_buckets(bins: list) -> tuple[list, float]:
    """Prometheus ``le`` buckets (cumulative counts, '+Inf' last) and the sum."""
    buckets, running = [], 0
    for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), bins[:_SUM]):
        running += count
        buckets.append((bound, running))
    return buckets, bins[_SUM]


class ObservedQueue(DurableQueue):
    """The durable queue, counting what passes through it."""

    def __init__(self, *args, observed: Optional[Observations] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.observed = observed or Observations()

    def commit_capture(self, route, events, exceptions, checkpoint, status=None, **more) -> int:
        added = super().commit_capture(route, events, exceptions, checkpoint, status, **more)
        self.observed.captured(route, len(exceptions))
        return added

    def settle(self, sink, events, report) -> None:
        super().settle(sink, events, report)
        self.observed.settled(sink, events, report, time.time())

    def update_status(self, route: str, **update) -> None:
        super().update_status(route, **update)
        if update.get("source_error"):
            self.observed.error(route, "source_unavailable")
