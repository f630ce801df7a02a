"""Reverse mapping, canonical entity -> local rows: pure code, no I/O.

``TablePlan.values(payload)`` gives the local column values of one canonical image,
``TablePlan.conflict(local, before)`` says why an event must not be applied over the
local row, ``fit(column, value)`` rejects what the column cannot hold before it reaches
the database. Every failure is an ``ApplyRejected`` with a reason for the exception
queue; nothing here ever builds SQL.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Callable, Mapping, Optional
from zoneinfo import ZoneInfo

from agent.contracts import AMOUNTS
from agent.schemas import decimal_misfit

__all__ = ["ApplyRejected", "Column", "TablePlan", "ProcedurePlan", "rule_value", "reverse_lookups", "fit", "side_by_side", "CONVERSIONS"]


_STEPS = [Decimal(1).scaleb(-n) for n in range(19)]
_WHOLE = re.compile(r"[+-]?[0-9]+")
_LIMITS = [Decimal(10) ** n for n in range(80)]


class ApplyRejected(Exception):
    """This event cannot be applied as it is; the message goes to the exception queue as its
    reason, ``context`` (JSON-able) into the entry's context."""

    def __init__(self, reason: str, context: Optional[dict] = None):
        super().__init__(reason)
        self.context = context or {}


def _yn(v):
    return v if v is None else ("Y" if v else "N")


def _int(v):
    # Strict: int('1.5'), int(Decimal('1.5')) and int(True) would lose or invent data silently.
    if v is None:
        return v
    if isinstance(v, str) and _WHOLE.fullmatch(v.strip()):
        return int(v)
    if isinstance(v, (int, Decimal)) and not isinstance(v, bool) and v == int(v):
        return int(v)
    raise ValueError(f"{v!r:.80} is not a whole number")


def _date(v):
    return v.date() if isinstance(v, dt.datetime) else v


CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "strip": lambda v: v.strip() if isinstance(v, str) else v,
    "upper": lambda v: v.upper() if isinstance(v, str) else v,
    "lower": lambda v: v.lower() if isinstance(v, str) else v,
    "str": lambda v: v if v is None else str(v),
    "yn": _yn, "int": _int, "date": _date,
    "blank_to_none": lambda v: None if isinstance(v, str) and not v.strip() else v,
}


def reverse_lookups(lookups: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Local->canonical tables turned canonical->local; a canonical code reached from two
    local codes is ambiguous (say which with an explicit ``map``)."""
    reversed_, problems = {}, []
    for name, table in lookups.items():
        out: dict[str, Any] = {}
        for local, canonical in table.items():
            if canonical is None:
                continue
            if str(canonical) in out and out[str(canonical)] != local:
                problems.append(f"lookups.{name}: canonical code {canonical!r} comes from both "
                                f"{out[str(canonical)]!r} and {local!r}; use an explicit 'map' to apply it")
            out[str(canonical)] = local
        reversed_[name] = out
    return reversed_, problems


@dataclass(frozen=True)
class Column:
    """What the reflected schema says about a local column (filled in by the sink)."""

    name: str
    kind: str                       # string, integer, numeric, float (binary), boolean, flag, date, datetime, other
    nullable: bool = True
    length: Optional[int] = None
    precision: Optional[int] = None
    scale: Optional[int] = None
    aware: bool = False             # a timestamp column that stores the zone


def fit(column: Column, value: Any, zone: ZoneInfo) -> Any:
    """The value as the column holds it, or ApplyRejected naming the column."""
    if value is None:
        if not column.nullable:
            raise ApplyRejected(f"column {column.name} is NOT NULL but the event has no value for it")
        return None
    kind = column.kind
    if kind == "string" and type(value) is str and (column.length is None or len(value) <= column.length):
        return value        # per column and event: the common case, before anything else is built
    where = f"column {column.name}"
    if kind == "string":
        if isinstance(value, (dt.datetime, dt.date, Decimal, int)) and not isinstance(value, bool):
            value = value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else str(value)
        if not isinstance(value, str):
            raise ApplyRejected(f"{where} holds text, the event has {type(value).__name__} {value!r:.80}")
        if column.length is not None and len(value) > column.length:
            raise ApplyRejected(f"{where} holds at most {column.length} characters, the event has {len(value)}")
        return value
    if kind == "flag":              # TINYINT(1), MySQL's BOOLEAN: a yes/no as it is, or a small whole number
        if isinstance(value, bool):
            return value
        kind = "integer"
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value != int(value):
            raise ApplyRejected(f"{where} holds whole numbers, the event has {type(value).__name__} {value!r:.80}")
        return int(value)
    if kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise ApplyRejected(f"{where} holds decimal numbers, the event has {type(value).__name__} "
                                f"{value!r:.80}; amounts are never floats")
        value = Decimal(value)
        if column.precision is not None and value.is_finite():
            scale = column.scale or 0
            try:
                exact = value.quantize(_STEPS[scale] if scale < len(_STEPS) else Decimal(1).scaleb(-scale),
                                       context=AMOUNTS)
            except InvalidOperation:
                exact = None
            # integer digits checked by magnitude: cheaper than counting digits (hot path);
            # the digits are counted only to say what does not fit
            digits = column.precision - scale     # PostgreSQL allows NUMERIC(1000, s)
            limit = _LIMITS[digits] if digits < len(_LIMITS) else Decimal(10) ** digits
            if exact is None or exact != value or exact.copy_abs() >= limit:
                raise ApplyRejected(f"{where} is numeric({column.precision},{scale}); "
                                    f"{decimal_misfit(value, column.precision, scale) or f'{value:f} does not fit'}")
            value = exact
        return value
    if kind == "float":
        return _fit_double(where, value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ApplyRejected(f"{where} holds booleans, the event has {type(value).__name__} {value!r:.80}")
        return value
    if kind == "datetime":
        if not isinstance(value, dt.datetime):
            raise ApplyRejected(f"{where} holds timestamps, the event has {type(value).__name__} {value!r:.80}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value if column.aware else value.astimezone(zone).replace(tzinfo=None)
    if kind == "date":
        if isinstance(value, dt.datetime):
            value = value.date()
        if not isinstance(value, dt.date):
            raise ApplyRejected(f"{where} holds dates, the event has {type(value).__name__} {value!r:.80}")
        return value
    return value


def _fit_double(where: str, value: Any) -> Decimal:
    """An exact decimal for a binary floating-point column, if the column gives it back:
    a double keeps about 15 significant digits, so a longer amount would be changed."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ApplyRejected(f"{where} holds floating-point numbers; the event has {type(value).__name__} "
                            f"{value!r:.80}; amounts come as exact decimals, never floats")
    value = Decimal(value)
    if not value.is_finite():
        raise ApplyRejected(f"{where}: {value} is not a finite number")
    try:
        stored = Decimal(repr(float(value)))
    except OverflowError:
        raise ApplyRejected(f"{where} is a double; {value:f} is out of its range") from None
    if stored != value:
        raise ApplyRejected(f"{where} is a double (about 15 significant digits); {value:f} would be stored "
                            f"as {stored:f}")
    return value


def comparable(value: Any, zone: ZoneInfo, scale: Optional[int] = None) -> Any:
    """A normal form for comparing a local value with an event value (types differ by driver).

    ``scale``: the canonical field's decimal scale. Money is compared at that scale: a
    double read back as 2040563.5700000001 is the amount 2040563.57."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if scale is not None and number.is_finite():
            number = number.quantize(_STEPS[scale] if scale < len(_STEPS) else Decimal(1).scaleb(-scale),
                                     rounding=ROUND_HALF_EVEN, context=AMOUNTS)
        return number.normalize(AMOUNTS)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(dt.timezone.utc)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return comparable(parsed, zone) if len(value) > 10 else parsed.date()
    return value


class TablePlan:
    """One local table an entity lands in, compiled from a ``TableTarget``."""

    def __init__(self, target, entity: str, lookups: Mapping[str, Mapping[str, Any]],
                 fields: Optional[Mapping[str, Any]] = None):
        """``fields``: the entity's ``FieldSpec`` by name (decimal scales for comparisons)."""
        self.target, self.entity = target, entity
        self.table, self.schema = target.table, target.schema_
        self.object = f"{self.schema}.{self.table}" if self.schema else self.table
        self.key = list(target.key)
        self.rules = dict(target.columns)
        self.zone = ZoneInfo(target.timezone)
        self._lookups = lookups
        self.columns: dict[str, Column] = {}          # set by the sink from reflection
        self.scales = {column: spec.scale for column, rule in self.rules.items()
                       if rule.field and (spec := (fields or {}).get(rule.field)) is not None
                       and spec.avro_type == "decimal"}
        conflict = target.conflict
        # version mode without a field: the column holds the source version the sink applied
        self.version_column = conflict.column if conflict.mode == "version" and not conflict.field else None
        # written on every create/update unless mapped: a soft-deleted row that is created
        # again must come back (set by the sink: the column's "not deleted" value)
        self.restore: dict[str, Any] = {}
        # positions in ``key`` of CHAR(n) columns the database gives back blank-padded (set
        # by the sink): their trailing blanks are not part of the key, as in SQL's comparison
        self.padded: frozenset = frozenset()

    def write_columns(self) -> list[str]:
        """The columns an upsert writes: the mapped ones, then those the sink keeps itself."""
        extra = [c for c in [self.version_column, *self.restore] if c and c not in self.rules]
        return list(self.rules) + list(dict.fromkeys(extra))

    def fields(self) -> set[str]:
        return {r.field for r in self.rules.values() if r.field}

    def referenced_columns(self) -> list[str]:
        names = list(self.rules)
        for extra in (self.target.conflict.column, self.target.delete.column, self.target.capture_cursor):
            if extra and extra not in names:
                names.append(extra)
        return names

    def values(self, payload: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
        """Local column -> value for one canonical image (raises ApplyRejected)."""
        row = {}
        for column, rule in self.rules.items():
            row[column] = self._value(column, rule, payload, now)
        missing = [k for k in self.key if row[k] in (None, "")]
        if missing:
            raise ApplyRejected(f"{self.entity} -> {self.object}: no value for key column(s) {missing}")
        return row

    def row(self, payload: Mapping[str, Any], now: dt.datetime, version: Optional[int] = None) -> dict[str, Any]:
        """The row a create/update writes: ``values`` plus what the sink keeps itself."""
        row = self.values(payload, now)
        for column, value in self.restore.items():
            row.setdefault(column, value)
        if self.version_column and self.version_column not in self.rules:
            if version is None:
                raise ApplyRejected(f"{self.entity} -> {self.object}: conflict mode 'version' keeps the source "
                                    f"version in {self.version_column}, and this event carries no metadata.version")
            spec = self.columns.get(self.version_column)
            row[self.version_column] = fit(spec, version, self.zone) if spec is not None else version
        return row

    def key_of(self, row: Mapping[str, Any]) -> tuple:
        """The key of a row, the one to be written or one read from the table, in the form
        both compare equal in (a CHAR(n) key read back blank-padded is the key written)."""
        return self._unpadded(tuple([row[k] for k in self.key]))

    def key_values(self, payload: Mapping[str, Any], now: dt.datetime) -> tuple:
        """Only the key (deletes need nothing else, so a bad code elsewhere cannot block them)."""
        values = tuple(self._value(k, self.rules[k], payload, now) for k in self.key)
        if any(v in (None, "") for v in values):
            raise ApplyRejected(f"{self.entity} -> {self.object}: no value for key column(s) {self.key}")
        return self._unpadded(values)

    def _unpadded(self, key: tuple) -> tuple:
        if not self.padded:
            return key
        return tuple(v.rstrip(" ") if i in self.padded and isinstance(v, str) else v for i, v in enumerate(key))

    def _value(self, column: str, rule, payload: Mapping[str, Any], now: dt.datetime) -> Any:
        value = rule_value(rule, payload, now, self._lookups, f"column {column} of {self.object}")
        spec = self.columns.get(column)
        return fit(spec, value, self.zone) if spec is not None else value

    def conflict(self, local: Optional[Mapping[str, Any]], before: Optional[Mapping[str, Any]],
                 now: dt.datetime, version: Optional[int] = None) -> Optional[str]:
        """Why the event must not be applied over ``local`` (None: apply it).

        ``version`` mode without a field compares the event's ``metadata.version`` with the
        version the local column holds, for every operation. Otherwise, without a before
        image (create, snapshot) there is no base version to compare: the event is applied
        (an upsert). A missing local row is not a conflict either."""
        rule = self.target.conflict
        if rule.mode == "none" or local is None:
            return None
        if self.version_column:
            mine = local.get(self.version_column)
            if mine is not None and version is not None and int(mine) > version:
                return f"local {self.version_column}={mine} is newer than the event's version {version}"
            return None
        if before is None:
            return None
        if rule.mode in ("version", "timestamp"):
            base, mine = before.get(rule.field), local.get(rule.column)
            a, b = comparable(mine, self.zone), comparable(base, dt.timezone.utc)
            if rule.mode == "version" and a != b:
                return f"local {rule.column}={_show(mine)} but the event was based on {rule.field}={_show(base)}"
            if rule.mode == "timestamp" and a is not None and (b is None or a > b):
                return f"local {rule.column}={_show(mine)} is later than the event's base {rule.field}={_show(base)}"
            return None
        expected = self.values(before, now)
        differing = [c for c, r in self.rules.items() if not r.now and r.field
                     and comparable(local.get(c), self.zone, self.scales.get(c))
                     != comparable(expected[c], self.zone, self.scales.get(c))]
        if differing:
            return "local row differs from the event's before image in " + ", ".join(differing)
        return None


def rule_value(rule, payload: Mapping[str, Any], now: dt.datetime, lookups: Mapping[str, Mapping[str, Any]],
               where: str) -> Any:
    """One column's (or procedure argument's) value from a canonical image."""
    if rule.now:
        value = now
    elif rule.field is None:
        value = rule.const
    else:
        value = payload.get(rule.field)
    for name in rule.convert:
        try:
            value = CONVERSIONS[name](value)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise ApplyRejected(f"{where} (field {rule.field}): convert {name} failed on {value!r:.80}: {exc}") from None
    if value is not None and (rule.lookup or rule.map is not None):
        table = rule.map if rule.map is not None else lookups[rule.lookup]
        if str(value) not in table:
            raise ApplyRejected(f"unknown {rule.lookup or 'mapped'} code {value!r} for {where} "
                                f"(field {rule.field}): fix the lookup, then retry")
        value = table[str(value)]
    return value


class ProcedurePlan:
    """A stored procedure an entity is applied with: arguments in call order."""

    def __init__(self, target, entity: str, lookups: Mapping[str, Mapping[str, Any]]):
        self.target, self.entity, self._lookups = target, entity, lookups
        self.object = f"{target.schema_}.{target.name}" if target.schema_ else target.name

    def fields(self) -> set[str]:
        return {r.field for r in self.target.args if r.field}

    def args(self, payload: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
        return {f"a{i}": rule_value(rule, payload, now, self._lookups, f"argument {i + 1} of {self.object}")
                for i, rule in enumerate(self.target.args)}


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else repr(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return f"{value:f}" if isinstance(value, Decimal) else value


def side_by_side(plan: TablePlan, local: Optional[Mapping[str, Any]], payload: Mapping[str, Any],
                 now: dt.datetime) -> list[dict]:
    """One line per mapped column: the local row's value next to the event's before and
    after images, each as the local column holds it and as the canonical field says it
    (a looked-up code: "01" locally, "US01" canonically). For a conflict's context."""
    def local_form(column: str, rule, image) -> Any:
        if image is None:
            return None
        try:
            return _plain(plan._value(column, rule, image, now))
        except ApplyRejected as why:
            return f"(cannot be mapped: {why})"
    lines = []
    before, after = payload.get("before"), payload.get("after")
    for column, rule in plan.rules.items():
        line = {"column": column, "field": rule.field, "local": _plain((local or {}).get(column)),
                "before": local_form(column, rule, before), "after": local_form(column, rule, after)}
        if rule.field:
            line["before_canonical"] = _plain((before or {}).get(rule.field))
            line["after_canonical"] = _plain((after or {}).get(rule.field))
        lines.append(line)
    return lines
