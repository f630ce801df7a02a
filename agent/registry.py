"""Adapters are looked up by their config name and imported only when configured.

An adapter named ``x`` lives in the package ``adapters.x``: its ``spec`` module holds the
pydantic options model (``SourceOptions`` / ``SinkOptions``, light imports only) and its
``source`` / ``sink`` module holds the implementation. Importing lazily keeps the JVM of
the Debezium bridge, and database drivers, out of processes that do not use them.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from typing import Any, Mapping

from pydantic import ValidationError

ADAPTER_PACKAGE = "adapters"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_OPTIONS_MODEL = {"source": "SourceOptions", "sink": "SinkOptions"}


def _module(kind: str, adapter: str, role: str):
    if not _NAME.match(adapter or ""):
        raise LookupError(f"{adapter!r} is not a valid adapter name")
    try:
        package = importlib.import_module(f"{ADAPTER_PACKAGE}.{adapter}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"{ADAPTER_PACKAGE}.{adapter}", ADAPTER_PACKAGE):
            raise LookupError(f"no adapter named {adapter!r}") from None
        raise
    try:
        return importlib.import_module(f"{package.__name__}.{role}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{package.__name__}.{role}":
            raise LookupError(f"adapter {adapter!r} cannot be used as a {kind}") from None
        raise


def validate_options(kind: str, adapter: str, options: Mapping[str, Any], where: str) -> list[str]:
    """Problems with an adapter's options, each prefixed with its config path."""
    try:
        model = getattr(_module(kind, adapter, "spec"), _OPTIONS_MODEL[kind], None)
    except LookupError as exc:
        return [f"{where}: {exc}"]
    if model is None:
        return [f"{where}: adapter {adapter!r} cannot be used as a {kind}"]
    try:
        model.model_validate(dict(options))
    except ValidationError as exc:
        return [describe_error(where, e) for e in exc.errors()]
    return []


def describe_error(where: str, error: dict) -> str:
    """One pydantic error as 'key.path: what was expected (found what)'."""
    location = ".".join([where] * bool(where) + [str(part) for part in error["loc"]]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if "found" in message:      # our own validators already say what they found
        return f"{location}: {message}"
    shown = "nothing" if error["type"] == "missing" else repr(error.get("input"))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{location}: {message} (found {shown})"


def load_options(kind: str, adapter: str, options: Mapping[str, Any]):
    """The validated options model instance."""
    return getattr(_module(kind, adapter, "spec"), _OPTIONS_MODEL[kind]).model_validate(dict(options))


def adapter_class(kind: str, adapter: str):
    """The Source or Sink class of an adapter (imports its implementation now)."""
    module = _module(kind, adapter, kind)
    return getattr(module, kind.capitalize())


def adapter_commands() -> list:
    """CLI commands adapters contribute: ``COMMANDS`` in ``adapters/<name>/cli.py``.

    Those modules must import lightly (click and their spec): they load on every
    ``outpost`` invocation, unlike the adapters themselves.
    """
    commands = []
    for info in pkgutil.iter_modules(importlib.import_module(ADAPTER_PACKAGE).__path__):
        name = f"{ADAPTER_PACKAGE}.{info.name}.cli"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            commands.extend(getattr(importlib.import_module(name), "COMMANDS", []))
    return commands
