"""``outpost check``: the columns a route's mapping reads against the table it polls.

Pure: the source adapter reflects the table (``reflected_columns()``: name -> {kind,
nullable, type}) and this module compares it with the mapping. Without it, a misspelled
column reads as NULL on every row ("name: is required but missing", which looks like
bad data; on a nullable field it would publish null forever), a text column behind a
decimal field is rejected row by row, and a nullable cursor hides rows from polling.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from .config_checks import close_matches

__all__ = ["mapping_column_problems", "cursor_problems"]

# Canonical field types a text column does not fill reliably: text is parsed row by row.
_PARSED = {"decimal": "decimal", "date": "date", "timestamp": "timestamp", "int": "int", "long": "int"}
_FIXED_WIDTH = re.compile(r"N?CHAR(ACTER)?\s*(\(|$)", re.IGNORECASE)     # CHAR(n), NCHAR(n), not VARCHAR


def mapping_column_problems(mapping_name: str, mapping, fields: Mapping[str, object], table: str,
                            columns: Mapping[str, Mapping], also_named=(), selected=None,
                            selected_at: str = "", sample: Callable[[str], list] = lambda column: []
                            ) -> list[str]:
    """Problems of ``mappings.<mapping_name>`` against the reflected ``columns`` of
    ``table``. ``also_named``: names the source adds to a row (rollups). ``selected``: the
    source's ``columns`` option when it limits what is read (None: every column);
    ``selected_at``: where that option was written. ``fields``: the entity's FieldSpecs by name."""
    problems = []
    available = set(columns) | set(also_named)
    for field, rule in mapping.fields.items():
        column = rule.column
        if column is None:
            continue
        where = f"mappings.{mapping_name}.fields.{field}.column"
        if column not in available:
            listed = ", ".join(sorted(available))
            problems.append(f"{where}: found {column!r}, which table {table} does not have"
                            f"{close_matches(column, available)} (its columns: {listed}); every row would "
                            f"read it as NULL. Write the column's name as the table has it")
            continue
        if selected is not None and column not in selected and column not in also_named:
            problems.append(f"{selected_at}: does not list column {column!r}, which {where} reads; add it "
                            f"to the list (or remove the option to read every column)")
        spec, found = fields.get(field), columns.get(column)
        wanted = _PARSED.get(getattr(spec, "avro_type", ""))
        if wanted and found and found.get("kind") == "text":
            problems += _text_problems(where, column, found, table, field, spec, rule, mapping, sample, wanted)
        elif found and _FIXED_WIDTH.match(str(found.get("type", ""))) and "strip" not in rule.convert:
            problems += _padding_warning(where, column, found, table, sample)
    return problems


def _padding_warning(where, column, found, table, sample) -> list[str]:
    """PostgreSQL, SQL Server and Oracle give CHAR(n) values back blank-padded (MariaDB
    strips the blanks): "C-1" would be published as "C-1     ", and a padded code misses
    its lookup. Warned only when the sampled values show the blanks."""
    padded = [v for v in sample(column) if isinstance(v, str) and v != v.rstrip(" ")]
    if not padded:
        return []
    return [f"warning: {where}: {column!r} is a fixed-width {found.get('type')} column of {table}, and the "
            f"database gives its values blank-padded (e.g. {padded[0]!r}); they would be published with the "
            f"blanks. If the blanks are not data, add convert: [strip] to the field"]


def _text_problems(where, column, found, table, field, spec, rule, mapping, sample, wanted) -> list[str]:
    """A text column behind a decimal/date field: fine while every value parses (SQLite
    keeps dates as text), refused when sampled values do not."""
    from zoneinfo import ZoneInfo

    from .coercion import CONVERSIONS, coerce
    values = sample(column)
    failing = []
    for value in values:
        try:
            for name in rule.convert:
                value = CONVERSIONS[name](value)
            if value not in (None, ""):
                coerce(spec, value, ZoneInfo(mapping.source_timezone))
        except (ValueError, TypeError, ArithmeticError, KeyError):
            failing.append(value)
    fix = (f"Map a {wanted} column, or convert the text on purpose with an expression, e.g. "
           f"expr: \"{wanted}(replace({column}, ',', '.'))\"")
    if failing:
        return [f"{where}: found {column!r}, a text column ({found.get('type')}) of {table}, behind the "
                f"{spec.avro_type} field {field}; {len(failing)} of {len(values)} sampled values are not a "
                f"{wanted}, e.g. {failing[0]!r}, and such rows would be rejected. {fix}"]
    if not values:
        return [f"warning: {where}: {column!r} is a text column ({found.get('type')}) of {table} behind the "
                f"{spec.avro_type} field {field}, and the table has no value to try: a row whose text is not "
                f"a plain {wanted} will be rejected. {fix}"]
    return []


def cursor_problems(cursor: str, table: str, columns: Mapping[str, Mapping], located: Callable[[str], str]
                    ) -> list[str]:
    """A nullable cursor column: a row whose cursor is NULL is never read by polling."""
    found = columns.get(cursor)
    if not found or not found.get("nullable"):
        return []
    return [f"{located('cursor')}: found {cursor!r}, which is nullable in {table}: polling never reads a "
            f"row whose {cursor} is NULL (and never sees it change). Make the column NOT NULL with a default "
            f"(e.g. DEFAULT CURRENT_TIMESTAMP), or pick a NOT NULL change-tracking column"]
