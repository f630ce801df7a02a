"""Latency probes shared by the route benchmarks: a wrapper that times each key's broker
ack in the agent process, and single-row inserts at a steady rate (polling, binlog and
Debezium benchmarks all measure commit -> ack the same way)."""
from __future__ import annotations

import time

__all__ = ["AckSpy", "paced_inserts"]


class AckSpy:
    """Wraps the sink's Producer: records when each key's delivery callback fired."""

    def __init__(self, producer, acked):
        self._p, self._acked = producer, acked

    def __getattr__(self, name):
        return getattr(self._p, name)

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        def cb(err, msg, k=key.decode()):
            if err is None:
                self._acked[k] = time.time()
            on_delivery(err, msg)
        self._p.produce(topic, value=value, key=key, headers=headers, on_delivery=cb)


def paced_inserts(conn, rate: float, total: int) -> tuple[dict, float]:
    """Single-row autocommit inserts at ``rate``/s: {key: commit time}, and the rate achieved."""
    commits = {}
    start = time.time()
    for i in range(total):
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        key = f"L-{i:07d}"
        conn.execute("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                     " VALUES (%s, 'Latency probe', '01', 'USD', 'NY', 10.00)", (key,))
        commits[key] = time.time()
    return commits, total / (time.time() - start)
