"""Declarative mapping and validation gates: pure code, no I/O."""
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.coercion import _decimal_coercer, _to_decimal
from agent.config import MappingConfig
from agent.contracts import SourceRecord
from agent.mapping import EntityMapping
from agent.translate import Translator
from agent.schemas import SchemaCatalog

CATALOG = SchemaCatalog.load()
LOOKUPS = {"legal_entity": {"01": "US01", "02": "UK01"}, "tax_jurisdiction": {"NY": "US-NY", "LDN": "GB"},
           "service_line": {"ADV": "ADVISORY"}}


def customer_mapping(**overrides):
    fields = {"customer_number": {"column": "CUST_NO", "convert": ["strip"]}, "name": "NAME",
              "legal_entity": {"column": "CO", "lookup": "legal_entity"}, "currency": {"column": "CURR",
                                                                                      "convert": "upper"},
              "tax_jurisdiction": {"column": "TAX", "lookup": "tax_jurisdiction"},
              "credit_limit": "LIMIT", "updated_at": "TS", "country": {"const": "US"}}
    fields.update(overrides)
    config = MappingConfig.model_validate({"entity": "Customer", "fields": fields,
                                           "source_timezone": "America/New_York"})
    return EntityMapping("customer", config, CATALOG.entity("Customer"), LOOKUPS)


ROW = {"CUST_NO": " C-1 ", "NAME": "Acme", "CO": "01", "CURR": "usd", "TAX": "NY", "LIMIT": Decimal("1000.50"),
       "TS": dt.datetime(2026, 11, 27, 9, 30)}


def test_maps_columns_constants_lookups_and_conversions():
    payload, problems = customer_mapping().apply(ROW)
    assert problems == []
    assert payload["customer_number"] == "C-1" and payload["legal_entity"] == "US01"
    assert payload["currency"] == "USD" and payload["tax_jurisdiction"] == "US-NY" and payload["country"] == "US"
    assert payload["credit_limit"] == Decimal("1000.50") and isinstance(payload["credit_limit"], Decimal)
    # naive source timestamps are in the mapping's source zone, published in UTC
    assert payload["updated_at"] == dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("value, expected", [
    (1234.5, Decimal("1234.50")),                 # legacy double column
    (0.1 + 0.2, Decimal("0.30")),                 # the classic float artefact rounds back
    ("1,000.00".replace(",", ""), Decimal("1000.00")),
    (42, Decimal("42.00")),
])
def test_money_becomes_exact_decimal(value, expected):
    payload, problems = customer_mapping().apply({**ROW, "LIMIT": value})
    assert problems == [] and payload["credit_limit"] == expected
    assert str(payload["credit_limit"]) == str(expected)


def test_every_failed_rule_is_reported_at_once():
    row = {**ROW, "CO": "99", "CURR": "XXQ", "LIMIT": Decimal("-5"), "NAME": None, "TAX": "ZZ"}
    payload, problems = customer_mapping().apply(row)
    rules = {(p.field, p.rule) for p in problems}
    assert rules == {("legal_entity", "legal_entity"), ("currency", "iso4217"), ("credit_limit", "non_negative"),
                     ("name", "required"), ("tax_jurisdiction", "tax_jurisdiction")}
    unknown = next(p for p in problems if p.field == "legal_entity")
    assert unknown.column == "CO" and unknown.value == "99" and "unknown legal_entity code" in unknown.message


def test_amount_with_too_many_decimals_is_rejected_not_rounded():
    _, problems = customer_mapping().apply({**ROW, "LIMIT": Decimal("10.005")})
    assert [(p.field, p.rule) for p in problems] == [("credit_limit", "type")]
    assert "decimal places" in problems[0].message


def test_known_code_rule_without_lookup_checks_canonical_values():
    mapping = customer_mapping(legal_entity="CO")      # already canonical in this source
    assert mapping.apply({**ROW, "CO": "UK01"})[1] == []
    assert [p.rule for p in mapping.apply({**ROW, "CO": "XX99"})[1]] == ["legal_entity"]


def test_translator_builds_a_decodable_event_with_deterministic_id():
    translator = Translator("customers", "fabric", "erp", customer_mapping())
    record = SourceRecord("cust", "update", '["C-1"]@2026-11-27T09:30:00', after=ROW,
                          occurred_at=dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.timezone.utc))
    (row,), failures = translator.translate([record])
    (again,), _ = translator.translate([record])
    assert failures == [] and row["event_id"] == again["event_id"] and row["key"] == "C-1"
    event = CATALOG.entity("Customer").decode(row["body"])
    assert event["metadata"]["operation"] == "UPDATE" and event["metadata"]["source"]["system"] == "erp"
    assert event["after"]["credit_limit"] == Decimal("1000.50")
    other = SourceRecord("cust", "update", '["C-1"]@2026-11-27T09:31:00', after=ROW)
    assert translator.translate([other])[0][0]["event_id"] != row["event_id"]


def test_translator_sends_bad_rows_to_exceptions_with_full_context():
    translator = Translator("customers", "fabric", "erp", customer_mapping())
    bad = SourceRecord("cust", "update", "p2", after={**ROW, "CURR": "ZZZ", "CO": "77"})
    good = SourceRecord("cust", "update", "p3", after=ROW)
    events, failures = translator.translate([bad, good])
    assert len(events) == 1 and len(failures) == 1
    context = failures[0]["context"]
    assert context["record"]["after"]["CURR"] == "ZZZ" and context["mapping"]["entity"] == "Customer"
    assert {p["rule"] for p in context["problems"]} == {"iso4217", "legal_entity"}
    assert "currency" in failures[0]["reason"] and "legal_entity" in failures[0]["reason"]


def test_soft_delete_publishes_before_image():
    translator = Translator("customers", "fabric", "erp", customer_mapping())
    (row,), _ = translator.translate([SourceRecord("cust", "delete", "p9", before=ROW)])
    event = CATALOG.entity("Customer").decode(row["body"])
    assert event["metadata"]["operation"] == "DELETE" and event["after"] is None
    assert event["before"]["customer_number"] == "C-1" and row["key"] == "C-1"


@pytest.mark.parametrize("position", ["1", '["C-1"]@2026-11-27T09:30:00', "sha256:ab:17", "ü/ß/日本"])
def test_event_id_is_the_rfc4122_uuid5_of_the_source_identity(position):
    import uuid

    from agent.events import EVENT_NAMESPACE, event_id
    assert event_id("erp", "cust", position) == str(uuid.uuid5(EVENT_NAMESPACE, f"erp\x1fcust\x1f{position}"))


@pytest.mark.parametrize("text", ["1_000.50", "1e3", "\u0661\u0662\u0663.\u0664\u0665", "\uff11\uff12.\uff15\uff10",
                                  "NaN", "Infinity", "12.50 EUR", "1,000.00", "0x1F"])
def test_money_text_in_any_but_the_plain_form_is_rejected_not_guessed(text):
    payload, problems = customer_mapping().apply({**ROW, "LIMIT": text})
    assert [(p.field, p.rule, p.value) for p in problems] == [("credit_limit", "type", text)]


@pytest.mark.parametrize("text, expected", [(" 12.5 ", Decimal("12.50")), ("+7", Decimal("7.00")), (".5", Decimal("0.50"))])
def test_plain_money_text_is_exact(text, expected):
    payload, problems = customer_mapping().apply({**ROW, "LIMIT": text})
    assert problems == [] and payload["credit_limit"] == expected


def invoice_mapping():
    fields = {"invoice_number": "NO", "customer_number": "CUST", "legal_entity": {"column": "CO", "lookup": "legal_entity"},
              "currency": "CURR", "tax_jurisdiction": {"column": "TAX", "lookup": "tax_jurisdiction"},
              "invoice_date": "DATE", "net_amount": "NET", "tax_amount": "VAT", "total_amount": "GROSS",
              "status": "STATUS"}
    return EntityMapping("invoice", MappingConfig.model_validate({"entity": "Invoice", "fields": fields}),
                         CATALOG.entity("Invoice"), LOOKUPS)


INVOICE = {"NO": "I-1", "CUST": "C-1", "CO": "01", "CURR": "USD", "TAX": "NY", "DATE": "2025-01-20",
           "NET": "100.00", "VAT": "8.00", "GROSS": "108.00", "STATUS": "open"}


@pytest.mark.parametrize("text", ["2025-01-20 garbage", "2025-01-22T99:99", "20250120", "2025-W03-1",
                                  "\u0662\u0660\u0662\u0665-01-20", "2025-1-20"])
def test_dates_in_any_but_the_iso_form_are_rejected_not_truncated(text):
    payload, problems = invoice_mapping().apply({**INVOICE, "DATE": text})
    assert [(p.field, p.value) for p in problems] == [("invoice_date", text)]


@pytest.mark.parametrize("text", ["2025-01-22T99:99", "20250120T1000", "2026-11-27T10:00:00.1234567", "yesterday"])
def test_timestamps_in_any_but_the_iso_form_are_rejected(text):
    payload, problems = customer_mapping().apply({**ROW, "TS": text})
    assert [(p.field, p.value) for p in problems] == [("updated_at", text)]


def test_a_required_text_field_refuses_blank():
    """17 invoices were published with customer_number "": only the key was checked."""
    payload, problems = invoice_mapping().apply({**INVOICE, "CUST": "  "})
    assert [(p.field, p.rule) for p in problems] == [("customer_number", "required")]


def test_whole_numbers_are_never_truncated():
    from agent.coercion import _to_int
    for bad in ("\u0661\u0662\u0663", "1_000", "12.5", Decimal("12.5"), 12.5, True):
        with pytest.raises(ValueError):
            _to_int(bad)
    assert [_to_int(v) for v in (" 12 ", Decimal("12"), 12.0, -3)] == [12, 12, 12, -3]


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.decimals(allow_nan=True, allow_infinity=True), st.decimals(places=2)), st.integers(0, 6),
       st.integers(1, 40))
def test_the_decimal_fast_path_gives_what_the_full_conversion_gives(value, scale, precision):
    """The coercer chosen per field takes a short cut for driver Decimals: same number, same refusal."""
    precision = max(precision, scale)

    def outcome(convert):
        try:
            return repr(convert(value))
        except ValueError as exc:
            return f"ValueError: {exc}"
    assert outcome(_decimal_coercer(scale, precision)) == outcome(lambda v: _to_decimal(v, scale, precision))


def _wide_customer_mapping():
    """A Customer mapping whose credit_limit is decimal(38,4), as a custom schema may declare it
    (SQL Server money columns are often DECIMAL(38,4)): more digits than Python's default 28."""
    import copy

    from agent.schemas import EntitySchema
    raw = copy.deepcopy(CATALOG.entity("Customer").schema)
    image = next(f for f in raw["fields"] if f["name"] == "before")["type"][1]
    next(f for f in image["fields"] if f["name"] == "credit_limit")["type"][1].update(precision=38, scale=4)
    schema = EntitySchema(raw)
    config = MappingConfig.model_validate({"entity": "Customer", "fields": {
        "customer_number": "NO", "name": "NO", "legal_entity": {"const": "US01"}, "currency": {"const": "USD"},
        "tax_jurisdiction": {"const": "GB"}, "credit_limit": "AMT"}})
    return schema, EntityMapping("wide", config, schema, LOOKUPS)


@pytest.mark.parametrize("value, expected", [
    (Decimal("1234567890123456789012345678.1234"), "1234567890123456789012345678.1234"),
    ("1234567890123456789012345678.12", "1234567890123456789012345678.1200"),
    (Decimal("1234567890123456789012345678.123400"), "1234567890123456789012345678.1234"),
    (1e27, "1000000000000000000000000000.0000"),
])
def test_an_amount_of_more_than_28_digits_maps_exactly_into_a_wide_decimal(value, expected):
    """Python's default decimal context holds 28 digits; a wider amount that fits the schema
    used to raise InvalidOperation out of the mapping (the route's batch failed, not the row)."""
    schema, mapping = _wide_customer_mapping()
    payload, problems = mapping.apply({"NO": "W-1", "AMT": value})
    assert problems == [] and str(payload["credit_limit"]) == expected
    event = {"metadata": {"event_id": "e", "correlation_id": "e", "causation_id": None,
                          "source": {"system": "s", "object": "o", "position": "p"}, "operation": "CREATE",
                          "occurred_at": None, "captured_at": dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc),
                          "schema_version": schema.version},
             "key": "W-1", "before": None, "after": payload}
    assert str(schema.decode(schema.encode(event))["after"]["credit_limit"]) == expected


def test_an_amount_too_wide_for_its_decimal_is_a_problem_of_its_row():
    _, mapping = _wide_customer_mapping()
    for value in (Decimal("1" * 35), "1" * 35, 1e300):
        _, problems = mapping.apply({"NO": "W-1", "AMT": value})
        assert [(p.field, p.rule) for p in problems] == [("credit_limit", "type")], value
        assert "does not fit decimal(38,4)" in problems[0].message
