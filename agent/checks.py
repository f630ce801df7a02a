"""`outpost check`: connect to everything configured and say what to fix."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterator

from .contracts import OutpostError
from .logs import RedactingFilter
from .build import make_sink, make_source, used_sinks
from .check_columns import cursor_problems, mapping_column_problems
from .check_host import host_problems
from .schemas import SchemaCatalog


def run_checks(cfg) -> Iterator[tuple[str, list[str]]]:
    """(subject, problems) pairs; every problem redacted with the config's secrets (an
    adapter's error can quote a value that came from ``${...}``)."""
    redact = RedactingFilter(cfg.secrets).redact
    for subject, problems in _checks(cfg):
        yield subject, [redact(problem) for problem in problems]


def _checks(cfg) -> Iterator[tuple[str, list[str]]]:
    yield "this machine (state directory, status port)", host_problems(cfg)
    catalog = SchemaCatalog.load(cfg.schema_dir)
    schema_problems = [f"{name}: {p}" for name in catalog.names() for p in catalog.check_backward(name)]
    yield "schemas (backward compatibility with the released versions)", schema_problems + _queued_schemas(cfg, catalog)
    for name, route in cfg.routes.items():
        yield f"route {name}: source {route.source}", _check_adapter(
            lambda: make_source(cfg, catalog, name), lambda adapter: _columns(cfg, catalog, name, adapter))
    for name in used_sinks(cfg):
        yield f"sink {name}", _check_adapter(lambda: make_sink(cfg, _routed_to(cfg, catalog, name), name))


def _queued_schemas(cfg, catalog) -> list[str]:
    """After an upgrade with a backlog, every queued event must find the schema it was
    written with, current or released: delivery would park those that do not. Read-only:
    the check must not migrate the queue of the version it replaces."""
    path = Path(cfg.state_dir) / "queue.db"
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            queued = db.execute("SELECT schema_fingerprint, entity, count(*) FROM outbox GROUP BY 1, 2").fetchall()
    except sqlite3.Error:
        return []       # no queue yet, or one the agent reports itself when it opens it
    problems = []
    for fingerprint, entity, count in queued:
        try:
            catalog.by_fingerprint(fingerprint)
        except KeyError:
            problems.append(f"queue: {count} queued {entity} event(s) were written with schema {fingerprint[:12]}, "
                            f"which this agent neither has nor has released, and would be parked. Copy that "
                            f"version's schema into {catalog.directory / 'released'}/v<N>/ before starting "
                            f"(docs/schemas.md)")
    return problems


class _Entities:
    """The catalog as a sink's check sees it: only the entities routed to it (with
    auto_register off, a subject is required for what the sink publishes, not for all 8)."""

    def __init__(self, catalog, used: set):
        self._catalog, self._used = catalog, used

    def names(self):
        return [name for name in self._catalog.names() if name in self._used]

    def __getattr__(self, name):
        return getattr(self._catalog, name)


def _routed_to(cfg, catalog, sink: str):
    routes = [r for r in cfg.routes.values() if r.sink == sink]
    if any(r.mapping not in cfg.mappings for r in routes):     # events as received: any entity
        return catalog
    return _Entities(catalog, {cfg.mappings[r.mapping].entity for r in routes})


def _columns(cfg, catalog, route_name: str, adapter) -> list[str]:
    """The route's mapping against the table its source reflected (sources that can)."""
    route = cfg.routes[route_name]
    if not hasattr(adapter, "reflected_columns") or route.mapping not in cfg.mappings:
        return []
    mapping, options = cfg.mappings[route.mapping], cfg.parsed_sources.get(route_name)
    columns = adapter.reflected_columns()
    table = getattr(adapter, "object", None) or str(getattr(options, "table", "?"))
    fields = {f.name: f for f in catalog.entity(mapping.entity).fields}
    located = _located(cfg, route_name)
    problems = mapping_column_problems(route.mapping, mapping, fields, table, columns,
                                       also_named=tuple(getattr(options, "rollups", None) or ()),
                                       selected=getattr(options, "columns", None), selected_at=located("columns"),
                                       sample=getattr(adapter, "sample", lambda column: []))
    cursor = getattr(options, "cursor", None)
    return problems + (cursor_problems(cursor, table, columns, located) if cursor else [])


def _located(cfg, route_name: str):
    """Where a source option of a route was written: the route's capture, else its source."""
    route = cfg.routes[route_name]

    def located(option: str) -> str:
        if option in route.capture or option not in cfg.sources.get(route.source, {}):
            return f"routes.{route_name}.capture.{option}"
        return f"sources.{route.source}.{option}"
    return located


def _check_adapter(make, more=lambda adapter: []) -> list[str]:
    adapter = None
    try:
        adapter = make()
        adapter.open()
        found = list(adapter.check()) if hasattr(adapter, "check") else []
        if not any(not p.startswith("warning:") for p in found):
            found += more(adapter)       # the adapter could read what it compares with
        return found
    except OutpostError as exc:
        return getattr(exc, "problems", None) or [str(exc)]
    except Exception as exc:
        return [f"{type(exc).__name__}: {exc}"]
    finally:
        if adapter is not None:
            try:
                adapter.close()
            except Exception:
                pass
