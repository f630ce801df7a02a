"""Typed values of export files: amounts as banks and ERPs write them, and dates (pure).

Only ASCII digits in the forms the spec declares: separators as configured, a sign leading
or trailing (SAP, mainframes), ``(29.99)`` where ``negative_parentheses`` says so, a
currency symbol or code glued on where ``currency_marks`` lists it; dates exactly in one
of the declared formats. Anything else raises ValueError saying what was expected.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from agent.contracts import AMOUNTS
from agent.textforms import strict_date

from .spec import SignedAmount, Typing

# ASCII digits only: \d would take Arabic-Indic or full-width digits as numbers
_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def parse_amount(text: str, typing: Typing) -> tuple[Decimal, Optional[str]]:
    """'-1.234,50' / '1234,50-' / '(29.99)' / '€12.50' -> (Decimal, the currency mark found)."""
    s, mark = _without_mark(text.strip(), typing.currency_marks)
    negative = False
    if typing.negative_parentheses and s[:1] == "(" and s[-1:] == ")":
        negative, s = True, s[1:-1].strip()
    sign = ""
    if s[:1] in "+-" and s:
        sign, s = s[0], s[1:].strip()
    elif s[-1:] in ("+", "-"):        # trailing sign, as SAP and mainframe exports write it
        sign, s = s[-1], s[:-1].strip()
    if mark is None:                  # a symbol after the sign: "-€12.50"
        s, mark = _without_mark(s, typing.currency_marks)
    if typing.decimal_separator != "." and "." in s and typing.thousands_separator != ".":
        raise ValueError(f"unexpected '.' (the decimal separator is {typing.decimal_separator!r})")
    whole, point, fraction = s.partition(typing.decimal_separator)
    if typing.thousands_separator and typing.thousands_separator in whole:
        groups = whole.split(typing.thousands_separator)
        # "1.234,50" is fine; "1234.50" in a file declared "1.234,50" must not become 123450
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
            raise ValueError(f"misplaced thousands separator {typing.thousands_separator!r}")
        whole = "".join(groups)
    s = f"{whole}.{fraction}" if point else whole
    if not _DIGITS.fullmatch(s) or (negative and sign):
        raise ValueError("expected a decimal number")
    try:
        number = Decimal(("-" if (sign == "-") != negative else "") + s)
    except InvalidOperation:
        raise ValueError("expected a decimal number") from None
    return number, mark


# "-1234.50", "0.5", ".5", "12.": what parse_amount reads as Decimal(text) whenever the
# separator is "." and no currency mark is configured (no blank, no sign after the digits,
# no parentheses, no thousands separator -- a separator cannot be a digit -- and "+"
# excluded: Decimal("+1") is Decimal("1") but the cheaper path need not know that)
_PLAIN = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)").fullmatch
_PLAIN_OF: dict[int, tuple] = {}


def plain_decimals(typing: Typing):
    """A test for amounts that parse_amount reads as plain ``Decimal(text)`` under this
    typing, or None when the typing has no such shortcut (another decimal separator,
    currency marks)."""
    known = _PLAIN_OF.get(id(typing))
    if known is None or known[0] is not typing:
        fits = typing.decimal_separator == "." and not typing.currency_marks and \
            not (typing.thousands_separator or "").isdigit()
        if len(_PLAIN_OF) > 64:
            _PLAIN_OF.clear()
        known = _PLAIN_OF[id(typing)] = (typing, _PLAIN if fits else None)
    return known[1]


def _without_mark(text: str, marks: list[str]) -> tuple[str, Optional[str]]:
    for mark in sorted(marks, key=len, reverse=True):     # "US$" before "$"
        if text.startswith(mark):
            return text[len(mark):].strip(), mark
        if text.endswith(mark):
            return text[:-len(mark)].strip(), mark
    return text, None


def parse_decimal(text: str, typing: Typing) -> Decimal:
    return parse_amount(text, typing)[0]


def implied_decimal(text: str, decimals: int) -> Decimal:
    """'0001234' with 2 implied decimals -> 12.34 (signs leading or trailing)."""
    s = text.strip()
    sign = ""
    if s[:1] in ("+", "-"):
        sign, s = s[0], s[1:]
    elif s[-1:] in ("+", "-"):
        sign, s = s[-1], s[:-1]
    if not s.isdigit() or not s.isascii():
        raise ValueError(f"expected digits with {decimals} implied decimal(s)")
    # read from text, which is exact: arithmetic would round to the context's 28 digits
    return Decimal(f"{'-' if sign == '-' else ''}{s}E-{decimals}")


def parse_date(text: str, typing: Typing):
    for fmt in typing.date_formats:
        try:
            return strict_date(text, fmt)
        except ValueError:
            continue
    raise ValueError(f"expected a date written {' or '.join(typing.date_formats)}")


def convert(value: Any, kind: str, typing: Typing) -> tuple[Any, Optional[str]]:
    """(typed value, currency mark or None)."""
    if not isinstance(value, str) or kind == "text":
        return value, None
    if value.strip() == "":
        return "", None     # the mapping decides whether the field may be empty
    if kind == "decimal":
        return parse_amount(value, typing)
    if kind == "int":
        number = parse_decimal(value, typing)
        if number != number.to_integral_value():
            raise ValueError("expected a whole number")
        return int(number), None
    if kind == "date":
        return parse_date(value, typing), None
    return value, None


def _amount(value: Any, typing: Typing) -> Optional[Decimal]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value if isinstance(value, Decimal) else parse_decimal(str(value), typing)


def signed_amount(values: dict, column: str, rule: SignedAmount, typing: Typing) -> Optional[Decimal]:
    """The signed amount of one row (None when the layout leaves it empty)."""
    if rule.indicator is None:
        debit, credit = _amount(values.get(rule.debit), typing), _amount(values.get(rule.credit), typing)
        if debit and credit:
            raise ValueError(f"both {rule.debit} ({debit}) and {rule.credit} ({credit}) are filled")
        if debit is None and credit is None:
            return None
        return AMOUNTS.subtract(credit or Decimal(0), debit or Decimal(0))     # exact, not to 28 digits
    amount = _amount(values.get(rule.amount or column), typing)
    flag = str(values.get(rule.indicator) or "").strip().upper()
    if amount is None:
        return None
    if amount < 0:
        raise ValueError(f"expected an unsigned amount beside the indicator {rule.indicator}, found {amount}")
    if flag in (v.upper() for v in rule.negative):
        return -amount
    if flag in (v.upper() for v in rule.positive):
        return amount
    raise ValueError(f"indicator {rule.indicator} is {flag or 'empty'!r}; expected one of "
                     f"{', '.join(rule.negative + rule.positive)}")
