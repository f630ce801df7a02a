#!/usr/bin/env python
"""The quota counts only what waits: 5M events through a queue with a 64 MiB quota.

Run:  .venv/bin/python bench/bench_quota.py [--events 5000000] [--quota 64MiB]

A real DurableQueue (SQLite WAL, synchronous=FULL) in a temporary state directory.
Capture commits batches of 2,000 events of 240-byte bodies; a delivery step settles
them as delivered right away, so the queue is empty after every cycle while the
remembered ids (agent.seen_ids) grow to millions (they count against nothing). Every 50
cycles the queue prunes (as the agent's timer does) with a short retention, so the
remembered ids stay bounded as well. The run fails if the quota ever says "over" while
nothing waits. Reported: cycles, pauses with an empty queue (must be 0), the file size
and the CPU time per event (user+sys of this process).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.contracts import DeliveryReport  # noqa: E402
from agent.events import event_id  # noqa: E402
from agent.queue import DurableQueue  # noqa: E402
from agent.units import parse_size  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--quota", default="64MiB")
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="outpost-quota-"))
    queue = DurableQueue(state, max_bytes=parse_size(a.quota), dedup_retention=60.0)
    body = os.urandom(240)
    paused_empty = cycles = 0
    started, cpu0 = time.monotonic(), cpu()
    for start in range(0, a.events, a.batch):
        if queue.over_quota() and queue.depth() == 0:
            paused_empty += 1
        events = [{"event_id": event_id("bench", "t", str(n)), "route": "r", "sink": "s", "entity": "Customer",
                   "key": f"C-{n}", "operation": "update", "schema_fingerprint": "fp", "body": body,
                   "correlation_id": "c", "occurred_at": None} for n in range(start, start + a.batch)]
        queue.commit_capture("r", events, [], {"n": start})
        batch = queue.peek("s", a.batch)
        queue.settle("s", batch, DeliveryReport(delivered={e.event_id for e in batch}))
        cycles += 1
        if cycles % 50 == 0:
            queue.prune()
    wall, used = time.monotonic() - started, cpu() - cpu0
    delivered = queue._conn().execute("SELECT count(*) FROM seen_ids").fetchone()[0]
    print(f"events {a.events:,} in {cycles:,} cycles, quota {a.quota}: pauses with an empty queue: {paused_empty}")
    print(f"queue file {queue.used_bytes() / 2**20:.0f} MiB, delivered ids kept {delivered:,}, "
          f"pending bytes at the end {queue.pending_bytes()}")
    print(f"CPU {used / a.events * 1e6:.1f} us/event (commit + peek + settle), wall {wall / a.events * 1e6:.1f} us/event")
    queue.close()
    if paused_empty:
        raise SystemExit("the quota paused capture with nothing waiting")


if __name__ == "__main__":
    main()
