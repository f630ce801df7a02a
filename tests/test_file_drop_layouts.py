"""Layouts of real bank and ERP exports (issue 12, build item 5): parsers on bytes shaped
like the files met in the field, and a bank statement end to end through the real Agent."""
from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import pytest

from adapters.file_drop.formats import FileRejected, read_rows
from adapters.file_drop.spec import SourceOptions
from tests.test_file_drop_agent import config, published, run  # noqa: F401


def rows(text: str, capture: dict, encoding: str = "utf-8", needed=frozenset()) -> list:
    options = SourceOptions.model_validate({"inbox": "/tmp", "encoding": encoding, **capture})
    return list(read_rows(io.BytesIO(text.encode(encoding)), options, needed=needed))


def details(parsed) -> list[dict]:
    return [r.values for r in parsed if r.kind == "detail"]


BANK_CSV = """\
Kontoauszug;Girokonto DE02 1203 0000 0000 2020 51
Zeitraum;01.01.2026 - 31.01.2026
Buchungstag;Verwendungszweck;Soll;Haben;Waehrung
02.01.2026;Miete Januar;1.200,00;;EUR
2026-01-03;Zahlung RE-2026-0001;;€2.380,00;EUR
05.01.2026;Korrektur;(29,99);;EUR
Summe;;1.229,99;2.380,00;
Erstellt am 01.02.2026;;;;
"""
BANK_SPEC = {"format": "csv", "csv": {
    "delimiter": ";", "skip_lines": 2, "decimal_separator": ",", "thousands_separator": ".", "footer_lines": 2,
    "date_format": ["%d.%m.%Y", "%Y-%m-%d"], "negative_parentheses": True, "currency_marks": ["€"],
    "types": {"Buchungstag": "date", "Soll": "decimal", "Haben": "decimal"},
    "signed": {"amount": {"debit": "Soll", "credit": "Haben"}}}}


def test_a_bank_csv_with_a_preamble_debit_credit_columns_and_a_footer():
    lines = details(rows(BANK_CSV, BANK_SPEC))
    assert [(v["Buchungstag"], v["amount"]) for v in lines] == [
        (dt.date(2026, 1, 2), Decimal("-1200.00")), (dt.date(2026, 1, 3), Decimal("2380.00")),
        (dt.date(2026, 1, 5), Decimal("29.99")),
    ], "(29,99) in the debit column is a negative debit: money back"
    assert lines[1]["Haben_currency"] == "€" and lines[0]["Haben_currency"] is None


def test_a_debit_credit_indicator_column_signs_the_amount():
    text = "date,amount,dc\n2026-01-02,12.50,D\n2026-01-03,7.00,C\n2026-01-04,1.00,X\n2026-01-05,-1.00,C\n"
    parsed = rows(text, {"format": "csv", "csv": {"types": {"amount": "decimal"},
                                                 "signed": {"amount": {"indicator": "dc"}}}})
    assert [r.values["amount"] for r in parsed[:2]] == [Decimal("-12.50"), Decimal("7.00")]
    assert [(p["line"], p["rule"]) for r in parsed[2:] for p in r.problems] == [(4, "signed"), (5, "signed")]
    assert "expected one of D, DR, DEBIT, -, C, CR, CREDIT, +" in parsed[2].problems[0]["message"]


@pytest.mark.parametrize("text, expected", [("USD 12.50", Decimal("12.50")), ("12.50USD", Decimal("12.50")),
                                            ("-$3.00", Decimal("-3.00")), ("(US$1,000.25)", Decimal("-1000.25"))])
def test_currency_marks_glued_to_amounts(text, expected):
    spec = {"format": "csv", "csv": {"delimiter": ";", "thousands_separator": ",", "negative_parentheses": True,
                                     "currency_marks": ["USD", "US$", "$"], "types": {"amount": "decimal"}}}
    (row,) = rows(f"amount\n{text}\n", spec)
    assert row.problems == [] and row.values["amount"] == expected


def test_a_mark_not_listed_is_refused_with_the_value():
    (row,) = rows("amount\n12.50 GBP\n", {"format": "csv", "csv": {"currency_marks": ["EUR"],
                                                                   "types": {"amount": "decimal"}}})
    assert [(p["line"], p["column"], p["value"]) for p in row.problems] == [(2, "amount", "12.50 GBP")]


def record(*fields: tuple[int, str], width: int = 128) -> str:
    """A fixed-width line: each (1-based start, text) written at its place."""
    line = [" "] * width
    for start, text in fields:
        line[start - 1:start - 1 + len(text)] = text
    return "".join(line).rstrip() + "\n"


# shaped like a Belgian CODA statement: header 0, old balance 1, a movement 21 with its
# continuations 22 and 23, new balance 8, trailer 9
CODA = "".join([
    record((1, "0"), (6, "020126"), (35, "ACME BELGIUM NV")),
    record((1, "1"), (6, "BE68539007547034"), (43, "000000001234560")),
    record((1, "21"), (3, "0001"), (11, "REF0001"), (32, "0"), (33, "000000000100000"), (48, "070126"),
           (63, "FACTUUR 2026/0001")),
    record((1, "22"), (3, "0001"), (99, "GKCCBEBB")),
    record((1, "23"), (3, "0001"), (11, "BE02120300000000202051"), (48, "CUSTOMER ONE BV")),
    record((1, "21"), (3, "0002"), (11, "REF0002"), (32, "1"), (33, "000000000025500"), (48, "080126"),
           (63, "RETOUR")),
    record((1, "8"), (43, "000000001309060")),
    record((1, "9"), (17, "000006")),
])
CODA_SPEC = {"format": "fixed_width", "encoding": "ascii", "fixed_width": {
    "date_format": "%d%m%y", "types": {"booked": "date"}, "pad_short_lines": True,   # trailing blanks trimmed
    "records": [
        {"type": "0", "role": "header", "fields": [{"name": "created", "start": 6, "length": 6}]},
        {"type": "1", "role": "ignore"},
        {"type": "21", "role": "detail", "fields": [
            {"name": "sequence", "start": 3, "length": 4}, {"name": "reference", "start": 11, "length": 21},
            {"name": "sign", "start": 32, "length": 1}, {"name": "amount", "start": 33, "length": 15, "decimals": 3},
            {"name": "booked", "start": 48, "length": 6}, {"name": "message", "start": 63, "length": 50}]},
        {"type": "22", "role": "continuation", "fields": [{"name": "bic", "start": 99, "length": 11}]},
        {"type": "23", "role": "continuation", "fields": [{"name": "counterparty_account", "start": 11, "length": 34},
                                                           {"name": "counterparty", "start": 48, "length": 35}]},
        {"type": "8", "role": "trailer", "fields": [{"name": "new_balance", "start": 43, "length": 15,
                                                     "decimals": 3}]},
        {"type": "9", "role": "trailer", "fields": [{"name": "count", "start": 17, "length": 6}]}],
    "signed": {"amount": {"indicator": "sign", "negative": ["1"], "positive": ["0"]}}}}


def test_a_coda_statement_with_continuation_and_ignored_records():
    parsed = rows(CODA, CODA_SPEC, encoding="ascii")
    assert [r.kind for r in parsed] == ["header", "detail", "detail", "trailer", "trailer"]
    assert all(not r.problems for r in parsed), [r.problems for r in parsed]
    first, second = details(parsed)
    assert first["amount"] == Decimal("100.000") and second["amount"] == Decimal("-25.500")
    assert first["counterparty"] == "CUSTOMER ONE BV" and first["bic"] == "GKCCBEBB"
    assert first["booked"] == dt.date(2026, 1, 7) and first["message"] == "FACTUUR 2026/0001"
    assert "counterparty" not in second, "continuations belong to the detail before them"


def test_a_file_of_another_layout_is_one_format_problem_not_one_per_row():
    text = "Date,Label,Amount\n" + "".join(f"2026-01-{d:02d},coffee,3.50\n" for d in range(1, 30))
    with pytest.raises(FileRejected) as raised:
        rows(text, {"format": "csv"}, needed=frozenset({"Date", "Amount", "Currency", "_line"}))
    assert raised.value.problem["rule"] == "format" and raised.value.problem["line"] == 1
    assert raised.value.problem["message"] == "header has Date, Label, Amount; the spec expects Currency"


def test_a_missing_header_column_says_when_the_bytes_are_another_encoding():
    data = "Datum;Währung;Betrag\n01.01.2026;EUR;1\n".encode("utf-8")
    options = SourceOptions.model_validate({"inbox": "/tmp", "encoding": "windows-1252", "format": "csv",
                                            "csv": {"delimiter": ";"}})
    with pytest.raises(FileRejected) as raised:
        list(read_rows(io.BytesIO(data), options, needed=frozenset({"Datum", "Währung"})))
    message = raised.value.problem["message"]
    assert message.startswith("header has Datum, WÃ¤hrung, Betrag; the spec expects Währung")
    assert "set encoding: utf-8" in message


STATEMENT_MAPPING = {"entity": "RevenueEvent", "fields": {
    # bank lines have no id of their own: the statement number and the line within it
    "revenue_event_id": {"expr": "join('/', statement, line_no)"},
    "project_code": {"const": "UNALLOCATED"}, "legal_entity": {"const": "US01"}, "currency": "currency",
    "amount": "amount", "revenue_type": {"const": "cash"}, "recognized_on": "booked",
    "period": {"expr": "concat(year(booked), '-', zfill(month(booked), 2))"}}}


def test_bank_statements_without_line_ids_do_not_collide_across_statements(tmp_path, run):
    capture = {"format": "csv", "csv": {"types": {"booked": "date", "amount": "decimal"}}}
    r = run(config(tmp_path, capture, mapping=STATEMENT_MAPPING))
    for statement in ("2026-001", "2026-002"):
        (r.inbox / f"st_{statement}.csv").write_text(
            "statement,line_no,booked,amount,currency\n"
            f"{statement},1,2026-01-0{statement[-1]},-12.50,EUR\n{statement},2,2026-01-0{statement[-1]},3.00,EUR\n")
        r.passes()
    r.stop()
    events = published(r.out)
    assert [e["key"] for e in events] == ["2026-001/1", "2026-001/2", "2026-002/1", "2026-002/2"]
    assert events[0]["after"]["amount"] == Decimal("-12.50") and events[2]["after"]["period"] == "2026-01"
    assert json.dumps([e["after"]["amount"] for e in events], default=str) == '["-12.50", "3.00", "-12.50", "3.00"]'
