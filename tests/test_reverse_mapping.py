"""Reverse mapping (canonical -> local), pure: values, lookups, conversions, conflicts, fit."""
import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from adapters.sql_apply.reverse_mapping import ApplyRejected, Column, TablePlan, fit, reverse_lookups, side_by_side
from adapters.sql_apply.spec import SinkOptions, TableTarget
from tests.support.inbound import LOOKUPS, REVERSE, customer

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
UTC = ZoneInfo("UTC")


def plan(**changes) -> TablePlan:
    target = {**REVERSE["Customer"]["tables"][0], **changes}
    lookups, problems = reverse_lookups(LOOKUPS)
    assert problems == []
    return TablePlan(TableTarget.model_validate(target), "Customer", lookups)


def test_values_reverse_lookups_and_keep_decimals():
    row = plan().values(customer("C-1", limit="12.30"), NOW)
    assert row == {"cust_no": "C-1", "cust_name": "Acme", "company": "01", "curr": "USD", "tax_code": "NY",
                   "credit_lim": Decimal("12.30"), "status": "active", "updated_at": customer("C-1")["updated_at"]}


def test_unknown_code_is_rejected_with_the_field_and_column():
    with pytest.raises(ApplyRejected, match=r"unknown legal_entity code 'DE01' for column company"):
        plan().values(customer("C-1", company="DE01"), NOW)


def test_ambiguous_reverse_lookup_is_reported():
    _, problems = reverse_lookups({"legal_entity": {"01": "US01", "1": "US01"}})
    assert problems and "US01" in problems[0]


def test_explicit_map_constants_conversions_and_now():
    columns = {"cust_no": {"field": "customer_number", "convert": ["lower"]},
               "company": {"field": "legal_entity", "map": {"US01": "X1"}},
               "source_flag": {"const": "CRM"}, "touched": {"now": True}, "cust_name": {"field": "name",
                                                                                     "convert": "upper"}}
    row = plan(columns=columns, conflict={"mode": "none"}, delete={"policy": "ignore"}).values(customer("C-1"), NOW)
    assert row == {"cust_no": "c-1", "company": "X1", "source_flag": "CRM", "touched": NOW, "cust_name": "ACME"}


def test_column_rule_needs_exactly_one_origin_and_known_lookups():
    with pytest.raises(ValueError, match="exactly one"):
        SinkOptions.model_validate({"url": "sqlite://", "entities": {"Customer": {"tables": [
            {"table": "t", "key": "a", "columns": {"a": {"field": "customer_number", "const": 1}}}]}}})
    with pytest.raises(ValueError, match="not in this sink's 'lookups'"):
        SinkOptions.model_validate({"url": "sqlite://", "entities": {"Customer": {"tables": [
            {"table": "t", "key": "a", "columns": {"a": {"field": "customer_number", "lookup": "nope"}}}]}}})


def test_timestamp_conflict_when_the_local_row_is_newer_than_the_base():
    p = plan()
    base = customer("C-1")
    local = {"updated_at": (base["updated_at"] + dt.timedelta(minutes=5)).replace(tzinfo=None)}   # naive UTC
    assert "later than the event's base" in p.conflict(local, base, NOW)
    assert p.conflict({"updated_at": base["updated_at"]}, base, NOW) is None
    assert p.conflict(None, base, NOW) is None, "no local row: nothing to conflict with"
    assert p.conflict(local, None, NOW) is None, "no before image (create): applied as an upsert"


def test_version_and_before_image_conflicts():
    version = plan(conflict={"mode": "version", "column": "credit_lim", "field": "credit_limit"})
    assert version.conflict({"credit_lim": 100}, customer("C-1"), NOW) is None      # 100 == 100.00
    assert "credit_lim=" in version.conflict({"credit_lim": Decimal("7")}, customer("C-1"), NOW)
    image = plan(conflict={"mode": "before_image"})
    local = image.values(customer("C-1"), NOW)
    assert image.conflict(local, customer("C-1"), NOW) is None
    assert "cust_name" in image.conflict({**local, "cust_name": "Changed locally"}, customer("C-1"), NOW)


def test_fit_rejects_what_the_column_cannot_hold():
    text = Column("cust_name", "string", length=10)
    assert fit(text, "'; DROP TABLE x; --"[:10], UTC) == "'; DROP TA"
    with pytest.raises(ApplyRejected, match="at most 10 characters"):
        fit(text, "x" * 11, UTC)
    with pytest.raises(ApplyRejected, match="never floats"):
        fit(Column("amount", "numeric", precision=18, scale=2), 1.5, UTC)
    with pytest.raises(ApplyRejected, match="does not fit"):
        fit(Column("amount", "numeric", precision=5, scale=2), Decimal("1234.5"), UTC)
    with pytest.raises(ApplyRejected, match="whole numbers"):
        fit(Column("n", "integer"), "12; DELETE", UTC)
    with pytest.raises(ApplyRejected, match="NOT NULL"):
        fit(Column("n", "integer", nullable=False), None, UTC)
    berlin = fit(Column("ts", "datetime"), NOW, ZoneInfo("Europe/Berlin"))
    assert berlin == dt.datetime(2026, 11, 27, 13, 0) and berlin.tzinfo is None


def test_side_by_side_shows_the_local_row_and_both_images_with_local_and_canonical_codes():
    lines = side_by_side(plan(), {"cust_no": "C-1", "company": "01", "cust_name": "Local"},
                         {"before": customer("C-1", "A"), "after": customer("C-1", "B", company="UK01")}, NOW)
    by_column = {line["column"]: line for line in lines}
    assert by_column["cust_name"] == {"column": "cust_name", "field": "name", "local": "Local", "before": "A",
                                      "after": "B", "before_canonical": "A", "after_canonical": "B"}
    assert by_column["company"] == {"column": "company", "field": "legal_entity", "local": "01", "before": "01",
                                    "after": "02", "before_canonical": "US01", "after_canonical": "UK01"}
    assert by_column["credit_lim"]["after"] == "100.00", "amounts as exact text"


@pytest.mark.parametrize("value", ["SOC-17", "1.5", Decimal("1.5"), True])
def test_int_conversion_refuses_what_is_not_a_whole_number(value):
    rules = {**REVERSE["Customer"]["tables"][0]["columns"], "soc_no": {"field": "status", "convert": ["int"]}}
    with pytest.raises(ApplyRejected, match=r"column soc_no of erp_customer \(field status\): convert int failed"):
        plan(columns=rules).values(customer("C-1", status=value), NOW)
    assert plan(columns=rules).values(customer("C-1", status=" 17 "), NOW)["soc_no"] == 17


def test_a_double_column_takes_exact_decimals_it_can_give_back():
    double = Column("credit_lim", "float")
    assert fit(double, Decimal("2040563.57"), UTC) == Decimal("2040563.57")
    with pytest.raises(ApplyRejected, match=r"about 15 significant digits\); 1234567890123456.78 would be stored as "
                                            r"1234567890123456.8"):
        fit(double, Decimal("1234567890123456.78"), UTC)
    with pytest.raises(ApplyRejected, match="never floats"):
        fit(double, 12.5, UTC)


def test_money_is_compared_at_the_schema_scale():
    from adapters.sql_apply.reverse_mapping import comparable
    assert comparable(Decimal("2040563.5700000001"), UTC, 2) == comparable(Decimal("2040563.57"), UTC, 2)
    assert comparable(0.30000000000000004, UTC, 2) == comparable(Decimal("0.30"), UTC, 2)
    assert comparable(Decimal("2040563.571"), UTC, 3) != comparable(Decimal("2040563.57"), UTC, 3)


def test_an_amount_of_more_than_28_digits_fits_a_wide_numeric_column_and_compares_exactly():
    """NUMERIC(38,4) holds 34 integer digits; Python's default decimal context only 28, so the
    fit used to refuse such an amount as not fitting, and the conflict check's normal form
    rounded two different amounts to one."""
    from adapters.sql_apply.reverse_mapping import comparable
    wide = Column("amount", "numeric", precision=38, scale=4)
    amount = Decimal("1234567890123456789012345678.1234")
    assert fit(wide, amount, UTC) == amount and str(fit(wide, amount, UTC)) == str(amount)
    assert str(fit(wide, Decimal("1234567890123456789012345678.12"), UTC)) == "1234567890123456789012345678.1200"
    with pytest.raises(ApplyRejected, match="numeric"):
        fit(wide, Decimal("1" * 35), UTC)
    assert comparable(amount, UTC, 4) != comparable(amount + Decimal("0.0001"), UTC, 4)


def test_a_numeric_column_wider_than_80_digits_takes_an_amount():
    """PostgreSQL allows NUMERIC(1000, s); the fit's table of limits stopped at 80 digits and
    raised IndexError for every value written to such a column."""
    assert str(fit(Column("amount", "numeric", precision=100, scale=2), Decimal("12.50"), UTC)) == "12.50"
    with pytest.raises(ApplyRejected, match="numeric"):
        fit(Column("amount", "numeric", precision=100, scale=2), Decimal("1.001"), UTC)
