"""`outpost check`: connect to everything configured and say what to fix."""
from __future__ import annotations

from typing import Iterator

from .contracts import OutpostError
from .logs import RedactingFilter
from .registry import adapter_class
from .runtime import Agent


def run_checks(cfg) -> Iterator[tuple[str, list[str]]]:
    """(subject, problems) pairs; every problem redacted with the config's secrets (an
    adapter's error can quote a value that came from ``${...}``)."""
    redact = RedactingFilter(cfg.secrets).redact
    for subject, problems in _checks(cfg):
        yield subject, [redact(problem) for problem in problems]


def _checks(cfg) -> Iterator[tuple[str, list[str]]]:
    agent = Agent(cfg)
    catalog = agent.catalog
    schema_problems = [f"{name}: {p}" for name in catalog.names() for p in catalog.check_backward(name)]
    yield "schemas (backward compatibility with the released versions)", schema_problems
    for name, route in cfg.routes.items():
        yield f"route {name}: source {route.source}", _check_adapter(
            lambda: adapter_class("source", cfg.sources[route.source]["type"])(
                cfg.source_options(name), agent._context(route.source)))
    for name in sorted({route.sink for route in cfg.routes.values()}):
        yield f"sink {name}", _check_adapter(
            lambda: adapter_class("sink", cfg.sinks[name]["type"])(cfg.sink_options(name), agent._context(name)))


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
