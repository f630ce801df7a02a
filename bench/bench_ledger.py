#!/usr/bin/env python
"""What the reconciliation ledger costs the queue: CPU per event at capture and at settle.

Run:  .venv/bin/python bench/bench_ledger.py [--events 20000]

The real ``DurableQueue`` in a temporary state directory: ``commit_capture`` in batches of
2,000 events (300-byte bodies, 5,000 distinct keys, three money fields), then
``peek``/``settle`` until empty, with and without the ledger facts a route with
``reconcile`` attaches. Process CPU time (user+system) per event, two rounds each.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import ledger  # noqa: E402
from agent.contracts import DeliveryReport  # noqa: E402
from agent.queue import DurableQueue  # noqa: E402

FACTS = ledger.Facts(ZoneInfo("UTC"), ("net_amount", "tax_amount", "total_amount"))
AFTER = {"net_amount": Decimal("1.10"), "tax_amount": Decimal("0.21"), "total_amount": Decimal("1.31")}


def run(with_facts: bool, events: int, batch: int = 2000) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        queue = DurableQueue(Path(directory))
        began = time.process_time()
        for start in range(0, events, batch):
            rows = []
            for i in range(start, start + batch):
                row = {"event_id": f"ev-{i}", "route": "r", "sink": "s", "entity": "Invoice", "key": f"K{i % 5000}",
                       "operation": "update", "schema_fingerprint": "f", "body": b"x" * 300, "correlation_id": "c",
                       "occurred_at": 1764590400.0 + i}
                if with_facts:        # what the translator adds (its cost is in this figure)
                    row[ledger.LEDGER_KEY] = FACTS.of(row["key"], AFTER, row["occurred_at"], f"[{i}]@x", 0.0)
                rows.append(row)
            queue.commit_capture("r", rows, [], {"c": start})
        captured = time.process_time()
        while True:
            queued = queue.peek("s", batch)
            if not queued:
                break
            queue.settle("s", queued, DeliveryReport(delivered={e.event_id for e in queued}))
        settled = time.process_time()
        queue.close()
    return (captured - began) / events * 1e6, (settled - captured) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    events = parser.parse_args().events
    for _ in range(2):
        for with_facts in (False, True):
            capture, settle = run(with_facts, events)
            print(f"{'with' if with_facts else 'without'} ledger facts: capture {capture:.1f} µs/event, "
                  f"settle {settle:.1f} µs/event")


if __name__ == "__main__":
    main()
