"""Business service objectives: how long a change takes from its source to the fabric's ack.

Per route and entity, a persisted histogram of "source change (``occurred_at``, else when it
was queued) -> sink confirmation" (broker ack for kafka outbound, local commit for
sql_apply inbound), counted in the settle transaction (``record``), so it survives restarts
and the delivery process and ``outpost status`` read the same numbers.

An objective (config ``objectives: {Invoice: {within: 60s, target: 0.99}}``) is judged on
those buckets: a change counts as on time only when the bucket it fell in ends at or below
``within`` (conservative when ``within`` is not a bucket bound). ``judge`` is pure.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable, Optional

__all__ = ["DDL", "BUCKETS", "record", "histograms", "judge"]

# seconds; the last bucket is +Inf. Bounds a person writes as objectives (1 min, 5 min, 1 h).
BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 4 * 3600, 24 * 3600, math.inf)

DDL = """
CREATE TABLE IF NOT EXISTS slo_bins (route TEXT NOT NULL, entity TEXT NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (route, entity, bucket)) WITHOUT ROWID;
"""


def record(db, events: Iterable, now: float) -> None:
    """Count confirmed events (``QueuedEvent``s) into their latency bucket."""
    bins: dict[tuple, list] = {}
    for e in events:
        if e.operation == "snapshot":
            continue    # a snapshot row's age is the row's, not the pipeline's: it would spend the budget
        latency = max(0.0, now - (e.occurred_at or e.enqueued_at))
        slot = bins.setdefault((e.route, e.entity, bisect.bisect_left(BUCKETS, latency)), [0, 0.0])
        slot[0] += 1
        slot[1] += latency
    if bins:
        db.executemany("INSERT INTO slo_bins VALUES (?,?,?,?,?) ON CONFLICT(route, entity, bucket) DO UPDATE"
                       " SET count=count+excluded.count, seconds=seconds+excluded.seconds",
                       [(*k, v[0], v[1]) for k, v in bins.items()])


def histograms(conn) -> dict[tuple[str, str], list[int]]:
    """(route, entity) -> count per bucket (not cumulative), plus the sum of seconds as the last item."""
    result: dict[tuple[str, str], list] = {}
    for route, entity, bucket, count, seconds in conn.execute("SELECT route, entity, bucket, count, seconds"
                                                               " FROM slo_bins"):
        bins = result.setdefault((route, entity), [0] * len(BUCKETS) + [0.0])
        bins[bucket] += count
        bins[-1] += seconds
    return result


def judge(bins: list, within: float, target: float) -> dict:
    """The objective's standing: share of changes on time, and the error budget left
    (1.0 = untouched, 0 = spent, negative = overspent); None before anything was confirmed."""
    counts = bins[:len(BUCKETS)]
    total = sum(counts)
    on_time = sum(c for bound, c in zip(BUCKETS, counts) if bound <= within)
    allowed_late = (1 - target) * total
    late = total - on_time
    budget: Optional[float]
    if total == 0:
        budget = None
    elif allowed_late == 0:
        budget = 1.0 if late == 0 else -float(late)
    else:
        budget = round(1 - late / allowed_late, 6)
    return {"within_s": within, "target": target, "confirmed": total, "on_time": on_time,
            "attained": None if total == 0 else round(on_time / total, 6), "error_budget_left": budget,
            "met": None if total == 0 else on_time >= target * total}
