"""One reconciliation run of a route: the I/O around the pure ``agent.reconcile``.

Reads the source (through its adapter's ``reconciler()``), the ledger and the queue (what
is still queued, parked, filtered), optionally looks for hard deletes, and publishes the
Reconciliation event *through the queue* to the route's sink, so it is as durable as any
captured change (and reaches its own topic, ``topic_template`` with entity Reconciliation).
Delete events for hard deletes go through the route itself, so the ledger drops the keys
once the fabric has them.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Optional
from zoneinfo import ZoneInfo

from . import ledger
from .build import make_source, make_translator
from .contracts import OutpostError, SourceRecord
from .events import envelope
from .reconcile import Evidence, Side, Window, differing_keys, explain, result
from .reconcile_config import ReconcileConfig
from .reconcile_deletes import DeleteSearch, find_hard_deletes, primary_key_of, published_primary_keys

__all__ = ["reconcile_route", "money_columns", "status_route"]

log = logging.getLogger("outpost.reconcile")


def status_route(route: str) -> str:
    """The queue route of a route's Reconciliation events (their counters stay off the route's own)."""
    return f"reconcile:{route}"


def money_columns(cfg, route_name: str) -> dict[str, str]:
    """Canonical money field -> the source column it is read from, for fields mapped straight
    from a column (a field computed by an expression, a lookup or a conversion has no column
    to sum at the source; docs/reconciliation.md)."""
    from .schemas import SchemaCatalog
    mapping = cfg.mappings[cfg.routes[route_name].mapping]
    schema = SchemaCatalog.load(cfg.schema_dir).entity(mapping.entity)
    columns = {}
    for spec in schema.fields:
        rule = mapping.fields.get(spec.name)
        if spec.avro_type == "decimal" and rule is not None and rule.column and not rule.convert and not rule.lookup:
            columns[spec.name] = rule.column
    return columns


def reconcile_route(cfg, catalog, queue, route_name: str, window_text: Optional[str] = None, *,
                    publish: bool = True, deletes: Optional[str] = None, sleep=time.sleep) -> dict:
    """Reconcile ``route_name`` over a window (default: the route's ``reconcile.window``);
    returns the Reconciliation payload plus ``delete_search`` (when deletes were looked for)."""
    if route_name not in cfg.routes:
        raise OutpostError(f"no route {route_name!r}; routes: {', '.join(sorted(cfg.routes)) or 'none'}")
    route = cfg.routes[route_name]
    if route.mapping is None:
        raise OutpostError(f"routes.{route_name}: an inbound route (no mapping) is reconciled by its sql_apply "
                           "ledger, not here")
    settings = route.reconcile or ReconcileConfig()
    window = Window.parse(window_text or ("yesterday" if settings.window == "day" else "all"), settings.zone)
    deletes = deletes or settings.deletes
    translator = make_translator(cfg, catalog, route_name)
    source = make_source(cfg, catalog, route_name)
    if not hasattr(source, "reconciler"):
        raise OutpostError(f"routes.{route_name}.source: {cfg.sources[route.source]['type']} sources cannot be "
                           "reconciled by query yet (sql_poll can)")
    reconciler = source.reconciler(settings.rows_per_query)
    conn = queue._conn()
    try:
        columns = money_columns(cfg, route_name)
        source_side = Side(*reconciler.totals(window.start, window.end, columns))
        count, sums = ledger.published_totals(conn, route_name, window.ledger_window)
        published_side = Side(count, {f: sums.get(f, 0) for f in columns})
        search: Optional[DeleteSearch] = None
        keys, evidence = [], Evidence()
        if deletes != "off" and reconciler.single_key():
            search = find_hard_deletes(published_primary_keys(conn, route_name), reconciler,
                                       hash_key=reconciler.hash_key, chunk_rows=settings.chunk_rows,
                                       rows_per_query=settings.rows_per_query,
                                       max_queries_per_second=settings.max_queries_per_second, sleep=sleep)
            evidence.deleted_at_source |= {k.key for k in search.deleted}
        if source_side != published_side:
            keys = _key_level(reconciler, translator, queue, conn, route_name, window, columns, evidence)
        explanations, unexplained = explain(keys, evidence)
        ran_at = dt.datetime.now(dt.timezone.utc)
        checkpoint = queue.checkpoint(route_name)
        outcome = result(route_name, translator.schema.entity, window, source_side, published_side, keys,
                         explanations, unexplained, ran_at,
                         None if checkpoint is None else json.dumps(checkpoint, sort_keys=True)[:500])
        if publish:
            _publish(queue, catalog, route_name, route.sink, outcome)
        if search is not None and search.deleted and deletes == "publish":
            _publish_deletes(queue, translator, route_name, reconciler.object, settings, search.deleted, ran_at)
    finally:
        reconciler.close()
        source.close()
    queue.update_status(route_name, reconcile={
        "window": window.label, "ran_at": ran_at.timestamp(), "tied_out": outcome["tied_out"],
        "differing_keys": outcome["differing_key_count"], "unexplained": outcome["unexplained_key_count"],
        "hard_deletes": len(search.deleted) if search else None})
    log.info("route %s: reconciled %s: %s (%d differing, %d unexplained)", route_name, window.label,
             "tied out" if outcome["tied_out"] else "NOT tied out", outcome["differing_key_count"],
             outcome["unexplained_key_count"])
    if search is not None:
        outcome = {**outcome, "delete_search": search}
    return outcome


def _key_level(reconciler, translator, queue, conn, route: str, window: Window, columns, evidence: Evidence) -> list:
    """The differing keys of the window, and what Outpost knows about each (into ``evidence``)."""
    key_field = translator.schema.key_field
    at_source, rows = {}, {}
    for row in reconciler.rows(window.start, window.end):
        image, _ = translator.mapping.apply(row)       # a row the mapping rejects still has its key, mostly
        key = image.get(key_field) if image else None
        if key in (None, ""):
            continue
        at_source[str(key)] = {f: image.get(f) or 0 for f in columns}
        rows[str(key)] = row
    published = ledger.published_keys(conn, route, window.ledger_window)
    keys = differing_keys(at_source, {k: v[0] for k, v in published.items()}, columns)
    if not keys:
        return keys
    evidence.still_queued |= {k for (k,) in conn.execute("SELECT DISTINCT key FROM outbox WHERE route=?", (route,))}
    evidence.parked.update(_parked(queue, translator, route))
    evidence.discarded.update(_parked(queue, translator, route, status="discarded"))
    evidence.rejected_by_filter |= ledger.filtered_keys(conn, route, None)
    gone = {primary_key_of(published[k][1] or ""): k for k in keys if k in published and k not in at_source}
    gone.pop(None, None)
    still_there = reconciler.existing(list(gone)) if gone else {}
    for pk, key in gone.items():
        if pk in still_there:
            if not window.contains(reconciler.moment(still_there[pk])):
                evidence.changed_after_window.add(key)
        else:
            evidence.deleted_at_source.add(key)
    checkpoint = queue.checkpoint(route)
    evidence.not_yet_captured |= {k for k in keys if k in rows and reconciler.captured(rows[k], checkpoint) is False}
    return keys


def _parked(queue, translator, route: str, limit: int = 10_000, status: str = "open") -> dict:
    """key -> exception ids of the route in ``status``; a row the mapping rejected is keyed from its context."""
    found: dict = {}
    for item in queue.exceptions(status, route, limit=limit):
        key = item["key"]
        if not key:
            record = ((queue.exception(item["id"]) or {}).get("context") or {}).get("record") or {}
            image, _ = translator.mapping.apply(record.get("after") or record.get("before"))
            key = image.get(translator.schema.key_field) if image else None
        if key not in (None, ""):
            found.setdefault(str(key), []).append(item["id"])
    return found


def _publish(queue, catalog, route: str, sink: str, outcome: dict) -> None:
    """The Reconciliation event into the queue (durable; delivered like any event)."""
    schema = catalog.entity("Reconciliation")
    ran_at = outcome["ran_at"]
    record = SourceRecord(route, "snapshot", f"{outcome['window']}@{ran_at.isoformat()}", after=outcome)
    event = envelope(record, system="outpost", key=outcome["reconciliation_id"], before=None, after=outcome,
                     schema_version=schema.version, captured_at=ran_at)
    meta = event["metadata"]
    queue.commit_capture(status_route(route), [{
        "event_id": meta["event_id"], "route": status_route(route), "sink": sink, "entity": schema.entity,
        "key": outcome["reconciliation_id"], "operation": "snapshot", "schema_fingerprint": schema.fingerprint,
        "body": schema.encode(event), "correlation_id": meta["correlation_id"], "occurred_at": ran_at.timestamp()}],
        [], None)


def _publish_deletes(queue, translator, route: str, obj: str, settings: ReconcileConfig, deleted, ran_at) -> None:
    """Delete events for rows gone at the source, on the route itself. The id derives from the
    last published position, so a second run before the first is acked queues nothing new."""
    facts = translator.ledger or ledger.Facts(ZoneInfo(settings.zone), ())
    schema, rows = translator.schema, []
    for gone in deleted:
        record = SourceRecord(obj, "delete", f"{gone.position}#deleted", occurred_at=ran_at)
        event = envelope(record, system=translator.system, key=gone.key, before=None, after=None,
                         schema_version=schema.version, captured_at=ran_at)
        meta = event["metadata"]
        rows.append({"event_id": meta["event_id"], "route": route, "sink": translator.sink, "entity": schema.entity,
                     "key": gone.key, "operation": "delete", "schema_fingerprint": schema.fingerprint,
                     "body": schema.encode(event), "correlation_id": meta["correlation_id"],
                     "occurred_at": ran_at.timestamp(),
                     ledger.LEDGER_KEY: facts.of(gone.key, None, ran_at.timestamp(), record.position,
                                                 ran_at.timestamp())})
    for start in range(0, len(rows), 2000):
        queue.commit_capture(route, rows[start:start + 2000], [], None)
    log.warning("route %s: %d row(s) deleted at the source; their delete events are queued", route, len(rows))
