"""The Reconciliation entity: exact round trip, in the catalog and its BACKWARD checks."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from agent.schemas import SchemaCatalog

RESULT = {
    "reconciliation_id": "invoices/2026-12-01", "route": "invoices", "entity": "Invoice", "window": "2026-12-01",
    "window_start": datetime(2026, 12, 1, tzinfo=timezone.utc), "window_end": datetime(2026, 12, 2, tzinfo=timezone.utc),
    "up_to_position": None, "source_count": 3, "source_sums": {"net_amount": Decimal("-1000.10")},
    "published_count": 2, "published_sums": {"net_amount": Decimal("-1100.20")}, "count_difference": 1,
    "sum_differences": {"net_amount": Decimal("100.10")}, "differing_keys": ["INV-1"], "differing_key_count": 1,
    "explanations": [{"cause": "parked", "key_count": 1, "keys": ["INV-1"], "exception_ids": [7]}],
    "unexplained_key_count": 0, "tied_out": True, "ran_at": datetime(2026, 12, 2, 2, 0, 1, 5, tzinfo=timezone.utc),
}


def test_reconciliation_round_trips_exactly_and_is_checked_like_the_others():
    catalog = SchemaCatalog.load()
    assert "Reconciliation" in catalog.names()       # hence in `schemas check` and the kafka sink's registry check
    schema = catalog.entity("Reconciliation")
    event = {"metadata": {"event_id": "e", "correlation_id": "e", "causation_id": None,
                          "source": {"system": "outpost", "object": "invoices", "position": "2026-12-01"},
                          "operation": "SNAPSHOT", "occurred_at": None, "captured_at": RESULT["ran_at"],
                          "schema_version": schema.version, "version": None},
             "key": RESULT["reconciliation_id"], "before": None, "after": RESULT}
    decoded = schema.decode(schema.encode(event))["after"]
    assert decoded == RESULT
    assert str(decoded["source_sums"]["net_amount"]) == "-1000.100000"      # decimal(38,6): exact, never a float
    assert catalog.released("Reconciliation")["outpost.version"] == 1
    assert catalog.check_backward("Reconciliation") == []
    assert not [f for f in schema.fields if f.avro_type in ("float", "double")]
