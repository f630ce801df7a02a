"""Text that may become a number, a date or a time: ASCII digits in one plain form only.

Python itself accepts far more ('1_000.50', '1e3', Arabic-Indic or full-width digits,
'NaN', ISO week dates, strptime's one-digit months), and a finance value must never be
guessed at. Shared by the mapping, the expressions and the file parsers.
"""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

__all__ = ["DECIMAL_TEXT", "INTEGER_TEXT", "DATE_TEXT", "TIMESTAMP_TEXT", "plain_decimal", "strict_date",
           "strict_timestamp"]

DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
TIMESTAMP_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
                            r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?")


def plain_decimal(text: str) -> Decimal:
    """'1234.50' -> Decimal; anything but the plain ASCII form raises ValueError."""
    stripped = text.strip()
    if not DECIMAL_TEXT.fullmatch(stripped):
        raise ValueError(f"expected a plain decimal amount such as 1234.50, found {text!r}")
    return Decimal(stripped)


def strict_date(text: str, fmt: str) -> dt.date:
    return strict_timestamp(text, fmt).date()


def strict_timestamp(text: str, fmt: str) -> dt.datetime:
    """strptime, but only for text written exactly in ``fmt``: ASCII, and writing the
    value back in ``fmt`` gives the same text (no one-digit months, no other digits)."""
    stripped = text.strip()
    if not stripped.isascii():
        raise ValueError(f"expected ASCII digits in the form {fmt}, found {text!r}")
    value = dt.datetime.strptime(stripped, fmt)    # ValueError names what is wrong
    if value.strftime(fmt).casefold() != stripped.casefold():
        raise ValueError(f"expected exactly the form {fmt}, found {text!r}")
    return value
