"""Control checks: record count and control totals from a trailer, header or sidecar.

Pure: rows go in one at a time (constant memory), problems come out at the end. A
mismatch rejects the whole file whatever ``all_or_nothing`` says: a file whose totals do
not add up was cut short or tampered with, so none of it can be trusted.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Optional

from agent.contracts import AMOUNTS

from .formats import Row, problem
from .values import implied_decimal, parse_decimal
from .spec import Checks, Typing


def parse_sidecar(text: str) -> dict:
    """A control file: a JSON object, or ``key=value`` / ``key: value`` lines."""
    stripped = text.strip()
    if stripped.startswith("{"):
        found = json.loads(stripped, parse_float=Decimal)
        if not isinstance(found, dict):
            raise ValueError("expected a JSON object")
        return found
    values = {}
    for line in stripped.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=") if "=" in line else line.partition(":")
        if not sep:
            raise ValueError(f"expected key=value, found {line[:60]!r}")
        values[key.strip()] = value.strip()
    return values


class Controls:
    def __init__(self, checks: Checks, typing: Typing):
        self.checks, self.typing = checks, typing
        self.count = 0
        self.totals = {column: Decimal(0) for column in checks.totals}
        self.control: Optional[dict] = None
        self.control_line: Optional[int] = None

    def add(self, row: Row) -> None:
        if row.kind == self.checks.source and self.control is None:
            self.control, self.control_line = row.values, row.line
        if row.kind != "detail":
            return
        self.count += 1
        for column in self.totals:
            value = row.values.get(column)
            try:
                # summed exactly: the default context would round a total beyond 28 digits
                self.totals[column] = AMOUNTS.add(self.totals[column], value if isinstance(value, Decimal) else
                                                  parse_decimal(str(value), self.typing))
            except (ValueError, TypeError):
                pass   # already a row problem if the column is typed; the total will not match

    def problems(self, sidecar: Optional[dict] = None) -> list[dict]:
        where = self.checks.source
        control = sidecar if where == "sidecar" else self.control
        line = None if where == "sidecar" else self.control_line
        if control is None:
            return [problem(None, "control", f"no {where} record with the control values was found")]
        found = []
        if self.checks.record_count:
            expected = self._number(control, self.checks.record_count, line, found)
            if expected is not None and expected != self.count:
                found.append(problem(line, "record_count", f"{where} says {expected} detail records, "
                                     f"the file has {self.count}", self.checks.record_count, expected))
        for column, name in self.checks.totals.items():
            expected = self._number(control, name, line, found)
            if expected is not None and expected != self.totals[column]:
                found.append(problem(line, "control_total", f"{where} total of {column} is {expected}, the "
                                     f"records add up to {self.totals[column]}", name, expected))
        return found

    def _number(self, control: dict, name: str, line: Optional[int], found: list) -> Optional[Decimal]:
        value: Any = control.get(name)
        if value is None or value == "":
            found.append(problem(line, "control", f"control field {name!r} is missing", name))
            return None
        if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
            return Decimal(value)
        try:
            return parse_decimal(str(value), self.typing)
        except ValueError:
            try:   # an unsigned count written with leading zeros or implied decimals already applied
                return implied_decimal(str(value), 0)
            except ValueError:
                found.append(problem(line, "control", f"control field {name!r} is not a number", name, value))
                return None
