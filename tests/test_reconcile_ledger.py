"""The published-side ledger moves with the queue's own settle transaction, exactly."""
from __future__ import annotations

import sqlite3
from decimal import Decimal
from zoneinfo import ZoneInfo

from agent import ledger, slo
from agent.contracts import DeliveryReport
from agent.queue import DurableQueue

DAY1, DAY2 = 1764590400.0, 1764676800.0      # 2025-12-01 12:00 and 2025-12-02 12:00 UTC
FACTS = ledger.Facts(ZoneInfo("UTC"), ("net_amount",))


def event(n: int, key: str, net, at: float, deleted: bool = False) -> dict:
    after = None if deleted else {"net_amount": Decimal(net)}
    return {"event_id": f"ev-{n}", "route": "invoices", "sink": "fabric", "entity": "Invoice", "key": key,
            "operation": "delete" if deleted else "update", "schema_fingerprint": "f", "body": b"x",
            "correlation_id": f"ev-{n}", "occurred_at": at,
            ledger.LEDGER_KEY: FACTS.of(key, after, at, f'["{key}"]@{n}', at)}


def test_acknowledged_versions_move_keys_between_windows_and_sums_stay_exact(tmp_path):
    q = DurableQueue(tmp_path)
    q.commit_capture("invoices", [event(1, "A", "0.10", DAY1), event(2, "B", "0.20", DAY1),
                                  event(3, "C", "7.00", DAY1)], [], {"c": 1}, filtered=[("F", "2025-12-01")])
    batch = q.peek("fabric", 10)
    q.settle("fabric", batch, DeliveryReport(delivered=["ev-1", "ev-2"], rejected={"ev-3": "refused"}))
    conn = sqlite3.connect(tmp_path / "queue.db")
    assert ledger.published_totals(conn, "invoices", "2025-12-01") == (2, {"net_amount": Decimal("0.30")})
    # A changes the next day: it leaves day 1; B is deleted
    q.commit_capture("invoices", [event(4, "A", "1.05", DAY2), event(5, "B", None, DAY2, deleted=True)], [], None)
    q.settle("fabric", q.peek("fabric", 10), DeliveryReport(delivered=["ev-4", "ev-5"]))
    assert ledger.published_totals(conn, "invoices", "2025-12-01") == (0, {"net_amount": Decimal("0.00")})
    assert ledger.published_totals(conn, "invoices", "2025-12-02") == (1, {"net_amount": Decimal("1.05")})
    assert ledger.published_totals(conn, "invoices", None)[0] == 1
    assert set(ledger.published_keys(conn, "invoices", None)) == {"A"}
    assert ledger.filtered_keys(conn, "invoices", "2025-12-01") == {"F"}
    assert ledger.window_of_keys(conn, "invoices", ["A", "B", "C"]) == {"A": "2025-12-02"}
    # a capture that repeats a delivered id adds no pending facts (nothing would ever settle them)
    q.commit_capture("invoices", [event(4, "A", "1.05", DAY2)], [], None)
    assert conn.execute("SELECT key FROM ledger_pending").fetchall() == [("C",)]    # parked, kept for a retry
    bins = slo.histograms(conn)[("invoices", "Invoice")]
    assert sum(bins[:len(slo.BUCKETS)]) == 4


def test_objective_judgement_is_conservative_and_counts_the_budget():
    bins = [0] * len(slo.BUCKETS) + [0.0]
    bins[slo.BUCKETS.index(60)] = 98        # 98 on time (<= 60 s)
    bins[slo.BUCKETS.index(120)] = 2        # 2 late
    standing = slo.judge(bins, within=60, target=0.99)
    assert standing["attained"] == 0.98 and standing["met"] is False
    assert standing["error_budget_left"] == -1.0       # 1 late allowed, 2 happened: overspent by one budget
    assert slo.judge(bins, within=90, target=0.98)["on_time"] == 98     # 90 s is not a bound: 60 s is used
    assert slo.judge([0] * (len(slo.BUCKETS) + 1), 60, 0.99)["error_budget_left"] is None


def test_the_source_load_bound_spaces_queries():
    from agent.reconcile_deletes import Pacer
    now, slept = [100.0], []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds
    pace = Pacer(4.0, sleep=sleep, clock=lambda: now[0])
    for _ in range(5):
        pace()
    assert slept == [0.25] * 4          # 4 queries a second at most: the first goes at once


def test_an_inbound_route_is_judged_on_the_entities_it_applied():
    from types import SimpleNamespace
    from agent.metrics import business_objective
    from agent.reconcile_config import Objective
    bins = [0] * len(slo.BUCKETS) + [12.0]
    bins[slo.BUCKETS.index(5)] = 10        # 10 local commits within 5 s of the change at the fabric's source
    cfg = SimpleNamespace(objectives={"Project": Objective(within="5s", target=0.9)})
    standing = business_objective(cfg, {"change_to_ack_bins": {"Project": bins}}, None)
    assert (standing["entity"], standing["confirmed"], standing["met"], standing["error_budget_left"]) == \
        ("Project", 10, True, 1.0)
    assert business_objective(cfg, {"change_to_ack_bins": {"Invoice": bins}}, None) is None


def test_a_discarded_record_explains_its_key():
    from agent.reconcile import Evidence, explain
    explanations, unexplained = explain(["A", "B"], Evidence(discarded={"A": [9]}))
    assert explanations == [{"cause": "discarded", "key_count": 1, "keys": ["A"], "exception_ids": [9]}]
    assert unexplained == ["B"]


def test_sums_of_amounts_wider_than_28_digits_stay_exact():
    """Python's default decimal context rounds a sum to 28 digits: the ledger's totals must not."""
    from agent.ledger import add_sums
    wide = Decimal("123456789012345678901234567890.12")
    total = add_sums(add_sums({}, {"net": wide}), {"net": Decimal("0.01")})
    assert str(total["net"]) == "123456789012345678901234567890.13"
    assert str(add_sums(total, {"net": wide}, sign=-1)["net"]) == "0.01"


def test_a_reconciliation_of_sums_wider_than_28_digits_differs_and_renders_exactly():
    """decimal(38,6) sums hold 32 integer digits; Python's default context rounds their
    difference to 28 digits and cannot quantise them for the table at all."""
    import datetime as dt

    from agent.reconcile import Side, Window, render, result
    source = Side(2, {"net": Decimal("123456789012345678901234567890.02")})
    published = Side(1, {"net": Decimal("123456789012345678901234567890.01")})
    out = result("r", "Invoice", Window("all"), source, published, [], [], [], dt.datetime.now(dt.timezone.utc))
    assert str(out["sum_differences"]["net"]) == "0.010000"
    assert "123456789012345678901234567890.02" in render(out)
