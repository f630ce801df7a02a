"""file_drop parsers and control checks on real export files (tests/data/file_drop) and a
hypothesis fuzz: arbitrary bytes never crash a parser, and every rejection says why."""
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.file_drop.checks import Controls, parse_sidecar
from adapters.file_drop.formats import FileRejected, read_rows
from adapters.file_drop.spec import SourceOptions

DATA = Path(__file__).parent / "data" / "file_drop"

GERMAN_CSV = {
    "format": "csv", "encoding": "windows-1252",
    "csv": {"delimiter": ";", "decimal_separator": ",", "thousands_separator": ".", "date_format": "%d.%m.%Y",
            "types": {"Netto": "decimal", "Steuerbetrag": "decimal", "Brutto": "decimal", "Datum": "date"},
            "trailer_prefix": "TRL", "trailer_columns": ["tag", "count", "net_total"]},
    "checks": {"source": "trailer", "record_count": "count", "totals": {"Netto": "net_total"}},
}
FIXED = {
    "format": "fixed_width", "encoding": "ascii",
    "fixed_width": {
        "record_types": {"header": "H", "detail": "D", "trailer": "T"}, "date_format": "%Y%m%d",
        "types": {"inv_date": "date"},
        "header_fields": [{"name": "run_date", "start": 2, "length": 8}, {"name": "batch", "start": 10, "end": 16}],
        "fields": [{"name": "inv_no", "start": 2, "length": 10}, {"name": "cust_no", "start": 12, "length": 10},
                   {"name": "company", "start": 22, "end": 23}, {"name": "curr", "start": 24, "length": 3},
                   {"name": "tax_code", "start": 27, "length": 3}, {"name": "inv_date", "start": 30, "length": 8},
                   {"name": "net", "start": 38, "length": 12, "decimals": 2},
                   {"name": "tax", "start": 50, "length": 12, "decimals": 2},
                   {"name": "gross", "start": 62, "end": 73, "decimals": 2},
                   {"name": "status", "start": 74, "length": 8}],
        "trailer_fields": [{"name": "count", "start": 2, "length": 9},
                           {"name": "net_total", "start": 11, "length": 15, "decimals": 2}]},
    "checks": {"source": "trailer", "record_count": "count", "totals": {"net": "net_total"}},
}


def spec(**capture) -> SourceOptions:
    return SourceOptions.model_validate({"inbox": "/tmp", **capture})


def rows(data: bytes, options: SourceOptions) -> list:
    return list(read_rows(io.BytesIO(data), options))


def test_windows_1252_with_bom_semicolons_comma_decimals_quoted_newline_and_trailer():
    options = spec(**GERMAN_CSV)
    parsed = rows((DATA / "invoices_de_cp1252.csv").read_bytes(), options)
    details = [r for r in parsed if r.kind == "detail"]
    assert [r.number for r in details] == [1, 2, 3]
    assert all(not r.problems for r in parsed)
    first, credit, third = (r.values for r in details)
    assert "Rechnungsnr" in first, "the BOM must not stick to the first column name"
    assert first["Währung"] == "EUR" and first["Netto"] == Decimal("1234.50") and first["Brutto"] == Decimal("1469.06")
    assert first["Datum"] == dt.date(2026, 11, 27)
    assert credit["Netto"] == Decimal("-500.00")
    assert credit["Bemerkung"] == 'Müller & Söhne; "Sonder"\r\nzweite Zeile €', "quoted newline, quote and € kept"
    assert details[2].line == 5, "the record after a quoted newline starts on its physical line"
    assert third["Netto"] == Decimal("2967.50") and third["Bemerkung"] == ""
    controls = Controls(options.checks, options.format_options)
    for row in parsed:
        controls.add(row)
    assert controls.problems() == []


def test_control_total_mismatch_is_reported_with_line_and_values():
    options = spec(**GERMAN_CSV)
    data = (DATA / "invoices_de_cp1252.csv").read_bytes().replace(b"TRL;3;3.702,00", b"TRL;4;3.702,01")
    controls = Controls(options.checks, options.format_options)
    for row in rows(data, options):
        controls.add(row)
    found = {p["rule"]: p for p in controls.problems()}
    assert found["record_count"]["line"] == 6 and found["record_count"]["value"] == "4"
    assert "3702.00" in found["control_total"]["message"] and found["control_total"]["column"] == "net_total"


def test_fixed_width_with_header_trailer_implied_decimals_and_trailing_signs():
    options = spec(**FIXED)
    parsed = rows((DATA / "invoices_fixed.txt").read_bytes(), options)
    assert [r.kind for r in parsed] == ["header", "detail", "detail", "detail", "trailer"]
    assert parsed[0].values == {"run_date": "20261127", "batch": "BATCH01"}
    first, credit, small = (r.values for r in parsed[1:4])
    assert first["inv_no"] == "INV0000101" and first["tax_code"] == "NY" and first["inv_date"] == dt.date(2026, 11, 27)
    assert first["net"] == Decimal("1234.50") and credit["gross"] == Decimal("-595.00") and small["net"] == Decimal("0.99")
    assert parsed[4].values["net_total"] == Decimal("735.49")
    controls = Controls(options.checks, options.format_options)
    for row in parsed:
        controls.add(row)
    assert controls.problems() == []


def test_fixed_width_short_and_unknown_lines_are_row_problems():
    options = spec(**FIXED)
    lines = (DATA / "invoices_fixed.txt").read_text().splitlines()
    lines[2] = lines[2][:60]
    lines.insert(3, "X junk record")
    parsed = rows(("\n".join(lines) + "\n").encode(), options)
    bad = [r for r in parsed if r.problems]
    assert [p["rule"] for r in bad for p in r.problems] == ["length", "record_type"]
    assert bad[0].problems[0]["line"] == 3 and "needs 81" in bad[0].problems[0]["message"]


def test_json_lines_keep_money_decimal():
    parsed = rows((DATA / "invoices.jsonl").read_bytes(), spec(format="jsonl"))
    assert [r.values["net"] for r in parsed] == [Decimal("1000.10"), "99.90"]
    assert isinstance(parsed[0].values["net"], Decimal)
    bad = rows(b'{"a": NaN}\n[1,2]\n{oops\n', spec(format="jsonl"))
    assert [r.problems[0]["rule"] for r in bad] == ["json", "json", "json"]
    assert [r.problems[0]["line"] for r in bad] == [1, 2, 3]


def test_utf8_without_bom_explicit_columns_and_iso_8859_1():
    options = spec(format="csv", encoding="iso-8859-1", csv={"header": False, "columns": ["no", "name", "amount"],
                                                             "types": {"amount": "decimal"}})
    parsed = rows("1,Ærø,\"1,5\"\n2,Zoë,-3\n".encode("iso-8859-1").replace(b'"1,5"', b"1.5"), options)
    assert [r.values for r in parsed] == [{"no": "1", "name": "Ærø", "amount": Decimal("1.5")},
                                          {"no": "2", "name": "Zoë", "amount": Decimal("-3")}]
    parsed = rows("a,b\nx,ü\n".encode(), spec(format="csv"))
    assert parsed[0].values == {"a": "x", "b": "ü"}


@pytest.mark.parametrize("data, rule, line", [
    (b"a,b\n1,2\n3,\xff\xfe\n", "encoding", 3),                 # not UTF-8
    (b"a,b\n1,2\n\x00\x01\x02\x03,4\n", "binary", 3),            # binary junk
    (b"a,b\n1,\x1b[2J\n", "binary", 2),                          # control characters
    (b'a,b\n1,"never closed\n2,3\n', "csv", 3),                  # unterminated quote
    (b"a,b\n" + b"x" * 5000 + b"\n", "line_length", 2),          # a line with no end
])
def test_unreadable_files_are_rejected_with_a_reason(data, rule, line):
    options = spec(format="csv", max_line=1024)
    with pytest.raises(FileRejected) as caught:
        rows(data, options)
    assert caught.value.problem["rule"] == rule and caught.value.problem["line"] == line
    assert caught.value.problem["message"]


def test_ragged_rows_and_bad_values_name_line_column_value_and_rule():
    options = spec(format="csv", csv={"types": {"amount": "decimal", "day": "date"}})
    parsed = rows(b"id,amount,day\n1,12.50,2026-11-27\n2,12.50\n3,12,5,2026-11-27\n4,abc,27/11/2026\n", options)
    assert [r.number for r in parsed] == [1, 2, 3, 4]
    assert parsed[1].problems[0]["rule"] == "columns" and parsed[2].problems[0]["rule"] == "columns"
    problems = {p["column"]: p for p in parsed[3].problems}
    assert problems["amount"] == {"line": 5, "record": 4, "column": "amount", "value": "abc", "rule": "decimal",
                                  "message": "expected a decimal number (expected decimal)"}
    assert problems["day"]["rule"] == "date_format" and problems["day"]["value"] == "27/11/2026"


def test_sidecar_formats():
    assert parse_sidecar('{"count": 3, "net": 12.50}') == {"count": 3, "net": Decimal("12.50")}
    assert parse_sidecar("# control\ncount=3\nnet: 12,50\n") == {"count": "3", "net": "12,50"}


def test_spec_refuses_what_cannot_work():
    from pydantic import ValidationError
    for bad in ({"format": "csv", "encoding": "utf-16"}, {"format": "csv", "pattern": "../*.csv"},
                {"format": "csv", "csv": {"header": False}}, {"format": "fixed_width"},
                {"format": "csv", "checks": {"record_count": "n"}},
                {"format": "csv", "csv": {"decimal_separator": ",", "thousands_separator": ","}}):
        with pytest.raises(ValidationError):
            spec(**bad)


FUZZ_SPECS = [spec(format="csv", csv={"types": {"b": "decimal"}}), spec(**GERMAN_CSV), spec(**FIXED),
              spec(format="jsonl", jsonl={"types": {"n": "int"}}), spec(format="csv", encoding="iso-8859-1")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=600),
                      st.lists(st.sampled_from([b"a,b\r\n", b"1,2\n", b'"x\n', b";", b",", b"\xef\xbb\xbf",
                                                b"TRL;1;2,5\n", b"D" + b"1" * 80 + b"\n", b'{"n": "1,5"}\n',
                                                b"\x80\x81", b"\x00", b"H2026\n", b"T9\n"]),
                               max_size=30).map(b"".join)),
       which=st.integers(0, len(FUZZ_SPECS) - 1))
def test_fuzz_no_crash_and_every_rejection_has_a_reason(data, which):
    options = FUZZ_SPECS[which]
    try:
        parsed = rows(data, options)
    except FileRejected as exc:
        assert exc.problem["rule"] and exc.problem["message"]
        return
    controls = Controls(options.checks, options.format_options) if options.checks else None
    for row in parsed:
        assert row.kind in ("header", "detail", "trailer")
        for p in row.problems:
            assert p["rule"] and p["message"] and p["line"]
        if controls:
            controls.add(row)
    if controls:
        assert all(p["rule"] and p["message"] for p in controls.problems())


@pytest.mark.parametrize("text, expected", [
    ("1.234,50", Decimal("1234.50")), ("-1.234.567,5", Decimal("-1234567.5")), ("1234,50-", Decimal("-1234.50")),
    (" +0,01 ", Decimal("0.01")), ("12", Decimal("12")),
    ("1234.50", None), ("1.23,4", None), ("12.3456,00", None), ("1,2,3", None), ("", None), ("€ 5", None)])
def test_decimal_separators_never_silently_change_an_amount(text, expected):
    from adapters.file_drop.values import parse_decimal
    typing = spec(format="csv", csv={"decimal_separator": ",", "thousands_separator": "."}).format_options
    if expected is None:
        with pytest.raises(ValueError):
            parse_decimal(text, typing)
    else:
        assert parse_decimal(text, typing) == expected


def test_header_record_carries_the_control_count():
    options = spec(format="fixed_width", fixed_width={
        "record_types": {"header": "H", "detail": "D"}, "header_fields": [{"name": "n", "start": 2, "length": 3}],
        "fields": [{"name": "amount", "start": 2, "length": 5, "decimals": 2}]},
        checks={"source": "header", "record_count": "n", "totals": {"amount": "n"}})
    controls = Controls(options.checks, options.format_options)
    for row in rows(b"H002\nD00150\nD00050\n", options):
        controls.add(row)
    assert controls.problems() == []
    controls = Controls(options.checks, options.format_options)
    for row in rows(b"H003\nD00150\n", options):
        controls.add(row)
    assert [p["rule"] for p in controls.problems()] == ["record_count", "control_total"]


def test_utf8_bom_tab_delimiter_single_quotes_and_a_preamble():
    options = spec(format="csv", csv={"delimiter": "tab", "quote": "'", "skip_lines": 2})
    data = "\ufeffExport ERP\nrun 2026-11-27\nno\tname\n1\t'Smith\tand\nSons'\n2\t'O''Brien'\n".encode("utf-8")
    parsed = rows(data, options)
    assert [r.values for r in parsed] == [{"no": "1", "name": "Smith\tand\nSons"}, {"no": "2", "name": "O'Brien"}]
    assert [r.line for r in parsed] == [4, 6]


@pytest.mark.parametrize("net, date", [
    ("\u0661\u0662\u0663,\u0664\u0665", "01.02.2026"), ("\uff11\uff12,\uff15\uff10", "01.02.2026"),
    ("1_000,50", "01.02.2026"), ("1e3", "01.02.2026"), ("12,50", "1.2.2026"), ("12,50", "01.02.2026 garbage"),
    ("12,50", "\u0660\u0661.02.2026"), ("12,50", "31.02.2026")])
def test_typed_columns_take_only_plain_ascii_digits(net, date):
    """Issue 12, defect 4, for typed columns: Python's \\d and strptime took Arabic-Indic and
    full-width digits and one-digit days as numbers and dates."""
    options = spec(format="csv", csv={"delimiter": ";", "decimal_separator": ",",
                                      "date_format": "%d.%m.%Y", "types": {"net": "decimal", "day": "date"}})
    (row,) = rows(f"net;day\n{net};{date}\n".encode(), options)
    bad = (net, "net") if net != "12,50" else (date, "day")
    assert [(p["line"], p["column"], p["value"]) for p in row.problems] == [(2, bad[1], bad[0])]


_TYPINGS = [{}, {"thousands_separator": ","}, {"thousands_separator": " "}, {"negative_parentheses": True},
            {"decimal_separator": ",", "thousands_separator": "."}, {"currency_marks": ["€", "1"]}]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_TYPINGS), st.one_of(
    st.from_regex(r"\A[-+ (]?[0-9.,]{0,8}[-+ )]?\Z"), st.text(alphabet="0123456789.-+,() €", max_size=8), st.text()))
def test_plain_amounts_take_a_shortcut_to_the_same_value_and_problems(options, text):
    """apply_types reads '-1234.50' without parse_amount: same Decimal (sign, exponent) and,
    for anything else, the same problem as before."""
    from adapters.file_drop.formats import Row, apply_types
    from adapters.file_drop.spec import Typing
    from adapters.file_drop.values import convert
    typing = Typing(types={"net": "decimal"}, **options)
    row = Row("detail", 2, {"net": text}, number=1)
    apply_types(row, typing)
    try:
        expected, mark = convert(text, "decimal", typing)
    except ValueError:
        assert len(row.problems) == 1 and row.problems[0]["rule"] == "decimal"
        return
    assert row.problems == [] and repr(row.values["net"]) == repr(expected)
    assert row.values.get("net_currency") == (mark if typing.currency_marks else None)


def test_an_implied_decimal_amount_keeps_every_digit():
    """Python's default decimal context keeps 28 digits: scaling and signing the amount in it
    rounded a 34-digit amount silently (to 1.234567890123456789012345679E+29)."""
    from adapters.file_drop.values import implied_decimal
    digits = "1234567890123456789012345678901234"
    assert str(implied_decimal(digits, 4)) == "123456789012345678901234567890.1234"
    assert str(implied_decimal(digits + "-", 4)) == "-123456789012345678901234567890.1234"
    assert str(implied_decimal("-0001234", 2)) == "-12.34" and str(implied_decimal("000", 2)) == "0.00"
