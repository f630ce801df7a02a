"""Building a route's parts from the validated config: adapter contexts, sources, sinks
and translators. Every process of the agent (capture, delivery) and every command that
opens an adapter (``check``, ``queue retry``) builds them here, the same way.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Optional

from .config import Config
from .ha import agent_identity, transactional_id
from .contracts import AdapterContext
from .lookups import Lookups
from .registry import spec_of
from .schemas import SchemaCatalog

if TYPE_CHECKING:
    from .translate import Translator

__all__ = ["adapter_context", "delivery_bound", "make_lookups", "make_sink", "make_source", "make_translator",
           "streams", "used_sinks"]


def adapter_context(config: Config, catalog: SchemaCatalog, name: str, stop: Optional[threading.Event] = None,
                    **extra) -> AdapterContext:
    fabric = config.fabric.model_dump()
    if config.ha is not None and name in config.sinks:
        # every agent of the pair claims the same id: the active one fences the others
        fabric["kafka"] = {**fabric["kafka"], "transactional.id": transactional_id(config, name)}
    return AdapterContext(name=name, state_dir=config.state_dir, schemas=catalog, fabric=fabric,
                          agent_id=agent_identity(config.state_dir), log=logging.getLogger(f"outpost.{name}"),
                          stop=stop or threading.Event(), **extra)


def used_sinks(config: Config) -> list[str]:
    return sorted({route.sink for route in config.routes.values()})


def make_sink(config: Config, catalog: SchemaCatalog, name: str, stop: Optional[threading.Event] = None):
    return spec_of("sink", config.sinks[name]["type"]).load()(config.parsed_sinks[name],
                                                             adapter_context(config, catalog, name, stop))


def make_source(config: Config, catalog: SchemaCatalog, route_name: str, stop: Optional[threading.Event] = None,
                translator: Optional[Translator] = None, update_status: Optional[Callable[..., None]] = None):
    """``update_status(**fields)``: where the route's stored status is updated (the queue)."""
    route = config.routes[route_name]
    extra = {"route": route_name}
    if translator is not None:
        # late-bound: a reload swaps the route's translator, the source keeps asking it
        extra["validate"] = lambda record: translator.problems(record)
        extra["identify"] = lambda record: translator.identify(record)
        extra["columns"] = lambda: getattr(translator, "columns", frozenset())
    if update_status is not None:
        extra["report_health"] = lambda health: update_status(health=health.as_dict())
        extra["report_progress"] = lambda progress: update_status(progress=progress)
    return spec_of("source", config.sources[route.source]["type"]).load()(
        config.parsed_sources[route_name], adapter_context(config, catalog, route.source, stop, **extra))


def streams(config: Config, route_name: str) -> bool:
    """Whether the route's source follows a change log (a loop of its own, no schedule)."""
    return spec_of("source", config.sources[config.routes[route_name].source]["type"]).streaming


def delivery_bound(config: Config, sink_name: str, default: float = 30.0) -> float:
    """The longest a healthy write of this sink may take (seconds), as the sink declares."""
    spec = spec_of("sink", config.sinks[sink_name]["type"])
    return spec.delivery_bound(config.parsed_sinks[sink_name]) if spec.delivery_bound else default


def make_lookups(config: Config) -> Lookups:
    """The config's lookup tables, to share between the routes of one process (a SQL
    lookup is then read once per refresh, not once per route)."""
    return Lookups.from_config(config)


def make_translator(config: Config, catalog: SchemaCatalog, route_name: str,
                    lookups: Optional[Lookups] = None) -> Translator:
    # imported here, not above: the delivery process builds sinks only, and translating
    # (mapping, expressions, simpleeval) is capture's job
    from .expressions import compile_expression
    from .mapping import EntityMapping
    from .translate import Translator
    route = config.routes[route_name]
    if route.mapping is None:   # the source yields canonical events (inbound): keep them as they are
        from .passthrough import PassThroughTranslator
        return PassThroughTranslator(route_name, route.sink, catalog)
    lookups = lookups if lookups is not None else make_lookups(config)
    mapping_cfg = config.mappings[route.mapping]
    mapping = EntityMapping(route.mapping, mapping_cfg, catalog.entity(mapping_cfg.entity), lookups)
    system = config.sources[route.source].get("system") or route.source
    keep = None if config.queue.exception_context == "full" else mapping.columns
    row_filter = compile_expression(route.filter, lookups) if route.filter is not None else None
    facts = None
    if route.reconcile is not None:      # the reconciliation ledger: only routes that reconcile pay for it
        from zoneinfo import ZoneInfo
        from .ledger import Facts
        facts = Facts(ZoneInfo(route.reconcile.zone),
                      tuple(f.name for f in mapping.schema.fields if f.avro_type == "decimal"))
    return Translator(route_name, route.sink, system, mapping, keep_columns=keep, filter=row_filter, ledger=facts)
