"""Mapping expressions, lookups with integer codes and 'missing' values (issue 12: build
item 1, defect 9). Pure code, and real YAML files through ``config.load``."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import MappingConfig, load, parse
from agent.contracts import Approximate, ConfigError
from agent.expressions import ExpressionError, MissingReference, compile_expression
from agent.mapping import EntityMapping
from agent.schemas import SchemaCatalog

CATALOG = SchemaCatalog.load()


def timesheet(fields: dict, lookups=None) -> EntityMapping:
    base = {"entry_id": {"expr": "text(rowid)"}, "project_code": {"const": "P-1"}, "employee_id": "fk_user",
            "work_date": "element_date", "billable": {"const": True}}
    config = MappingConfig.model_validate({"entity": "Timesheet", "fields": {**base, **fields}})
    return EntityMapping("time", config, CATALOG.entity("Timesheet"), lookups or {})


TIME_ROW = {"rowid": 7, "fk_user": "u1", "element_date": dt.date(2026, 1, 5), "element_duration": 5400,
            "thm": Approximate("41.125"), "multicurrency_code": None, "fk_currency": "EUR"}


def test_the_dolibarr_expressions_map_exactly():
    mapping = timesheet({"hours": {"expr": "element_duration / 3600"},
                         "bill_rate": {"expr": "round_half_even(thm * 1.1, 4)"},
                         "currency": {"expr": "coalesce(multicurrency_code, fk_currency)"}})
    payload, problems = mapping.apply(TIME_ROW)
    assert problems == []
    assert payload["hours"] == Decimal("1.50") and payload["bill_rate"] == Decimal("45.2375")
    assert payload["currency"] == "EUR" and payload["entry_id"] == "7"
    assert {"element_duration", "thm", "multicurrency_code", "fk_currency", "rowid"} <= mapping.columns


def test_an_inexact_result_is_refused_not_rounded_unless_the_mapping_says_so():
    refused = timesheet({"hours": {"expr": "element_duration / 3600"}}).apply({**TIME_ROW, "element_duration": 1000})
    assert [(p.field, p.rule) for p in refused[1]] == [("hours", "type")] and "decimal places" in refused[1][0].message
    rounded = timesheet({"hours": {"expr": "round_half_even(element_duration / 3600, 2)"}})
    assert rounded.apply({**TIME_ROW, "element_duration": 1000}) [0]["hours"] == Decimal("0.28")


def test_a_failing_expression_names_itself_and_the_row_goes_on_being_checked():
    mapping = timesheet({"hours": {"expr": "element_duration / 0"}, "description": {"expr": "upper(nope)"}})
    _, problems = mapping.apply(TIME_ROW)
    assert {(p.field, p.rule) for p in problems} == {("hours", "expr"), ("description", "expr")}
    assert any("element_duration / 0" in p.message for p in problems) and any("'nope'" in p.message for p in problems)


def test_a_lookup_through_an_expression_names_the_missing_reference():
    lookups = {"task_project": {"11": "PJ-2026-001"}}
    mapping = timesheet({"project_code": {"expr": "lookup('task_project', fk_task)"}, "hours": {"const": 1}}, lookups)
    assert mapping.apply({**TIME_ROW, "fk_task": 11})[0]["project_code"] == "PJ-2026-001"
    _, problems = mapping.apply({**TIME_ROW, "fk_task": 12})
    assert [(p.field, p.rule, p.value) for p in problems] == [("project_code", "task_project", 12)]
    assert "unknown task_project code 12" in problems[0].message


@pytest.mark.parametrize("text, why", [
    ("x.__class__", "Attribute"), ("__import__('os')", "unknown function __import__"), ("[i for i in x]", "ListComp"),
    ("x[0]", "only slices"), ("lambda: 1", "Lambda"), ("a | b", "BitOr"), ("x = 1", "not a valid expression"),
    ("lookup('nope', x)", "expected one of"), ("f'{x}'", "JoinedStr"),
])
def test_what_is_not_allowed_is_refused_when_the_config_is_read(text, why):
    with pytest.raises(ExpressionError, match=why):
        compile_expression(text, {"known": {}})


def test_every_bad_expression_and_filter_is_reported_with_its_key_path():
    document = {"mappings": {"t": {"entity": "Timesheet", "fields": {
        "entry_id": {"expr": "rowid.real"}, "project_code": {"const": "P"}, "employee_id": {"expr": "open('x')"},
        "work_date": "d", "hours": "h", "billable": {"const": True}}}},
        "sources": {"erp": {"type": "sql_poll", "url": "sqlite:///x.db"}},
        "sinks": {"out": {"type": "avro_files", "directory": "out"}},
        "routes": {"r": {"source": "erp", "sink": "out", "mapping": "t", "filter": "client ==",
                         "capture": {"table": "t", "cursor": "tms"}}}}
    with pytest.raises(ConfigError) as raised:
        parse(document)
    assert [p.split(":")[0] for p in raised.value.problems] == [
        "mappings.t.fields.entry_id.expr", "mappings.t.fields.employee_id.expr", "routes.r.filter"]


# ---- never a float (property) ----------------------------------------------------------

NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.decimals(-10**6, 10**6, places=4, allow_nan=False),
                    st.floats(-1e6, 1e6, allow_nan=False), st.none())
LITERALS = st.one_of(st.integers(0, 10**6).map(str),
                     st.decimals(0, 10**6, places=3, allow_nan=False).map(lambda d: f"{d:f}"),
                     st.sampled_from(["0.1", "1e3", "2.5E-2", "1_000.25", "a", "b", "c"]))


def _expressions():
    def extend(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"-{e}"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} > {t[2]} else {t[2]})"),
            st.tuples(st.sampled_from(["round_half_even", "round_half_up"]), inner,
                      st.integers(0, 4)).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
            st.tuples(st.sampled_from(["abs", "decimal", "int", "text"]), inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(st.sampled_from(["coalesce", "min", "max"]), inner, inner).map(
                lambda t: f"{t[0]}({t[1]}, {t[2]})"))
    return st.recursive(LITERALS, extend, max_leaves=12)


@settings(max_examples=600, deadline=None)
@given(text=_expressions(), a=NUMBERS, b=NUMBERS, c=NUMBERS)
def test_an_expression_never_produces_a_float(text, a, b, c):
    expression = compile_expression(text)
    try:
        result = expression({"a": a, "b": b, "c": c})
    except (ValueError, TypeError, MissingReference, OverflowError):
        return            # refused, with a message: never a float passed on
    assert not isinstance(result, float), (text, a, b, c, result)


def test_literals_are_the_decimals_written():
    assert compile_expression("0.1 + 0.2")({}) == Decimal("0.3")
    assert compile_expression("1 / 4")({}) == Decimal("0.25") and compile_expression("7 // 2")({}) == 3
    assert compile_expression("2 ** -2")({}) == Decimal("0.25")
    assert compile_expression("x * 3")({"x": 0.1}) == Decimal("0.3"), "a float column value is its shortest decimal"


# ---- integer codes in lookups (defect 9) -----------------------------------------------

DOLIBARR_FACTURE = """\
state_dir: state
lookups:
  invoice_status: {0: draft, 1: validated, 2: paid, 3: abandoned}
  customer_code: {12: CU2601-0012}
mappings:
  invoice:
    entity: Invoice
    fields:
      invoice_number: ref
      customer_number: {column: fk_soc, lookup: customer_code}
      legal_entity: {const: US01}
      currency: {const: EUR}
      tax_jurisdiction: {const: US-NY}
      invoice_date: datef
      due_date: {column: date_lim_reglement}
      net_amount: total_ht
      tax_amount: total_tva
      total_amount: total_ttc
      status: {column: fk_statut, lookup: invoice_status}
"""


def invoice_mapping(path) -> EntityMapping:
    config = load(path)
    return EntityMapping("invoice", config.mappings["invoice"], CATALOG.entity("Invoice"), config.lookups)


def test_integer_codes_in_a_lookup_are_their_digits(tmp_path):
    """Defect 9: {0: draft} failed with a message per key and one per mapping using it."""
    (tmp_path / "c.yaml").write_text(DOLIBARR_FACTURE)
    mapping = invoice_mapping(tmp_path / "c.yaml")
    row = {"ref": "FA2601-0001", "fk_soc": 12, "datef": dt.date(2026, 1, 5), "date_lim_reglement": None,
           "total_ht": Decimal("100.00"), "total_tva": Decimal("20.00"), "total_ttc": Decimal("120.00"), "fk_statut": 0}
    payload, problems = mapping.apply(row)
    assert problems == [] and payload["status"] == "draft" and payload["customer_number"] == "CU2601-0012"


def test_a_zero_foreign_key_means_none_without_a_fake_lookup_entry(tmp_path):
    text = DOLIBARR_FACTURE.replace("invoice_number: ref", "invoice_number: ref\n      due_date: "
                                    "{column: fk_cond_reglement, lookup: payment_term, missing: [0]}")
    text = text.replace("      due_date: {column: date_lim_reglement}\n", "")
    text = text.replace("lookups:\n", "lookups:\n  payment_term: {1: '2026-02-01'}\n")
    (tmp_path / "c.yaml").write_text(text)
    mapping = invoice_mapping(tmp_path / "c.yaml")
    row = {"ref": "FA1", "fk_soc": 12, "datef": "2026-01-05", "fk_cond_reglement": 0, "total_ht": "1.00",
           "total_tva": "0.00", "total_ttc": "1.00", "fk_statut": 1}
    payload, problems = mapping.apply(row)
    assert problems == [] and payload["due_date"] is None
    assert mapping.apply({**row, "fk_cond_reglement": 1})[0]["due_date"] == dt.date(2026, 2, 1)
    assert [p.rule for p in mapping.apply({**row, "fk_cond_reglement": 9})[1]] == ["payment_term"]


def test_a_broken_lookup_is_reported_once_not_again_by_each_mapping(tmp_path):
    (tmp_path / "c.yaml").write_text(DOLIBARR_FACTURE.replace("{0: draft,", "{010: draft,"))
    with pytest.raises(ConfigError) as raised:
        load(tmp_path / "c.yaml")
    assert raised.value.problems == ['lookups.invoice_status.8: found 010 unquoted; YAML reads the unquoted 010 as '
                                     'a number: write "010" in quotes if you mean the text']


def test_arithmetic_on_amounts_wider_than_28_digits_is_exact():
    """Python's default decimal context rounds every sum and product to 28 digits: a
    DECIMAL(38,4) net + tax came out rounded, and then passed the field's checks as it was."""
    net, tax = Decimal("1234567890123456789012345678.1234"), Decimal("0.0001")
    assert str(compile_expression("net + tax")({"net": net, "tax": tax})) == "1234567890123456789012345678.1235"
    assert str(compile_expression("net - tax")({"net": net, "tax": tax})) == "1234567890123456789012345678.1233"
    assert str(compile_expression("net * 2")({"net": net})) == "2469135780246913578024691356.2468"
    assert str(compile_expression("-net")({"net": net})) == "-1234567890123456789012345678.1234"
    assert str(compile_expression("round_half_even(net / 2, 2)")({"net": net})) == \
        "617283945061728394506172839.06"
