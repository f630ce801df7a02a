"""Prometheus metrics and the business service objectives, per route.

Two sources, on purpose:

- the queue's persisted route status (``DurableQueue.status()``): lifetime counters that
  survive restarts (captured, published, rejected, dead-lettered), queue depth, oldest
  queued age, open exceptions, and what sources report about themselves (their ``Health``:
  lag, state, problems). A custom Collector reads it at scrape time, so the numbers are the
  ones ``outpost status`` shows;
- what the agent's processes observed since they started (``agent.observe``): the
  delivery-latency histogram (source change -> sink confirmation, labelled with the
  sink's type) and error counts by class.
"""
from __future__ import annotations

import time
from typing import Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import slo
from .health import route_problems
from .observe import ERROR_CLASSES, cumulative_buckets


def success_rate(status: dict) -> Optional[float]:
    """published / (published + rejected + dead-lettered - retried); None before anything
    settled. An entry retried from the exception queue is published then, and counted there."""
    published = status.get("published_total", 0)
    failed = max(0, status.get("rejected_total", 0) + status.get("dead_lettered_total", 0)
                 - status.get("recovered_total", 0))
    return None if published + failed == 0 else round(published / (published + failed), 6)


def capture_lag(status: dict, now: float) -> Optional[float]:
    """What the source reports (``Health.lag_seconds``), else seconds since the route was
    last read up to date (a polling route shows its interval; a stuck one grows)."""
    reported = (status.get("health") or {}).get("lag_seconds")
    if reported is not None:
        return float(reported)
    last = status.get("last_capture_run_at")
    return None if last is None else max(0.0, now - float(last))


def log_lag_bytes(status: dict) -> Optional[float]:
    """Change log not yet read, as the source reports it (``Health.lag_bytes``)."""
    reported = (status.get("health") or {}).get("lag_bytes")
    return None if reported is None else float(reported)


def objectives(cfg, per_route: dict) -> dict:
    """The business service objectives per route and entity, for ``status``."""
    result = {}
    for name, route in cfg.routes.items():
        status = per_route.get(name, {})
        entity = cfg.mappings[route.mapping].entity if route.mapping in cfg.mappings else None
        result[name] = {"entity": entity, "sync_success_rate": success_rate(status),
                        "last_delivery_latency_s": status.get("last_publish_latency_s"),
                        "business": business_objective(cfg, status, entity), "reconcile": status.get("reconcile")}
    return result


def business_objective(cfg, status: dict, entity) -> Optional[dict]:
    """The route's standing against ``objectives.<entity>`` (agent.slo), None without one. An
    inbound route (no mapping) is judged on the entities it applied."""
    bins_by_entity = status.get("change_to_ack_bins") or {}
    entities = [entity] if entity else sorted(bins_by_entity)
    for name in entities:
        goal = getattr(cfg, "objectives", {}).get(name)
        if goal is not None:
            bins = bins_by_entity.get(name) or [0] * (len(slo.BUCKETS) + 1)
            return {"entity": name, **slo.judge(bins, goal.within, goal.target)}
    return None


def render_objectives(per_route: dict) -> str:
    """Text lines for ``outpost status``."""
    lines = []
    for name, o in per_route.items():
        rate = "-" if o["sync_success_rate"] is None else f"{100 * o['sync_success_rate']:.1f} %"
        latency = "-" if o["last_delivery_latency_s"] is None else f"{o['last_delivery_latency_s']:.2f}s"
        lines.append(f"\nobjectives {name} ({o['entity'] or 'events as received'}): sync success rate {rate}, "
                     f"last change-to-confirmation latency {latency}")
        b = o.get("business")
        if b:
            attained = "-" if b["attained"] is None else f"{100 * b['attained']:.2f} %"
            budget = "-" if b["error_budget_left"] is None else f"{100 * b['error_budget_left']:.1f} %"
            lines.append(f"\n  objective {b['entity']}: {100 * b['target']:g} % within {b['within_s']:g}s, attained "
                         f"{attained} of {b['confirmed']} change(s), error budget left {budget}")
        r = o.get("reconcile")
        if r:
            verdict = "error: " + r["error"] if r.get("error") else ("tied out" if r.get("tied_out") else
                                                                      f"NOT tied out ({r.get('unexplained')} unexplained)")
            lines.append(f"\n  last reconciliation: window {r.get('window', '-')}, {verdict}, "
                         f"{r.get('differing_keys', 0)} differing key(s), at "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r['ran_at']))} UTC")
    return "".join(lines)


class StatusCollector:
    """Prometheus families read from the queue's status at scrape time."""

    def __init__(self, agent):
        self.agent = agent

    def describe(self):
        return []

    def collect(self):
        agent, cfg = self.agent, self.agent.config
        per_route = agent.queue.status()
        now = time.time()
        labels = ["route", "entity"]
        fam = {
            "captured": CounterMetricFamily("outpost_events_captured", "Events captured into the local queue "
                                            "(lifetime, persisted).", labels=labels),
            "published": CounterMetricFamily("outpost_events_published", "Events confirmed by the sink "
                                             "(lifetime, persisted).", labels=labels + ["sink"]),
            "rejected": CounterMetricFamily("outpost_records_rejected", "Source records rejected by mapping or "
                                            "validation (lifetime).", labels=labels),
            "dead": CounterMetricFamily("outpost_events_dead_lettered", "Events the sink refused, parked in the "
                                        "exception queue (lifetime).", labels=labels),
            "depth": GaugeMetricFamily("outpost_queue_depth", "Events waiting in the local queue.", labels=labels),
            "oldest": GaugeMetricFamily("outpost_queue_oldest_age_seconds", "Age of the oldest queued event "
                                        "(0 when empty).", labels=labels),
            "exceptions": GaugeMetricFamily("outpost_exceptions_open", "Open entries in the exception queue.",
                                            labels=labels),
            "lag": GaugeMetricFamily("outpost_capture_lag_seconds", "Source-reported capture lag, else seconds "
                                     "since the route was last read up to date.", labels=labels),
            "slot": GaugeMetricFamily("outpost_slot_lag_bytes", "Change log not yet read, as the source reports "
                                      "it (WAL a replication slot retains, binlog behind).", labels=labels),
            "rate": GaugeMetricFamily("outpost_sync_success_ratio", "published / (published + rejected + "
                                      "dead-lettered - retried from the exception queue), by route and entity.",
                                      labels=labels),
            "last": GaugeMetricFamily("outpost_last_delivery_latency_seconds", "Latency of the newest confirmed "
                                      "event (source change to sink confirmation).", labels=labels),
            "connected": GaugeMetricFamily("outpost_route_healthy", "1 when the route has no source or sink error "
                                           "and no backpressure.", labels=labels),
        }
        for name, route in cfg.routes.items():
            s = per_route.get(name, {})
            values = [name, agent.queue.observed.entities.get(name, "")]
            fam["captured"].add_metric(values, s.get("captured_total", 0))
            fam["published"].add_metric(values + [route.sink], s.get("published_total", 0))
            fam["rejected"].add_metric(values, s.get("rejected_total", 0))
            fam["dead"].add_metric(values, s.get("dead_lettered_total", 0))
            fam["depth"].add_metric(values, s.get("queue_depth", 0))
            fam["oldest"].add_metric(values, s.get("oldest_queued_age_s") or 0)
            fam["exceptions"].add_metric(values, s.get("open_exceptions", 0))
            lag = capture_lag(s, now)
            if lag is not None:
                fam["lag"].add_metric(values, lag)
            slot = log_lag_bytes(s)
            if slot is not None:
                fam["slot"].add_metric(values, slot)
            rate = success_rate(s)
            if rate is not None:
                fam["rate"].add_metric(values, rate)
            if s.get("last_publish_latency_s") is not None:
                fam["last"].add_metric(values, float(s["last_publish_latency_s"]))
            fam["connected"].add_metric(values, 0 if route_problems(s) else 1)
        yield from fam.values()
        latency = HistogramMetricFamily("outpost_delivery_latency_seconds",
                                        "Source change (occurred_at, else queued time) to sink confirmation: "
                                        "broker ack for kafka, local commit for sql_apply.",
                                        labels=["route", "entity", "sink", "sink_type"])
        for label, bins in agent.queue.observed.latency_bins().items():
            buckets, total = cumulative_buckets(bins)
            latency.add_metric(list(label), buckets, total)
        yield latency
        snapshot = HistogramMetricFamily("outpost_snapshot_delivery_age_seconds",
                                         "Snapshot rows: the row's age (occurred_at, else queued time) at sink "
                                         "confirmation; kept out of the change latency.",
                                         labels=["route", "entity", "sink", "sink_type"])
        for label, bins in agent.queue.observed.latency_bins("snapshot_latency").items():
            buckets, total = cumulative_buckets(bins)
            snapshot.add_metric(list(label), buckets, total)
        yield snapshot
        yield build_info()
        yield from business_families(cfg, per_route)
        errors = CounterMetricFamily("outpost_errors", "Errors by class since the process started.",
                                     labels=["route", "class"])
        counts = agent.queue.observed.error_counts()
        for name in cfg.routes:
            for kind in ERROR_CLASSES:
                errors.add_metric([name, kind], counts.get((name, kind), 0))
        yield errors
        state = GaugeMetricFamily("outpost_agent_state", "1 for the agent's current lifecycle state.",
                                  labels=["state"])
        for member in type(agent.state):
            state.add_metric([member.value], 1 if member == agent.state else 0)
        yield state
        used = GaugeMetricFamily("outpost_queue_bytes", "Bytes of the local queue's file (waiting events, "
                                 "delivered ids, exceptions).")
        used.add_metric([], agent.queue.used_bytes())
        yield used
        waiting = GaugeMetricFamily("outpost_queue_waiting_bytes", "Bytes of the events waiting to be delivered: "
                                    "what queue.max_bytes limits.")
        waiting.add_metric([], agent.queue.pending_bytes())
        yield waiting


def build_info() -> GaugeMetricFamily:
    """outpost_build_info{version, python} 1: which build runs where (dashboards join on it)."""
    import platform
    from .version import version_text
    info = GaugeMetricFamily("outpost_build_info", "The running build: always 1, labelled with the version.",
                             labels=["version", "python"])
    info.add_metric([version_text(), platform.python_version()], 1)
    return info


def business_families(cfg, per_route: dict):
    """Change-to-ack histograms per route and entity (persisted, agent.slo), the objectives'
    standing, and each route's last reconciliation."""
    latency = HistogramMetricFamily("outpost_change_to_ack_seconds", "Source change to acknowledgement by the "
                                    "fabric (outbound) or local commit (inbound), persisted across restarts.",
                                    labels=["route", "entity"])
    attained = GaugeMetricFamily("outpost_objective_attained_ratio", "Share of changes confirmed within the "
                                 "objective's time.", labels=["route", "entity"])
    target = GaugeMetricFamily("outpost_objective_target_ratio", "The objective's target share.",
                               labels=["route", "entity"])
    budget = GaugeMetricFamily("outpost_objective_error_budget_remaining_ratio", "Error budget left (1 untouched, "
                               "0 spent, below 0 overspent).", labels=["route", "entity"])
    tied = GaugeMetricFamily("outpost_reconcile_tied_out", "1 when the route's last reconciliation tied out.",
                             labels=["route"])
    ran = GaugeMetricFamily("outpost_reconcile_last_run_timestamp_seconds", "When the route was last reconciled.",
                            labels=["route"])
    for name in cfg.routes:
        status = per_route.get(name, {})
        for entity, bins in sorted((status.get("change_to_ack_bins") or {}).items()):
            counts, running, buckets = bins[:len(slo.BUCKETS)], 0, []
            for bound, count in zip(slo.BUCKETS, counts):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
            latency.add_metric([name, entity], buckets, bins[-1])
        route = cfg.routes[name]
        b = business_objective(cfg, status, cfg.mappings[route.mapping].entity if route.mapping in cfg.mappings
                               else None)
        if b is not None:
            target.add_metric([name, b["entity"]], b["target"])
            if b["attained"] is not None:
                attained.add_metric([name, b["entity"]], b["attained"])
                budget.add_metric([name, b["entity"]], b["error_budget_left"])
        r = status.get("reconcile") or {}
        if "tied_out" in r:
            tied.add_metric([name], 1 if r["tied_out"] else 0)
        if r.get("ran_at"):
            ran.add_metric([name], float(r["ran_at"]))
    yield from (latency, attained, target, budget, tied, ran)


def registry_for(agent) -> CollectorRegistry:
    """The registry ``/metrics`` serves: one collector reading status and observations."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatusCollector(agent))
    return registry
