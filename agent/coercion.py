"""Source values to what a canonical field holds: the conversions a mapping may name
(``convert:``) and one coercer per schema type, chosen once per field (``EntityMapping``
runs them for every row). Money is always an exact ``Decimal`` quantised to the schema's
scale, never a float. Pure code; every failure is a ValueError naming the value.
"""
from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Callable

from .contracts import AMOUNTS, Approximate
from .schemas import decimal_misfit
from .textforms import DATE_TEXT as _DATE_TEXT
from .textforms import DECIMAL_TEXT as _DECIMAL_TEXT
from .textforms import INTEGER_TEXT as _INTEGER_TEXT
from .textforms import TIMESTAMP_TEXT as _TIMESTAMP_TEXT

__all__ = ["CONVERSIONS", "coerce", "coercer", "is_iso4217"]

_TRUE = {"1", "y", "yes", "true", "t", "on"}
_FALSE = {"0", "n", "no", "false", "f", "off", ""}


def _strip(v):
    return v.strip() if isinstance(v, str) else v


def _upper(v):
    return v.upper() if isinstance(v, str) else v


def _lower(v):
    return v.lower() if isinstance(v, str) else v


def _blank_to_none(v):
    return None if isinstance(v, str) and not v.strip() else v


def _text(v):
    return v if v is None else str(v)


CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "strip": _strip, "upper": _upper, "lower": _lower, "blank_to_none": _blank_to_none, "str": _text,
}


@lru_cache(maxsize=None)
def is_iso4217(code: str) -> bool:
    import pycountry   # imported lazily: its database costs ~20 MB of memory
    return pycountry.currencies.get(alpha_3=code) is not None


def _to_decimal(value, scale: int, precision: int) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    if isinstance(value, (float, Approximate)):
        # Legacy schemas keep money in doubles: take the decimal the double stands for (the
        # source rounded it to the column's declared scale), then round half-even to the
        # schema's; a double -0.005 is 0.00, never -0.00.
        number = value if isinstance(value, Decimal) else Decimal(repr(value))
        if not number.is_finite():
            raise ValueError(f"expected a finite amount, found {value!r}")
        try:
            number = number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN, context=AMOUNTS)
        except InvalidOperation:      # more digits than even AMOUNTS holds: far beyond any precision
            raise ValueError(f"{value!r} does not fit decimal({precision},{scale})") from None
        if not number:
            number = number.copy_abs()
    else:
        if isinstance(value, str):
            if not _DECIMAL_TEXT.fullmatch(value.strip()):
                raise ValueError(f"expected a plain decimal amount such as 1234.50, found {value!r}")
            value = value.strip()
        try:
            number = Decimal(value)
        except (InvalidOperation, TypeError):
            raise ValueError(f"expected a decimal amount, found {value!r}") from None
        if not number.is_finite():
            raise ValueError(f"expected a finite amount, found {value!r}")
        misfit = decimal_misfit(number, precision, scale)
        if misfit:
            raise ValueError(misfit)
        number = number.quantize(Decimal(1).scaleb(-scale), context=AMOUNTS)
    if len(number.as_tuple().digits) > precision:
        raise ValueError(decimal_misfit(number, precision, scale) or f"does not fit decimal({precision},{scale})")
    return number


def _to_utc(value, zone: dt.tzinfo) -> dt.datetime:
    if isinstance(value, str):
        if not _TIMESTAMP_TEXT.fullmatch(value.strip()):
            raise ValueError(f"expected an ISO 8601 timestamp such as 2026-11-27T10:00:00Z, found {value!r}")
        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected a timestamp, found {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(dt.timezone.utc)


def _to_date(value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()):
        return dt.date.fromisoformat(value.strip())
    raise ValueError(f"expected a date such as 2026-11-27, found {value!r}")


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a yes/no value, found {value!r}")


def _to_int(value) -> int:
    if isinstance(value, str):
        if not _INTEGER_TEXT.fullmatch(value.strip()):
            raise ValueError(f"expected a whole number, found {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or value != int(value):
        raise ValueError(f"expected a whole number, found {value!r}")
    return int(value)


def coerce(spec, value, zone: dt.tzinfo):
    """Convert a source value to what the schema field holds (raises ValueError)."""
    kind = spec.avro_type
    if kind == "decimal":
        return _to_decimal(value, spec.scale or 0, spec.precision or 38)
    if kind == "timestamp":
        return _to_utc(value, zone)
    if kind == "date":
        return _to_date(value)
    if kind == "boolean":
        return _to_bool(value)
    if kind in ("int", "long"):
        return _to_int(value)
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    return value


def _same(value):
    return value


def _to_str(value):
    return value if isinstance(value, str) else str(value)


def _decimal_coercer(scale: int, precision: int) -> Callable[[Any], Decimal]:
    quantum = Decimal(1).scaleb(-scale)
    # a quantised number has ``precision`` digits at most exactly when it is below this in
    # magnitude: cheaper than counting its digits (as_tuple is half of this function's cost)
    limit = Decimal(10) ** (precision - scale)

    def to_decimal(value):
        # What drivers give is a plain Decimal that fits: one quantize then, the same result
        # as _to_decimal (it fits exactly when quantising changed nothing and the digits are
        # within precision). Anything else, and any doubt, takes the full path and its messages.
        if type(value) is Decimal:
            try:
                number = value.quantize(quantum, context=AMOUNTS)
            except InvalidOperation:
                number = None
            if number is not None and number == value and -limit < number < limit \
                    and (value or value.as_tuple().exponent >= -scale):   # _to_decimal refuses 0.00 for scale 0
                return number
        return _to_decimal(value, scale, precision)
    return to_decimal


def coercer(spec, zone: dt.tzinfo) -> Callable[[Any], Any]:
    """``coerce`` for one field, chosen once (``EntityMapping.apply`` runs per row and field)."""
    kind = spec.avro_type
    if kind == "decimal":
        return _decimal_coercer(spec.scale or 0, spec.precision or 38)
    if kind == "timestamp":
        utc = dt.timezone.utc

        def to_utc(value):
            if type(value) is dt.datetime:     # what drivers give; the rest as coerce does
                return (value if value.tzinfo is not None else value.replace(tzinfo=zone)).astimezone(utc)
            return _to_utc(value, zone)
        return to_utc
    if kind == "date":
        return _to_date
    if kind == "boolean":
        return _to_bool
    if kind in ("int", "long"):
        return _to_int
    if kind == "string":
        return _to_str
    return _same
