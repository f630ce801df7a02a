"""Declarative mapping from a source row to a canonical entity, and validation gates.

Pure code: a row (dict) goes in, a canonical payload and a list of problems come out.
The entity's schema drives type coercion (``agent.coercion``: money is always
``Decimal`` quantised to the schema's scale, never a float) and the gates (required
fields, ISO 4217 currency, non-negative amounts, known codes). A row with any problem is never published: the
caller sends it to the exception queue with the row, the mapping and every problem.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .coercion import CONVERSIONS, coercer, is_iso4217
from .expressions import ExpressionError, MissingReference, compile_expression
from .lookups import LookupTable
from .mapping_plan import FieldStep, generate

__all__ = ["Problem", "EntityMapping", "check_mapping", "gate_problems", "known_codes", "CONVERSIONS",
           "CODE_RULES"]

# Schema rules that mean "must be one of the values of the lookup table of that name".
CODE_RULES = ("legal_entity", "tax_jurisdiction", "service_line")


@dataclass(frozen=True)
class Problem:
    field: str
    rule: str
    message: str
    column: Optional[str] = None
    value: Any = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["value"] = None if self.value is None else str(self.value)
        return out


class _CodeSets:
    """rule -> the canonical values of the lookup table of that name, as the table is now
    (a SQL lookup's codes are swapped whole when it is re-read)."""

    def __init__(self, tables: Mapping[str, LookupTable]):
        self._tables = tables
        self._seen: dict[str, tuple] = {}

    def __contains__(self, rule) -> bool:
        return rule in self._tables

    def __getitem__(self, rule) -> set:
        codes = self._tables[rule].codes
        seen = self._seen.get(rule)
        if seen is None or seen[0] is not codes:
            seen = self._seen[rule] = (codes, {str(v) for v in codes.values()})
        return seen[1]


class EntityMapping:
    """A compiled mapping: ``apply(row)`` returns ``(payload, problems)``; a ``None`` row gives
    ``(None, [])``.

    ``lookups``: name -> ``LookupTable`` (or a plain dict of codes); a table's codes are
    read per row, so a refreshed SQL lookup takes effect without recompiling."""

    def __init__(self, name: str, config, entity_schema, lookups: Mapping[str, Any]):
        self.name = name
        self.config = config
        self.schema = entity_schema
        self.lookups = {n: t if isinstance(t, LookupTable) else LookupTable(n, t) for n, t in lookups.items()}
        self.zone = ZoneInfo(config.source_timezone)
        # canonical code sets, for rules on fields that are not looked up themselves
        self._known_codes = _CodeSets({rule: self.lookups[rule] for rule in CODE_RULES if rule in self.lookups})
        self._expressions = {field: compile_expression(rule.expr, self.lookups)
                             for field, rule in config.fields.items() if rule.expr is not None}
        self.steps = self._compile()
        self._apply = generate(name, self.steps, self._known_codes, Problem, MissingReference)

    @property
    def entity(self) -> str:
        return self.schema.entity

    @property
    def columns(self) -> frozenset:
        """The source columns this mapping reads (what an exception entry keeps of a row)."""
        named = {rule.column for rule in self.config.fields.values() if rule.column is not None}
        return frozenset(named.union(*(e.columns for e in self._expressions.values())))

    @property
    def lookup_names(self) -> frozenset:
        """The lookup tables this mapping reads (refreshed before a capture pass)."""
        named = {rule.lookup for rule in self.config.fields.values() if rule.lookup is not None}
        return frozenset(named.union(*(e.lookup_names for e in self._expressions.values())))

    def refresh_lookups(self) -> None:
        """Re-read the SQL lookups that are due (TransientError if one was never read)."""
        for name in self.lookup_names:
            self.lookups[name].refresh()

    def describe(self) -> dict:
        """The mapping as data, for the exception queue's context."""
        return {"name": self.name, "entity": self.entity,
                "fields": {k: v.model_dump(exclude_defaults=True) for k, v in self.config.fields.items()}}

    def _compile(self) -> list[FieldStep]:
        """One step per canonical field, resolved once: ``apply`` runs for every captured row."""
        steps = []
        for spec in self.schema.fields:
            rule = self.config.fields.get(spec.name)
            converters = tuple(CONVERSIONS[name] for name in rule.convert) if rule else ()
            lookup = (rule.lookup, self.lookups[rule.lookup]) if rule and rule.lookup else None
            # "" is missing for every non-string field, and for a required string too
            # (17 invoices once went out with customer_number "")
            blank_is_missing = spec.avro_type != "string" or not spec.nullable
            missing = frozenset(str(m) for m in rule.missing) if rule and rule.missing else None
            steps.append(FieldStep(spec, rule.column if rule else None, self._expressions.get(spec.name),
                                   rule.const if rule else None, converters, missing, lookup,
                                   rule.default if rule else None, blank_is_missing, coercer(spec, self.zone)))
        return steps

    def apply(self, row: Optional[Mapping[str, Any]]) -> tuple[Optional[dict], list[Problem]]:
        """The payload of every field that mapped, and every problem of every field
        (agent.mapping_plan wrote the function for this mapping's steps)."""
        return self._apply(row)


def known_codes(lookups: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    """The canonical codes of each code rule that has a lookup table of its name."""
    return {rule: {str(v) for v in lookups[rule].values() if v is not None} for rule in CODE_RULES if rule in lookups}


def gate_problems(spec, value, codes: Mapping[str, set]) -> list[tuple[str, str]]:
    """(rule, message) for every schema rule of ``spec`` that ``value`` breaks: the gates
    outbound rows pass before they are published and inbound events before they are
    applied. ``codes``: the known canonical codes per code rule (``known_codes``)."""
    found = []
    for rule in spec.rules:
        if rule == "iso4217" and not (isinstance(value, str) and is_iso4217(value)):
            found.append((rule, f"{value!r} is not an ISO 4217 currency code"))
        elif rule == "non_negative" and value < 0:
            found.append((rule, "must not be negative"))
        elif rule in codes and str(value) not in codes[rule]:
            found.append((rule, f"unknown {rule} code {value!r}"))
    return found


def check_mapping(where: str, config, catalog, lookups: Mapping[str, Any]) -> list[str]:
    """Config-time problems of one mapping (unknown entity, field, lookup, conversion)."""
    try:
        schema = catalog.entity(config.entity)
    except KeyError as exc:
        return [f"{where}.entity: {exc.args[0]}"]
    problems = []
    known = {f.name: f for f in schema.fields}
    for field_name, rule in config.fields.items():
        if field_name not in known:
            problems.append(f"{where}.fields.{field_name}: expected a field of {schema.entity} "
                            f"({', '.join(known)}), found {field_name!r}")
        if rule.lookup is not None and rule.lookup not in lookups:
            problems.append(f"{where}.fields.{field_name}.lookup: expected one of "
                            f"{', '.join(sorted(lookups)) or 'no lookups defined'}, found {rule.lookup!r}")
        for name in rule.convert:
            if name not in CONVERSIONS:
                problems.append(f"{where}.fields.{field_name}.convert: expected one of "
                                f"{', '.join(CONVERSIONS)}, found {name!r}")
        if rule.expr is not None:
            try:
                compile_expression(rule.expr, lookups)
            except ExpressionError as exc:
                problems.append(f"{where}.fields.{field_name}.expr: {exc}")
    for spec in schema.fields:
        if not spec.nullable and spec.name not in config.fields:
            problems.append(f"{where}.fields.{spec.name}: required by {schema.entity}, found no rule for it")
    try:
        ZoneInfo(config.source_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"{where}.source_timezone: expected an IANA time zone, found {config.source_timezone!r}")
    return problems
