"""Adapters are looked up by their config name and imported only when configured.

Each package under ``adapters/`` declares itself with one ``AdapterSpec`` per role in its
``__init__`` (``SOURCE`` and/or ``SINK``; see ``agent.contracts.AdapterSpec``): its name,
options model, implementation, what it emits and its commands. That declaration is all
the core reads; adding an adapter needs no edit in ``agent/``. Implementations are
imported only when a route uses them, which keeps the JVM of the Debezium bridge and
database drivers out of processes that do not need them.

Adapters shipped outside this repository (their own distribution) are found the same way
through the entry-point group ``outpost.adapters``: each entry names a module that
declares ``SOURCE`` / ``SINK`` like the packages here, e.g. in the plugin's setup.cfg::

    [options.entry_points]
    outpost.adapters =
        jsonl = outpost_jsonl

A plugin cannot replace a built-in adapter of the same name and role, and one that fails
to import is skipped with a warning instead of breaking every other route.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import logging
import pkgutil
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Optional

from pydantic import BaseModel, ValidationError

from .contracts import AdapterSpec
from .logs import RedactingFilter

ADAPTER_PACKAGE = "adapters"
ENTRY_POINT_GROUP = "outpost.adapters"
_ROLES = {"source": "SOURCE", "sink": "SINK"}

log = logging.getLogger("outpost.registry")


def _modules():
    """The built-in adapter packages, then the modules plugins declare (entry points)."""
    package = importlib.import_module(ADAPTER_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            yield importlib.import_module(f"{ADAPTER_PACKAGE}.{info.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            yield entry.load()
        except Exception as exc:   # one broken plugin must not take every route down with it
            log.warning("adapter plugin %s (%s) cannot be imported and is ignored: %s: %s",
                        entry.name, entry.value, type(exc).__name__, exc)


@functools.lru_cache(maxsize=None)
def _declared() -> dict[tuple[str, str], AdapterSpec]:
    found = {}
    for module in _modules():
        for kind, attribute in _ROLES.items():
            spec = getattr(module, attribute, None)
            if not isinstance(spec, AdapterSpec):
                continue
            if (kind, spec.name) in found:
                log.warning("adapter %s %r from %s is ignored: %s already declares it", kind, spec.name,
                            module.__name__, found[(kind, spec.name)].implementation)
                continue
            found[(kind, spec.name)] = spec
    return found


def spec_of(kind: str, adapter: str) -> AdapterSpec:
    """The declaration of adapter ``adapter`` as a ``kind``; LookupError naming the valid ones."""
    spec = _declared().get((kind, adapter))
    if spec is None:
        if any(name == adapter for _, name in _declared()):
            raise LookupError(f"adapter {adapter!r} cannot be used as a {kind}")
        raise LookupError(f"no adapter named {adapter!r}")
    return spec


def adapter_names(kind: str) -> list[str]:
    """The adapters that can serve as a ``kind`` (without importing their implementation)."""
    return sorted(name for role, name in _declared() if role == kind)


def parse_options(kind: str, adapter: str, options: Mapping[str, Any], where: str, *,
                  secrets: Iterable[str] = (), located: Optional[Callable[[str], str]] = None):
    """(the validated options model, problems): each problem prefixed with its config path.

    ``located(option)`` is the path where an option was written, for options merged from
    several sections (a source and a route's capture); by default ``where.option``.
    Problems about the options as a whole go under ``where``. Values are redacted.
    """
    located = located or (lambda option: f"{where}.{option}")
    try:
        model = spec_of(kind, adapter).options
    except LookupError as exc:
        return None, [f"{located('type')}: {exc}{_suggestion(str(adapter), adapter_names(kind), 'types')}"]
    try:
        return model.model_validate(dict(options)), []
    except ValidationError as exc:
        return None, [describe_error(where, e, secrets, model, located) for e in exc.errors()]


def describe_error(where: str, error: dict, secrets: Iterable[str] = (), model: Optional[type] = None,
                   located: Optional[Callable[[str], str]] = None) -> str:
    """One pydantic error as 'key.path: what was expected (found what)'.

    The path is ``where`` and the error's location, or ``located(first key)`` and the rest.
    The found value is shown short (a mapping by its keys) with every secret redacted
    before it is shortened, so no part of a secret survives. ``model`` (the model that was
    validated) lets an unknown key be answered with the valid keys and the closest one.
    """
    redact = RedactingFilter(secrets).redact
    # "(tag)" parts name the branch of a tagged union: not a key the user wrote
    loc = [str(part) for part in error["loc"] if not (isinstance(part, str) and part[:1] == "(" and part[-1:] == ")")]
    message = redact(error["msg"].removeprefix("Value error, "))
    if loc[-1:] == ["[key]"]:      # a mapping key of the wrong type: name the key as written
        loc[-2:] = [str(error.get("input"))]
        message = message.replace("Input", "the key", 1)
    if located and loc:
        location = ".".join([located(loc[0])] + loc[1:])
    else:
        location = ".".join([where] * bool(where) + loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key{_suggestion(loc[-1], _valid_keys(model, error['loc'][:-1]), 'keys')}"
    if "found" in message:      # our own validators already say what they found
        return f"{location}: {message}"
    if error["type"] == "missing":
        return f"{location}: {message} (found nothing)"
    if not loc and isinstance(error.get("input"), Mapping):
        return f"{location}: {message}"     # about a whole section: its contents would say nothing more
    return f"{location}: {message} (found {_short(error.get('input'), redact)})"


def _short(value: Any, redact: Callable[[str], str]) -> str:
    """A value as a problem shows it: a mapping by its keys, a list by its length, the
    rest redacted then cut to one short line."""
    if isinstance(value, Mapping):
        keys = [redact(str(k)) for k in value]
        listed = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
        return f"a mapping with keys {listed}" if keys else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    shown = repr(redact(value)) if isinstance(value, str) else redact(repr(value))
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _suggestion(word: str, valid: Iterable[str], what: str) -> str:
    valid = sorted(valid)
    if not valid:
        return ""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    guess = f", did you mean {close[0]!r}?" if close else ""
    return f"{guess} (valid {what}: {', '.join(valid)})"


def _valid_keys(model: Optional[type], loc: tuple) -> list[str]:
    """The keys the model at ``loc`` accepts (empty when it cannot be told)."""
    annotation: Any = model
    for part in (*loc, None):
        annotation = _model_or_container(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part is None:
                return [f.alias or name for name, f in annotation.model_fields.items() if not f.exclude]
            fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
            annotation = fields[part].annotation if part in fields else None
        elif part is not None and typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1]
        else:
            return []
    return []


def _model_or_container(annotation: Any) -> Any:
    """Through Optional/Union/Annotated to the model or dict/list inside, if any."""
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        args = [a for a in typing.get_args(annotation)[:1 if typing.get_origin(annotation) is typing.Annotated
                                                         else None] if a is not type(None)]
        annotation = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
    return annotation


def adapter_class(kind: str, adapter: str):
    """The Source or Sink class of an adapter (imports its implementation now)."""
    return spec_of(kind, adapter).load()


def adapter_commands() -> list:
    """CLI commands adapters contribute (their spec's ``commands``). Those modules must
    import lightly (click and their options): they load on every ``outpost`` invocation."""
    commands, seen = [], set()
    for spec in _declared().values():
        if spec.commands and spec.commands not in seen:
            seen.add(spec.commands)
            module, _, attribute = spec.commands.partition(":")
            commands.extend(getattr(importlib.import_module(module), attribute))
    return commands
