"""Streaming parsers for dropped files: CSV, fixed-width and JSON lines (pure, no paths).

Every parser reads a binary stream line by line (bounded by ``max_line``), so memory
stays constant whatever the file size, and yields ``Row`` objects. A problem with one
row (ragged row, bad number, bad date) is attached to that row; a problem that makes the
rest of the file unreadable (undecodable bytes, binary junk, an unterminated quote)
raises ``FileRejected``. Every problem names its line, column, value and rule.

Decoding is per physical line, so the line of an undecodable byte is exact; that is
why only ASCII-compatible encodings are accepted (``\\n`` is one byte in all of them).
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO, Iterator, Optional

from agent.textforms import strict_date

from .spec import CsvOptions, FixedField, FixedWidthOptions, SourceOptions, Typing

BOM = b"\xef\xbb\xbf"
# ASCII digits only: \d would take Arabic-Indic or full-width digits as numbers
_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
# Control characters other than tab/CR/LF never appear in a text export.
_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def problem(line: Optional[int], rule: str, message: str, column: Optional[str] = None,
            value: Any = None, record: Optional[int] = None) -> dict:
    shown = None if value is None else str(value)
    if shown is not None and len(shown) > 200:
        shown = shown[:197] + "..."
    return {"line": line, "record": record, "column": column, "value": shown, "rule": rule, "message": message}


class FileRejected(Exception):
    """The file cannot be read on: ``problem`` says where and why."""

    def __init__(self, found: dict):
        self.problem = found
        super().__init__(f"line {found['line']}: {found['message']}")


@dataclass
class Row:
    kind: str                  # header | detail | trailer
    line: int                  # physical line where the record starts
    values: dict
    number: int = 0            # detail record number, 1-based (0 for header/trailer)
    problems: list = field(default_factory=list)


class LineReader:
    """Binary lines -> decoded text lines, counting lines and bytes for progress."""

    def __init__(self, stream: BinaryIO, encoding: str, max_line: int):
        self.stream, self.encoding, self.max_line = stream, encoding, max_line
        self.line = 0
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        while True:
            raw = self.stream.readline(self.max_line + 1)
            if not raw:
                return
            self.line += 1
            self.bytes_read += len(raw)
            if self.line == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if len(raw) > self.max_line:
                raise FileRejected(problem(self.line, "line_length",
                                           f"line longer than {self.max_line} bytes: binary data or a wrong format"))
            if b"\x00" in raw:
                raise FileRejected(problem(self.line, "binary", "NUL byte: this is binary data, not a text export",
                                           value=raw[:40]))
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as exc:
                raise FileRejected(problem(
                    self.line, "encoding", f"undecodable bytes {raw[exc.start:exc.end]!r} at byte {exc.start + 1} "
                    f"of the line as {self.encoding}: wrong encoding configured?",
                    value=raw[max(0, exc.start - 20):exc.end + 20])) from None
            junk = _JUNK.search(text)
            if junk:
                raise FileRejected(problem(self.line, "binary", f"control character {junk.group()!r} at "
                                           f"position {junk.start() + 1}: binary data, not a text export",
                                           value=text[:60]))
            yield text


# ---- typed values -------------------------------------------------------------------

def parse_decimal(text: str, typing: Typing) -> Decimal:
    """'-1.234,50' / '1234,50-' / '+12.5' -> Decimal, with the file's separators."""
    s = text.strip()
    sign = ""
    if s[:1] in "+-" and s:
        sign, s = s[0], s[1:].strip()
    elif s[-1:] in ("+", "-"):        # trailing sign, as SAP and mainframe exports write it
        sign, s = s[-1], s[:-1].strip()
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
    if not _DIGITS.fullmatch(s):
        raise ValueError("expected a decimal number")
    try:
        return Decimal(("-" if sign == "-" else "") + s)
    except InvalidOperation:
        raise ValueError("expected a decimal number") from None


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
    return Decimal(int(s)).scaleb(-decimals) * (-1 if sign == "-" else 1)


def convert(value: Any, kind: str, typing: Typing):
    if not isinstance(value, str) or kind == "text":
        return value
    if value.strip() == "":
        return ""     # the mapping decides whether the field may be empty
    if kind == "decimal":
        return parse_decimal(value, typing)
    if kind == "int":
        number = parse_decimal(value, typing)
        if number != number.to_integral_value():
            raise ValueError("expected a whole number")
        return int(number)
    if kind == "date":
        return strict_date(value, typing.date_format)
    return value


def apply_types(row: Row, typing: Typing) -> None:
    for column, kind in typing.types.items():
        if column not in row.values:
            continue
        value = row.values[column]
        try:
            row.values[column] = convert(value, kind, typing)
        except ValueError as exc:
            rule = {"date": "date_format"}.get(kind, kind)
            detail = f" {typing.date_format}" if kind == "date" else ""
            row.problems.append(problem(row.line, rule, f"{exc} (expected {kind}{detail})", column, value,
                                        row.number or None))


# ---- parsers ------------------------------------------------------------------------

def read_rows(stream: BinaryIO, spec: SourceOptions, lines: Optional[LineReader] = None) -> Iterator[Row]:
    """Rows of the whole file in order. Pass ``lines`` to watch line and byte counts."""
    lines = lines or LineReader(stream, spec.encoding, spec.max_line)
    opts = spec.format_options
    parser = {"csv": _csv_rows, "fixed_width": _fixed_rows, "jsonl": _json_rows}[spec.format]
    number = 0
    trailer_seen = None
    for row in parser(lines, opts):
        if trailer_seen is not None:
            row.problems.append(problem(row.line, "structure", f"{row.kind} record after the trailer "
                                        f"(line {trailer_seen})"))
        if row.kind == "trailer":
            trailer_seen = row.line
        if row.kind == "detail":
            number += 1
            row.number = number
            for p in row.problems:
                p["record"] = number
            apply_types(row, opts)
        yield row


def _csv_rows(lines: LineReader, opts: CsvOptions) -> Iterator[Row]:
    text = iter(lines)
    for _ in range(opts.skip_lines):
        next(text, None)
    reader = csv.reader(text, delimiter=opts.delimiter, quotechar=opts.quote, escapechar=opts.escape,
                        doublequote=True, strict=True)
    names = list(opts.columns or [])
    start = lines.line + 1
    try:
        if opts.header:
            found = next(reader, None)
            if found is None:
                raise FileRejected(problem(None, "empty", "the file is empty: no header line"))
            if not names:
                names = [n.strip() for n in found]
            start = lines.line + 1
        duplicates = sorted({n for n in names if names.count(n) > 1 or not n})
        if duplicates:
            raise FileRejected(problem(start - 1, "header", f"blank or repeated column names {duplicates}"))
        for fields in reader:
            line, start = start, lines.line + 1
            if not fields:
                continue
            first = fields[0].strip()
            if opts.header_prefix is not None and first == opts.header_prefix:
                yield Row("header", line, dict(zip(opts.header_columns, fields)))
            elif opts.trailer_prefix is not None and first == opts.trailer_prefix:
                yield Row("trailer", line, dict(zip(opts.trailer_columns, fields)))
            elif len(fields) != len(names):
                yield Row("detail", line, {}, problems=[problem(
                    line, "columns", f"ragged row: expected {len(names)} fields, found {len(fields)}",
                    value=opts.delimiter.join(fields))])
            else:
                yield Row("detail", line, dict(zip(names, fields)))
    except csv.Error as exc:
        raise FileRejected(problem(lines.line, "csv", f"unreadable CSV: {exc} (unterminated quote?)")) from None


def _take(line: str, layout: list[FixedField], pad: bool, number_line: int) -> tuple[dict, list]:
    values, problems = {}, []
    needed = max(f.stop for f in layout)
    if len(line) < needed and not pad:
        problems.append(problem(number_line, "length", f"line has {len(line)} characters, the layout needs {needed}",
                                value=line))
        return values, problems
    for f in layout:
        raw = line[f.start - 1:f.stop]
        if f.decimals:
            try:
                values[f.name] = implied_decimal(raw, f.decimals) if raw.strip() else ""
            except ValueError as exc:
                problems.append(problem(number_line, "implied_decimal", str(exc), f.name, raw))
                values[f.name] = raw
        else:
            values[f.name] = raw.strip()
    return values, problems


def _fixed_rows(lines: LineReader, opts: FixedWidthOptions) -> Iterator[Row]:
    layouts = {"header": opts.header_fields, "detail": opts.fields, "trailer": opts.trailer_fields}
    prefixes = sorted(opts.record_types.items(), key=lambda kv: -len(kv[1]))
    for text in lines:
        line = text.rstrip("\r\n")
        if not line.strip():
            continue
        kind = "detail"
        if prefixes:
            kind = next((k for k, p in prefixes if line.startswith(p)), None)
            if kind is None:
                known = ", ".join(f"{k}={p!r}" for k, p in opts.record_types.items())
                yield Row("detail", lines.line, {}, problems=[problem(
                    lines.line, "record_type", f"unknown record type (known: {known})", value=line[:20])])
                continue
        values, problems = _take(line, layouts[kind], opts.pad_short_lines, lines.line) if layouts[kind] else ({}, [])
        yield Row(kind, lines.line, values, problems=problems)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number (money is never NaN or infinite)")


def _json_rows(lines: LineReader, opts: Typing) -> Iterator[Row]:
    for text in lines:
        if not text.strip():
            continue
        try:
            value = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
        except ValueError as exc:
            yield Row("detail", lines.line, {}, problems=[problem(lines.line, "json", f"not valid JSON: {exc}",
                                                                  value=text.strip())])
            continue
        if not isinstance(value, dict):
            yield Row("detail", lines.line, {}, problems=[problem(
                lines.line, "json", f"expected a JSON object per line, found {type(value).__name__}",
                value=text.strip())])
            continue
        yield Row("detail", lines.line, value)
