"""The canonical schemas: parsing, exact round trips, evolution and clear rejections."""
from __future__ import annotations

import copy
import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import fastavro
import pytest

from agent.contracts import TerminalError
from agent.schemas import EntitySchema, FieldSpec, SchemaCatalog, find_schema_dir

ENTITIES = ["BillingMilestone", "Contract", "Customer", "Engagement", "Invoice", "Project",
            "RevenueEvent", "Timesheet"]

# One realistic "after" image per entity.
PAYLOADS = {
    "Customer": dict(customer_number="C-10042", name="Acme Industrie GmbH", legal_entity="DE01",
                     country="DE", currency="EUR", tax_jurisdiction="DE-BY",
                     credit_limit=Decimal("1234567.89"), status="active",
                     updated_at=datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=timezone.utc)),
    "Engagement": dict(engagement_id="OPP-7781", customer_number="C-10042", name="ERP rollout",
                       legal_entity="DE01", service_line="TECH", stage="closed_won",
                       currency="EUR", amount=Decimal("250000.00"), close_date=date(2026, 3, 31)),
    "Contract": dict(contract_number="K-2026-001", customer_number="C-10042",
                     engagement_id="OPP-7781", legal_entity="DE01", currency="EUR",
                     billing_type="fixed_fee", total_value=Decimal("250000.00"),
                     start_date=date(2026, 4, 1), end_date=None),
    "Project": dict(project_code="PRJ-0815", customer_number="C-10042",
                    contract_number="K-2026-001", name="ERP rollout phase 1",
                    legal_entity="DE01", service_line="TECH", currency="EUR",
                    budget=Decimal("180000.50"), status="open", start_date=date(2026, 4, 1),
                    end_date=date(2026, 12, 31)),
    "BillingMilestone": dict(milestone_id="MS-1", project_code="PRJ-0815",
                             description="Blueprint signed off", currency="EUR",
                             amount=Decimal("45000.00"), due_date=date(2026, 6, 30),
                             status="planned"),
    "Timesheet": dict(entry_id="TS-99812", project_code="PRJ-0815", employee_id="E-314",
                      work_date=date(2026, 11, 26), hours=Decimal("7.75"), billable=True,
                      bill_rate=Decimal("145.1250"), currency="EUR",
                      description="Workshop: order-to-cash"),
    "Invoice": dict(invoice_number="INV-2026-0042", customer_number="C-10042",
                    legal_entity="DE01", currency="EUR", tax_jurisdiction="DE-BY",
                    invoice_date=date(2026, 7, 1), due_date=date(2026, 7, 31),
                    net_amount=Decimal("-1000.00"), tax_amount=Decimal("-190.00"),
                    total_amount=Decimal("-1190.00"), status="credit_note"),
    "RevenueEvent": dict(revenue_event_id="REV-1", project_code="PRJ-0815",
                         contract_number=None, legal_entity="DE01", currency="EUR",
                         amount=Decimal("-12345678.91"), revenue_type="reversal",
                         recognized_on=date(2026, 10, 31), period="2026-10"),
}


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load()


def make_event(catalog: SchemaCatalog, entity: str, **after_changes) -> dict:
    schema = catalog.entity(entity)
    after = {**PAYLOADS[entity], **after_changes}
    before = copy.deepcopy(after)
    return {
        "metadata": {
            "event_id": "4f1c2a9e-1d2b-4c55-9a4e-0c1f0e6b7a10",
            "correlation_id": "corr-123",
            "causation_id": None,
            "source": {"system": "erp-prod", "object": entity.lower(), "position": "pk=42@1"},
            "operation": "UPDATE",
            "occurred_at": datetime(2026, 11, 27, 9, 59, 59, 999999, tzinfo=timezone.utc),
            "captured_at": datetime(2026, 11, 27, 10, 0, 1, 5, tzinfo=timezone.utc),
            "schema_version": schema.version,
            "version": 42,
        },
        "key": after[schema.key_field],
        "before": before,
        "after": after,
    }


def test_catalog_lists_the_eight_entities(catalog):
    # and Reconciliation, a v1 entity of its own (tests/test_reconcile_schema.py)
    assert catalog.names() == sorted(ENTITIES + ["Reconciliation"])
    assert find_schema_dir().joinpath("EventMetadata.avsc").is_file()
    for name in ENTITIES:
        schema = catalog.entity(name)
        assert isinstance(schema, EntitySchema)
        assert schema.entity == name and schema.event_name == f"{name}Event"
        assert schema.version == 2
        assert schema.fields[0].name == schema.key_field     # business key first
        # Expanded: EventMetadata is inlined, so the registry gets one standalone schema.
        assert schema.schema["fields"][0]["type"]["name"].endswith("EventMetadata")
        assert json.loads(schema.schema_json) == schema.schema
        fastavro.parse_schema(json.loads(schema.schema_json))


def test_unknown_entity_names_the_known_ones(catalog):
    with pytest.raises(KeyError, match="Customer"):
        catalog.entity("Vendor")


def test_every_file_parses_on_its_own_terms():
    directory = find_schema_dir()
    named: dict = {}
    fastavro.parse_schema(json.loads((directory / "EventMetadata.avsc").read_text()), named)
    for name in ENTITIES:
        fastavro.parse_schema(json.loads((directory / f"{name}.avsc").read_text()), named)
        # Released files are fully expanded: they parse with no named types around.
        fastavro.parse_schema(json.loads((directory / "released/v1" / f"{name}.avsc").read_text()))


@pytest.mark.parametrize("entity", ENTITIES)
def test_round_trip_is_exact(catalog, entity):
    schema = catalog.entity(entity)
    event = make_event(catalog, entity)
    decoded = schema.decode(schema.encode(event))
    assert decoded == event
    for name, value in PAYLOADS[entity].items():
        if isinstance(value, Decimal):
            assert type(decoded["after"][name]) is Decimal
            assert str(decoded["after"][name]) == str(value)     # same digits, not just ==
    assert decoded["metadata"]["occurred_at"].tzinfo is not None


def test_delete_with_only_before_image_and_other_timezones(catalog):
    schema = catalog.entity("Customer")
    event = make_event(catalog, "Customer")
    event["after"] = None
    event["metadata"]["operation"] = "DELETE"
    cet = timezone(timedelta(hours=1))
    event["metadata"]["captured_at"] = datetime(2026, 11, 27, 11, 0, tzinfo=cet)
    decoded = schema.decode(schema.encode(event))
    assert decoded["after"] is None and decoded["before"] == event["before"]
    assert decoded["metadata"]["captured_at"] == datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)


def test_missing_nullable_fields_default_to_null(catalog):
    schema = catalog.entity("Customer")
    event = make_event(catalog, "Customer")
    del event["metadata"]["causation_id"], event["metadata"]["version"]
    del event["after"]["country"]
    decoded = schema.decode(schema.encode(event))
    assert decoded["metadata"]["causation_id"] is None and decoded["after"]["country"] is None
    assert decoded["metadata"]["version"] is None


def test_trailing_zero_decimals_are_accepted_exactly(catalog):
    schema = catalog.entity("Project")
    event = make_event(catalog, "Project", budget=Decimal("100.0000"))
    assert schema.decode(schema.encode(event))["after"]["budget"] == Decimal("100.00")
    assert event["after"]["budget"] == Decimal("100.0000")   # the caller's record is untouched


@pytest.mark.parametrize("entity", ENTITIES)
def test_backward_compatible_with_released_v1(catalog, entity):
    released = catalog.released(entity)
    assert released is not None and released["outpost.version"] == 1
    assert catalog.check_backward(entity) == []
    # v1 really differs: data written with v1 is readable with v2 and gets defaults.
    assert json.dumps(released) != catalog.entity(entity).schema_json


def test_v1_data_is_readable_with_current_schema(catalog):
    import io
    v1 = fastavro.parse_schema(catalog.released("Customer"))
    event = make_event(catalog, "Customer")
    for image in ("before", "after"):
        del event[image]["country"]
    del event["metadata"]["causation_id"], event["metadata"]["version"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, v1, event)
    out.seek(0)
    current = fastavro.parse_schema(catalog.entity("Customer").schema)
    decoded = fastavro.schemaless_reader(out, v1, current)
    assert decoded["after"]["country"] is None
    assert decoded["after"]["credit_limit"] == Decimal("1234567.89")


def _current_with(catalog, entity, change) -> dict:
    """The current schema with ``change`` applied to the payload record; used as the
    'previous' so that the current one must read data written by it."""
    schema = copy.deepcopy(catalog.entity(entity).schema)
    payload = next(t for t in schema["fields"][2]["type"] if t != "null")
    change(payload["fields"])
    return schema


def test_new_required_field_is_reported(catalog):
    # Writer lacks "name"; the current reader needs it and has no default.
    previous = _current_with(catalog, "Customer",
                             lambda fields: fields.remove(next(f for f in fields if f["name"] == "name")))
    problems = catalog.check_backward("Customer", previous)
    assert problems and any("name" in p for p in problems)


def test_type_change_is_reported(catalog):
    def to_string(fields):
        next(f for f in fields if f["name"] == "amount")["type"] = "string"
    problems = catalog.check_backward("Engagement", _current_with(catalog, "Engagement", to_string))
    assert problems and any("amount" in p for p in problems)

    def to_boolean(fields):
        next(f for f in fields if f["name"] == "budget")["type"] = "boolean"
    assert catalog.check_backward("Project", _current_with(catalog, "Project", to_boolean))


def test_decimal_scale_change_is_reported(catalog):
    def rescale(fields):
        next(f for f in fields if f["name"] == "amount")["type"]["scale"] = 4
    problems = catalog.check_backward("BillingMilestone", _current_with(catalog, "BillingMilestone", rescale))
    assert problems and "amount" in problems[0]


def test_float_for_a_decimal_is_terminal(catalog):
    schema = catalog.entity("Invoice")
    with pytest.raises(TerminalError, match="net_amount") as err:
        schema.encode(make_event(catalog, "Invoice", net_amount=1000.0))
    assert "float" in str(err.value)
    with pytest.raises(TerminalError, match="bill_rate"):
        catalog.entity("Timesheet").encode(make_event(catalog, "Timesheet", bill_rate=145.125))


def test_decimals_that_do_not_fit_are_terminal(catalog):
    schema = catalog.entity("Timesheet")
    with pytest.raises(TerminalError, match="hours.*decimal places"):
        schema.encode(make_event(catalog, "Timesheet", hours=Decimal("7.755")))
    with pytest.raises(TerminalError, match="hours.*integer digits"):
        schema.encode(make_event(catalog, "Timesheet", hours=Decimal("12345.5")))
    with pytest.raises(TerminalError, match="hours"):
        schema.encode(make_event(catalog, "Timesheet", hours=Decimal("NaN")))


def test_missing_required_field_is_terminal(catalog):
    schema = catalog.entity("Project")
    event = make_event(catalog, "Project")
    del event["after"]["legal_entity"]
    with pytest.raises(TerminalError, match="legal_entity"):
        schema.encode(event)
    event = make_event(catalog, "Project")
    del event["metadata"]["correlation_id"]
    with pytest.raises(TerminalError, match="correlation_id"):
        schema.encode(event)


def test_other_misfits_are_terminal(catalog):
    schema = catalog.entity("Customer")
    with pytest.raises(TerminalError, match="operation"):
        event = make_event(catalog, "Customer")
        event["metadata"]["operation"] = "create"            # enum symbols are upper case
        schema.encode(event)
    with pytest.raises(TerminalError, match="captured_at.*naive"):
        event = make_event(catalog, "Customer")
        event["metadata"]["captured_at"] = datetime(2026, 11, 27, 10, 0)
        schema.encode(event)
    with pytest.raises(TerminalError, match="updated_at.*naive"):
        schema.encode(make_event(catalog, "Customer", updated_at=datetime(2026, 11, 27)))
    with pytest.raises(TerminalError, match="nmae"):
        schema.encode(make_event(catalog, "Customer", nmae="typo"))
    with pytest.raises(TerminalError):
        schema.encode("not a record")


def test_fingerprints_are_stable_and_distinct(catalog):
    again = SchemaCatalog.load()
    prints = {name: catalog.entity(name).fingerprint for name in ENTITIES}
    assert len(set(prints.values())) == len(ENTITIES)
    for name, value in prints.items():
        assert len(value) == 64 and int(value, 16) >= 0
        assert again.entity(name).fingerprint == value
        assert catalog.by_fingerprint(value).entity == name
    with pytest.raises(KeyError):
        catalog.by_fingerprint("0" * 64)


def test_rules_and_field_specs_are_exposed(catalog):
    customer = catalog.entity("Customer")
    currency = customer.field("currency")
    assert currency == FieldSpec("currency", "string", False, None, None, ("iso4217",),
                                 currency.doc)
    assert customer.field("credit_limit").rules == ("non_negative",)
    limit = customer.field("credit_limit")
    assert (limit.avro_type, limit.nullable, limit.precision, limit.scale) == ("decimal", True, 18, 2)
    assert customer.field("updated_at").avro_type == "timestamp"
    assert customer.field("legal_entity").rules == ("legal_entity",)
    assert customer.field("tax_jurisdiction").rules == ("tax_jurisdiction",)
    assert catalog.entity("Project").field("service_line").rules == ("service_line",)
    assert catalog.entity("Timesheet").field("work_date").avro_type == "date"
    assert "non_negative" not in catalog.entity("Invoice").field("total_amount").rules
    for name in ENTITIES:
        schema = catalog.entity(name)
        for spec in schema.fields:
            assert spec.doc, f"{name}.{spec.name} has no doc"
            if spec.name == "currency":
                assert "iso4217" in spec.rules
            assert spec.avro_type != "double" and spec.avro_type != "float"   # never a float
        # Custom attributes survive the expansion (fastavro ignores them when encoding).
        assert schema.schema["outpost.key"] == schema.key_field


def test_a_decimal_misfit_is_described_in_exact_digits():
    from agent.schemas import decimal_misfit
    assert decimal_misfit(Decimal("1E+16"), 18, 2) == \
        "10000000000000000 does not fit decimal(18,2): 17 integer digits (at most 16)"
    assert decimal_misfit(Decimal("10000000000000000.001"), 18, 2) == \
        "10000000000000000.001 does not fit decimal(18,2): 17 integer digits (at most 16) and 3 decimal places (at most 2)"
    assert decimal_misfit(Decimal("1234567890123456789012345678901.55"), 18, 2).startswith(
        "1234567890123456789012345678901.55 does not fit"), "never rounded to the context's 28 digits"
    assert decimal_misfit(Decimal("100.0000"), 18, 2) is None and decimal_misfit(Decimal("0.00"), 18, 2) is None


def test_the_decimal_check_accepts_exactly_what_decimal_misfit_accepts():
    """``check`` (every inbound event, twice) decides the usual amount without
    ``decimal_misfit``'s digit-by-digit reasoning: the shortcut must never decide otherwise."""
    from hypothesis import given, settings, strategies as st

    from agent.schemas import decimal_misfit
    schema = SchemaCatalog.load().entity("Invoice")
    values = st.decimals(allow_nan=True, allow_infinity=True) | st.builds(
        lambda n, e: Decimal(n).scaleb(e), st.integers(-10**22, 10**22), st.integers(-8, 8))

    @settings(max_examples=3000, deadline=None)
    @given(values, st.integers(1, 38), st.integers(0, 10))
    def same(value, precision, scale):
        if scale > precision:
            return
        try:
            checked = schema._check_decimal("after", "amount", value, precision, scale)
        except TerminalError:
            assert decimal_misfit(value, precision, scale) is not None
        else:
            assert decimal_misfit(value, precision, scale) is None
            assert checked == value and checked.as_tuple().exponent >= -scale
    same()
