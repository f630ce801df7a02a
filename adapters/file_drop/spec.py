"""Options of the ``file_drop`` source: the source section (inboxes, observer) merged
with the route's ``capture`` section (the file spec). Light imports only, so that
``outpost check`` validates a config cheaply.

Positions in fixed-width specs are 1-based and ``end`` is inclusive, as in the record
layouts printed by legacy systems ("columns 2-11: invoice number").
"""
from __future__ import annotations

import codecs
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from agent.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
ColumnType = Literal["text", "decimal", "int", "date"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignedAmount(_Strict):
    """A signed amount from a layout that keeps the sign apart from the digits: a Debit /
    Credit column pair (the amount is credit - debit, one of them filled), or an unsigned
    amount with a D/C indicator column."""

    debit: Optional[str] = None
    credit: Optional[str] = None
    amount: Optional[str] = None          # with an indicator: the unsigned column (default: this one)
    indicator: Optional[str] = None
    negative: list[str] = Field(default_factory=lambda: ["D", "DR", "DEBIT", "-"])
    positive: list[str] = Field(default_factory=lambda: ["C", "CR", "CREDIT", "+"])

    @model_validator(mode="after")
    def _one_layout(self):
        pair = self.debit is not None or self.credit is not None
        if pair == (self.indicator is not None) or (pair and (self.debit is None or self.credit is None)):
            raise ValueError("give either 'debit' and 'credit' (a column pair) or 'indicator' (a D/C column)")
        return self


class Typing(_Strict):
    """How text becomes typed values (shared by every format)."""

    types: dict[str, ColumnType] = Field(default_factory=dict)   # column -> type; others stay text
    decimal_separator: str = Field(".", min_length=1, max_length=1)
    thousands_separator: Optional[str] = Field(None, max_length=1)
    # strptime format, or several tried in order (one file may mix 2026-01-31 and 31.01.2026)
    date_format: Union[str, list[str]] = "%Y-%m-%d"
    negative_parentheses: bool = False    # accounting style: (29.99) is -29.99
    # symbols or codes glued to amounts ("€12.50", "12,50 EUR"): taken off, and the one found
    # is kept in the pseudo-column <column>_currency; any other glued text is refused
    currency_marks: list[str] = Field(default_factory=list)
    signed: dict[str, SignedAmount] = Field(default_factory=dict)   # column -> how its sign is told

    @model_validator(mode="after")
    def _separators_differ(self):
        if self.thousands_separator and self.thousands_separator == self.decimal_separator:
            raise ValueError("decimal_separator and thousands_separator must differ "
                             f"(found {self.decimal_separator!r} for both)")
        return self

    @property
    def date_formats(self) -> list[str]:
        return [self.date_format] if isinstance(self.date_format, str) else list(self.date_format)

    def computed(self) -> set[str]:
        """Columns the typing adds to a row (not expected in a header)."""
        return set(self.signed) | {f"{c}_currency" for c, kind in self.types.items() if kind == "decimal"
                                   and self.currency_marks}


class CsvOptions(Typing):
    delimiter: str = ","
    quote: str = Field('"', min_length=1, max_length=1)
    escape: Optional[str] = Field(None, min_length=1, max_length=1)
    header: bool = True                 # first (non-skipped) line holds the column names
    columns: Optional[list[str]] = None  # explicit names (required without a header line)
    skip_lines: int = Field(0, ge=0)     # preamble before the header
    header_prefix: Optional[str] = None  # first field marking a header *record* (e.g. "HDR")
    header_columns: list[str] = Field(default_factory=list)
    trailer_prefix: Optional[str] = None   # first field marking the trailer record (e.g. "TRL")
    trailer_columns: list[str] = Field(default_factory=list)
    ignore_prefixes: list[str] = Field(default_factory=list)   # rows whose first field starts so: not records
    footer_lines: int = Field(0, ge=0)     # lines at the end that are not records ("Total;;1234,50")

    @field_validator("delimiter", mode="before")
    @classmethod
    def _tab(cls, v):
        v = {"tab": "\t", "\\t": "\t"}.get(v, v)
        if not isinstance(v, str) or len(v) != 1:
            raise ValueError(f"expected one character (or 'tab'), found {v!r}")
        return v

    @model_validator(mode="after")
    def _names(self):
        if not self.header and not self.columns:
            raise ValueError("without a header line, 'columns' must name the columns")
        return self


class FixedField(_Strict):
    name: str
    start: int = Field(ge=1)               # 1-based
    length: Optional[int] = Field(None, ge=1)
    end: Optional[int] = Field(None, ge=1)  # 1-based, inclusive
    decimals: int = Field(0, ge=0, le=18)   # implied decimals: "0001234" with 2 -> 12.34

    @model_validator(mode="after")
    def _one_extent(self):
        if (self.length is None) == (self.end is None):
            raise ValueError(f"field {self.name}: give exactly one of 'length' or 'end'")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"field {self.name}: end {self.end} is before start {self.start}")
        return self

    @property
    def stop(self) -> int:
        """Python slice end (exclusive, 0-based)."""
        return self.end if self.end is not None else self.start - 1 + self.length


class RecordLayout(_Strict):
    """One record type of a multi-record file (CODA, BAI2-like): the text it starts with,
    what it is, and its fields. A ``continuation`` adds its fields to the detail record
    before it (CODA's 22/23 after a 21); ``ignore`` records are read past."""

    type: str = Field(min_length=1)
    role: Literal["header", "detail", "continuation", "trailer", "ignore"] = "detail"
    fields: list[FixedField] = Field(default_factory=list)


class FixedWidthOptions(Typing):
    fields: list[FixedField] = Field(default_factory=list)    # detail record layout
    record_types: dict[Literal["header", "detail", "trailer"], str] = Field(default_factory=dict)
    header_fields: list[FixedField] = Field(default_factory=list)
    trailer_fields: list[FixedField] = Field(default_factory=list)
    records: list[RecordLayout] = Field(default_factory=list)   # any number of record types, instead
    pad_short_lines: bool = False    # accept lines whose trailing blanks were trimmed

    @model_validator(mode="after")
    def _prefixes(self):
        if self.records:
            if self.fields or self.record_types or self.header_fields or self.trailer_fields:
                raise ValueError("give either 'records' or fields / record_types / header_fields / trailer_fields")
            if not any(r.role == "detail" for r in self.records):
                raise ValueError("'records' must have at least one record of role detail")
            return self
        if not self.fields:
            raise ValueError("'fields' (the detail record layout) or 'records' is required")
        if (self.header_fields and "header" not in self.record_types) or \
                (self.trailer_fields and "trailer" not in self.record_types):
            raise ValueError("header_fields / trailer_fields need record_types naming their prefixes")
        if self.record_types and "detail" not in self.record_types:
            raise ValueError("record_types must name the 'detail' prefix too")
        return self

    def layouts(self) -> list[RecordLayout]:
        """Every record type, longest prefix first (the first that matches a line is it)."""
        if self.records:
            found = list(self.records)
        elif not self.record_types:
            found = [RecordLayout(type="", fields=self.fields)]
        else:
            fields = {"header": self.header_fields, "detail": self.fields, "trailer": self.trailer_fields}
            found = [RecordLayout(type=prefix, role=kind, fields=fields[kind]) for kind, prefix in self.record_types.items()]
        return sorted(found, key=lambda layout: -len(layout.type))


class JsonLinesOptions(Typing):
    pass


class Checks(_Strict):
    """Control checks as finance files carry them; a mismatch rejects the file."""

    source: Literal["trailer", "header", "sidecar"] = "trailer"
    sidecar_suffix: str = ".ctl"              # invoices.csv -> invoices.csv.ctl or invoices.ctl
    record_count: Optional[str] = None        # field holding the number of detail records
    totals: dict[str, str] = Field(default_factory=dict)   # detail column -> field with its sum


class SourceOptions(_Strict):
    system: Optional[str] = None

    # -- the source section --
    inbox: Union[str, list[str]]
    observer: Literal["native", "polling", "none"] = "native"   # polling for SMB/NFS shares
    poll_interval: Duration = 2.0          # of the polling observer
    rescan_every: Duration = 30.0          # full scan even without events (events get lost)

    # -- the route's capture section (the file spec) --
    pattern: str = "*"
    format: Literal["csv", "fixed_width", "jsonl"]
    encoding: str = "utf-8"                # a UTF-8 BOM is skipped whatever the encoding
    csv: Optional[CsvOptions] = None
    fixed_width: Optional[FixedWidthOptions] = None
    jsonl: Optional[JsonLinesOptions] = None
    trigger: Optional[str] = None          # e.g. ".done" / ".ok": wait for name.done
    min_age: Duration = 5.0
    settle: Duration = 1.0                 # two size checks at least this far apart
    max_size: Size = parse_size("2GiB")
    max_line: Size = parse_size("1MiB")    # longer = binary junk or a wrong format
    checks: Optional[Checks] = None
    all_or_nothing: bool = True
    operation: Literal["create", "update", "snapshot"] = "create"
    batch_size: int = Field(1000, ge=1, le=100_000)
    max_problems: int = Field(10_000, ge=1)   # listed in the error report (all are counted)
    progress_log_every: Duration = 10.0

    @field_validator("inbox")
    @classmethod
    def _inboxes(cls, v):
        items = [v] if isinstance(v, str) else v
        if not items or not all(items):
            raise ValueError("expected at least one inbox folder")
        return v

    @field_validator("pattern")
    @classmethod
    def _flat(cls, v):
        if "/" in v or "\\" in v or ".." in v:
            raise ValueError(f"expected a file name pattern inside the inbox (no folders), found {v!r}")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v):
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (e.g. utf-8, windows-1252, iso-8859-1)") from None
        if "\n".encode(v) != b"\n":
            raise ValueError(f"encoding {v!r} is not ASCII-compatible (UTF-16/32 are not supported)")
        return v

    @field_validator("trigger")
    @classmethod
    def _suffix(cls, v):
        if v is not None and (not v.startswith(".") or "/" in v):
            raise ValueError(f"expected a suffix such as '.done' or '.ok', found {v!r}")
        return v

    @model_validator(mode="after")
    def _format_options(self):
        if self.format == "fixed_width" and self.fixed_width is None:
            raise ValueError("format fixed_width needs a 'fixed_width' section with its fields")
        others = {"csv", "fixed_width", "jsonl"} - {self.format}
        given = [o for o in others if getattr(self, o) is not None]
        if given:
            raise ValueError(f"section(s) {', '.join(sorted(given))} do not apply to format {self.format}")
        if self.checks and self.checks.source in ("trailer", "header"):
            kind = self.checks.source
            fmt = self.format_options
            has = (isinstance(fmt, CsvOptions) and getattr(fmt, f"{kind}_prefix")) or \
                (isinstance(fmt, FixedWidthOptions) and any(r.role == kind for r in fmt.layouts()))
            if not has:
                raise ValueError(f"checks.source {kind} needs {kind} records: set {kind}_prefix (csv) "
                                 f"or record_types.{kind} (fixed_width), or use a sidecar")
        return self

    @property
    def inboxes(self) -> list[str]:
        return [self.inbox] if isinstance(self.inbox, str) else list(self.inbox)

    @property
    def format_options(self) -> Typing:
        given = getattr(self, self.format)
        if given is not None:
            return given
        return CsvOptions() if self.format == "csv" else JsonLinesOptions()
