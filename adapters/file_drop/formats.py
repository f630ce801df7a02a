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

import codecs
import csv
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, BinaryIO, Iterator, Optional

from .spec import CsvOptions, FixedField, FixedWidthOptions, SourceOptions, Typing
from .values import convert, implied_decimal, plain_decimals, signed_amount

BOM = b"\xef\xbb\xbf"
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


# ---- parsers ------------------------------------------------------------------------

_UNSET: Any = object()


def apply_types(row: Row, typing: Typing, plain=_UNSET) -> None:
    """``plain``: ``plain_decimals(typing)``, when the caller looked it up once per file."""
    if plain is _UNSET:
        plain = plain_decimals(typing)
    values = row.values
    for column, kind in typing.types.items():
        if column not in values:
            continue
        value = values[column]
        if plain is not None and kind == "decimal" and type(value) is str and plain(value):
            values[column] = Decimal(value)     # what parse_amount makes of these (below)
            continue
        try:
            row.values[column], mark = convert(value, kind, typing)
        except ValueError as exc:
            rule = {"date": "date_format"}.get(kind, kind)
            detail = f" {' or '.join(typing.date_formats)}" if kind == "date" else ""
            row.problems.append(problem(row.line, rule, f"{exc} (expected {kind}{detail})", column, value,
                                        row.number or None))
            continue
        if typing.currency_marks and kind == "decimal":
            row.values[f"{column}_currency"] = mark
    for column, rule in typing.signed.items():
        try:
            row.values[column] = signed_amount(row.values, column, rule, typing)
        except ValueError as exc:
            row.problems.append(problem(row.line, "signed", str(exc), column, row.values.get(column),
                                        row.number or None))


def read_rows(stream: BinaryIO, spec: SourceOptions, lines: Optional[LineReader] = None,
              needed: frozenset = frozenset()) -> Iterator[Row]:
    """Rows of the whole file in order. Pass ``lines`` to watch line and byte counts;
    ``needed``: the columns the route reads, which a header line must name."""
    lines = lines or LineReader(stream, spec.encoding, spec.max_line)
    opts = spec.format_options
    if spec.format == "csv":
        rows = _csv_rows(lines, opts, needed - opts.computed() - {"_file", "_line"})
    else:
        rows = {"fixed_width": _fixed_rows, "jsonl": _json_rows}[spec.format](lines, opts)
    number = 0
    trailer_seen = None
    plain = plain_decimals(opts)
    for row in rows:
        if trailer_seen is not None and row.kind != "trailer":
            row.problems.append(problem(row.line, "structure", f"{row.kind} record after the trailer "
                                        f"(line {trailer_seen})"))
        if row.kind == "trailer":
            trailer_seen = row.line
        if row.kind == "detail":
            number += 1
            row.number = number
            for p in row.problems:
                p["record"] = number
            apply_types(row, opts, plain)
        yield row


def _csv_rows(lines: LineReader, opts: CsvOptions, needed: frozenset) -> Iterator[Row]:
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
                _check_header(names, needed, opts, lines)
            start = lines.line + 1
        duplicates = sorted({n for n in names if names.count(n) > 1 or not n})
        if duplicates:
            raise FileRejected(problem(start - 1, "header", f"blank or repeated column names {duplicates}"))
        held: list[Row] = []       # the last footer_lines rows are not records
        for fields in reader:
            line, start = start, lines.line + 1
            if not fields or (opts.ignore_prefixes and fields[0].strip().startswith(tuple(opts.ignore_prefixes))):
                continue
            held.append(_csv_row(fields, names, line, opts))
            if len(held) > opts.footer_lines:
                yield held.pop(0)
    except csv.Error as exc:
        raise FileRejected(problem(lines.line, "csv", f"unreadable CSV: {exc} (unterminated quote?)")) from None


def _csv_row(fields: list, names: list, line: int, opts: CsvOptions) -> Row:
    first = fields[0].strip()
    if opts.header_prefix is not None and first == opts.header_prefix:
        return Row("header", line, dict(zip(opts.header_columns, fields)))
    if opts.trailer_prefix is not None and first == opts.trailer_prefix:
        return Row("trailer", line, dict(zip(opts.trailer_columns, fields)))
    if len(fields) != len(names):
        return Row("detail", line, {}, problems=[problem(
            line, "columns", f"ragged row: expected {len(names)} fields, found {len(fields)}",
            value=opts.delimiter.join(fields))])
    return Row("detail", line, dict(zip(names, fields)))


def _check_header(names: list, needed: frozenset, opts: CsvOptions, lines: LineReader) -> None:
    """A file of another layout is one format problem, not a problem on every row: the
    header must name every column the spec types and the mapping reads."""
    wanted = set(needed) | set(opts.types) | {c for rule in opts.signed.values()
                                              for c in (rule.debit, rule.credit, rule.amount, rule.indicator) if c}
    missing = sorted(wanted - set(names))
    if not missing:
        return
    hint = _encoding_hint(names, missing, lines.encoding)
    raise FileRejected(problem(lines.line, "format", f"header has {', '.join(names)}; the spec expects "
                               f"{', '.join(missing)}" + (f" ({hint})" if hint else ""), value=", ".join(missing)))


def _encoding_hint(names: list, missing: list, encoding: str) -> Optional[str]:
    """When the header's bytes read in another encoding give the missing names."""
    raw = ",".join(names).encode(encoding, errors="replace")
    for other in ("utf-8", "windows-1252", "iso-8859-15"):
        if codecs.lookup(other).name == codecs.lookup(encoding).name:
            continue
        try:
            text = raw.decode(other)
        except UnicodeDecodeError:
            continue
        if all(name in text.split(",") for name in missing):
            return f"its bytes read as {other} give {', '.join(missing)}: the file is {other}, set encoding: {other}"
    return None


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
    """Any number of record types; a continuation record adds its fields to the detail
    before it, so a detail is yielded once its continuations are read."""
    layouts = opts.layouts()
    pending: Optional[Row] = None
    for text in lines:
        line = text.rstrip("\r\n")
        if not line.strip():
            continue
        layout = next((r for r in layouts if line.startswith(r.type)), None)
        if layout is None:
            known = ", ".join(f"{r.role}={r.type!r}" for r in layouts)
            row = Row("detail", lines.line, {}, problems=[problem(
                lines.line, "record_type", f"unknown record type (known: {known})", value=line[:20])])
        elif layout.role == "ignore":
            continue
        else:
            values, problems = _take(line, layout.fields, opts.pad_short_lines, lines.line) if layout.fields \
                else ({}, [])
            if layout.role == "continuation":
                if pending is None:
                    yield Row("detail", lines.line, {}, problems=[problem(
                        lines.line, "structure", f"continuation record {layout.type!r} without a detail before it",
                        value=line[:20])])
                else:
                    pending.values.update(values)
                    pending.problems.extend(problems)
                continue
            row = Row(layout.role, lines.line, values, problems=problems)
        if pending is not None:
            yield pending
        pending = row if row.kind == "detail" else None
        if pending is None:
            yield row
    if pending is not None:
        yield pending


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
