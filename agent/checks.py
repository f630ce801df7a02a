"""`outpost check`: connect to everything configured and say what to fix."""
from __future__ import annotations

from typing import Iterator

from .contracts import OutpostError
from .logs import RedactingFilter
from .build import make_sink, make_source, used_sinks
from .schemas import SchemaCatalog


def run_checks(cfg) -> Iterator[tuple[str, list[str]]]:
    """(subject, problems) pairs; every problem redacted with the config's secrets (an
    adapter's error can quote a value that came from ``${...}``)."""
    redact = RedactingFilter(cfg.secrets).redact
    for subject, problems in _checks(cfg):
        yield subject, [redact(problem) for problem in problems]


def _checks(cfg) -> Iterator[tuple[str, list[str]]]:
    catalog = SchemaCatalog.load(cfg.schema_dir)
    schema_problems = [f"{name}: {p}" for name in catalog.names() for p in catalog.check_backward(name)]
    yield "schemas (backward compatibility with the released versions)", schema_problems
    for name, route in cfg.routes.items():
        yield f"route {name}: source {route.source}", _check_adapter(lambda: make_source(cfg, catalog, name))
    for name in used_sinks(cfg):
        yield f"sink {name}", _check_adapter(lambda: make_sink(cfg, catalog, name))


def _check_adapter(make) -> list[str]:
    adapter = None
    try:
        adapter = make()
        adapter.open()
        return list(adapter.check()) if hasattr(adapter, "check") else []
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
