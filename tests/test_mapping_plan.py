"""The function written per mapping (agent.mapping_plan) against the reference walk of the
same steps (tests/support/mapping_reference.py): same payload, same problems in the same
order, or the same exception, over generated mappings of every canonical entity and
generated rows. Pure code."""
import datetime as dt
from decimal import Decimal

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from agent.config import MappingConfig
from agent.mapping import EntityMapping
from agent.schemas import SchemaCatalog
from tests.support.mapping_reference import walk

CATALOG = SchemaCatalog.load()
LOOKUPS = {"legal_entity": {"01": "US01", "02": "UK01"}, "tax_jurisdiction": {"NY": "US-NY", "LDN": "GB"},
           "service_line": {"ADV": "ADVISORY", "0": None}, "numbers": {"1": 10, "2": Decimal("2.50")}}
# column names a legacy schema really has, and some that would break naive code generation
COLUMNS = ["A", "B", "cust no", "Discount %", 'x"); import os; ("', "{n0}", "\\", "line\nbreak"]
TEXTS = ["", "  ", "01", "02", "NY", "LDN", "ADV", "0", "usd", "USD", "EUR", "XXQ", "x", "-5", "1000.50",
         "1,000", "12", "2026-11-27", "2026-11-27T10:00:00Z", "2026-02-30", "yes", "off", "maybe", " C-1 ",
         'it"s', "{value}", "\x00"]
VALUES = st.one_of(
    st.none(), st.sampled_from(TEXTS), st.text(max_size=6), st.booleans(),
    st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True), st.decimals(places=2, min_value=-10**6, max_value=10**6),
    st.datetimes(min_value=dt.datetime(1900, 1, 1)),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), timezones=st.just(dt.timezone(dt.timedelta(hours=-5)))),
    st.dates())
EXPRESSIONS = ["A", "concat(A, B)", "decimal(A)", "lookup('legal_entity', A)", "lookup('numbers', B, 0)",
               "coalesce(A, B)", "A + B", "upper(B)", "col('cust no')", "date(A)"]
CONVERSIONS = ["strip", "upper", "lower", "blank_to_none", "str"]


@st.composite
def field_rules(draw):
    origin = draw(st.sampled_from(["column", "const", "expr"]))
    rule = {"column": draw(st.sampled_from(COLUMNS))} if origin == "column" else \
        {"const": draw(VALUES)} if origin == "const" else {"expr": draw(st.sampled_from(EXPRESSIONS))}
    if draw(st.booleans()):
        rule["convert"] = draw(st.lists(st.sampled_from(CONVERSIONS), max_size=2))
    if draw(st.integers(0, 3)) == 0:
        rule["missing"] = draw(st.lists(st.sampled_from(["0", "", "x", 0, 12]), min_size=1, max_size=2))
    if draw(st.integers(0, 2)) == 0:
        rule["lookup"] = draw(st.sampled_from(sorted(LOOKUPS)))
    if draw(st.integers(0, 3)) == 0:
        rule["default"] = draw(VALUES)
    return rule


@st.composite
def mappings(draw):
    schema = CATALOG.entity(draw(st.sampled_from(CATALOG.names())))
    fields = {}
    for spec in schema.fields:
        if draw(st.integers(0, 4)) > 0:
            fields[spec.name] = draw(field_rules())
    config = MappingConfig.model_validate({"entity": schema.entity, "fields": fields,
                                           "source_timezone": draw(st.sampled_from(["UTC", "America/New_York"]))})
    return EntityMapping("generated", config, schema, LOOKUPS)


def _outcome(apply, row):
    try:
        return apply(row)
    except Exception as exc:     # the walk's exceptions (a rule gate on an odd value) must match too
        return type(exc), str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mappings(), st.lists(st.dictionaries(st.sampled_from(COLUMNS), VALUES), min_size=1, max_size=4))
def test_the_generated_function_gives_what_the_walk_of_its_steps_gives(mapping, rows):
    note(mapping.describe())
    for row in rows:
        # compared as text: a NaN computed twice is two unequal objects
        assert repr(_outcome(mapping.apply, row)) == repr(_outcome(lambda r: walk(mapping, r), row))


def test_no_config_text_reaches_the_generated_code():
    """Names, columns and constants that are code in disguise are only data to it."""
    nasty = 'x"); import os; os._exit(3); ("'
    config = MappingConfig.model_validate({"entity": "Customer", "fields": {
        "customer_number": nasty, "name": {"const": nasty + "\n"}, "legal_entity": {"const": "US01"},
        "currency": {"column": "{c0}", "default": "USD"}, "tax_jurisdiction": {"const": "GB"}}})
    mapping = EntityMapping("customer", config, CATALOG.entity("Customer"), LOOKUPS)
    payload, problems = mapping.apply({nasty: "C-1"})
    assert problems == []
    assert payload["customer_number"] == "C-1" and payload["name"] == nasty + "\n" and payload["currency"] == "USD"


def test_a_lookup_refreshed_after_compiling_is_used_by_the_next_row():
    from agent.lookups import LookupTable
    table = LookupTable("legal_entity", {"01": "US01"})
    config = MappingConfig.model_validate({"entity": "Customer", "fields": {
        "customer_number": "NO", "name": "NO", "legal_entity": {"column": "CO", "lookup": "legal_entity"},
        "currency": {"const": "USD"}, "tax_jurisdiction": {"const": "GB"}}})
    mapping = EntityMapping("customer", config, CATALOG.entity("Customer"), {"legal_entity": table})
    assert mapping.apply({"NO": "C-1", "CO": "03"})[1][0].rule == "legal_entity"
    table.codes = {"01": "US01", "03": "DE01"}          # what a SQL lookup's refresh does
    payload, problems = mapping.apply({"NO": "C-1", "CO": "03"})
    assert problems == [] and payload["legal_entity"] == "DE01"
