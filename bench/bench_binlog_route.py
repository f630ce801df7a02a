#!/usr/bin/env python
"""Benchmark of the binlog route: MariaDB binlog -> binlog source -> SQLite queue -> kafka sink -> tansu.

Run:  .venv/bin/python bench/bench_binlog_route.py [--rows 100000] [--rate 500] [--seconds 10]

Everything is real: a PRIVATE MariaDB 10.11 (temp datadir, log_bin, ROW, FULL, so no other
traffic is in its binlog), tansu with memory storage, the SQLite WAL queue (synchronous=FULL),
confluent-kafka idempotent producer; the schema registry is the HTTP double of
tests/support/registry_double.py. Each agent run is a child process (fresh state dir and
topic), so its peak RSS (ru_maxrss) is the agent's alone. What the numbers mean:

e2e events/s      N rows are committed (1k-row transactions, or one N-row transaction; written
                  as single-row INSERT statements "single", or 1000-row INSERTs "multi")
                  after the route recorded its start position; then, as `outpost run` does,
                  Agent(separate_delivery=True).start(capture=False) spawns the delivery
                  process; once it is up, the child's main thread calls run_pass() until all
                  N are captured; timer = first run_pass .. queue empty (every event acked by
                  tansu and settled). The fill is over before the timer starts.
agent CPU         user+sys (psutil) of the capture process (this child, plus multiprocessing's
                  resource tracker) and of the delivery process over the timed window, per
                  event; the main thread's own CPU while it only waits for the queue to empty
                  is harness and left out. Peak RSS: VmHWM of each process.
capture events/s  second child without delivery: run_pass() until N are in the queue
                  (binlog read + decode, mapping, Avro encode, queue commits with checkpoint):
                  the capture ceiling the e2e figure stands beside.
idle CPU          the latency child's process CPU over 5 s with nothing to capture.
latency           Agent.start() with its scheduler (route every 0.2 s), delivery as threads in
                  the same process (the ack spy wraps the sink's producer); this process commits
                  single-row INSERTs (autocommit) at --rate for --seconds. commit = client
                  clock after COMMIT; queue = when commit_capture() returned with that key
                  (agent process, same host clock); ack = the producer's delivery callback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Where the delivery process is started with "spawn" (Windows, frozen builds) it runs this file
# again as __mp_main__: it loads nothing of the harness.
if __name__ != "__mp_main__":
    from agent_procs import AgentMeter, peak_rss, thread_cpu_s, wait_delivery_ready  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_agent(a, every="1h", separate=False):
    from agent import config as config_module
    from agent.runtime import Agent
    from tests.support.binlog import binlog_config
    fabric = {"kafka": {"bootstrap.servers": a.bootstrap}, "schema_registry": {"url": a.registry},
              "topic_template": f"b{uuid.uuid4().hex[:8]}" + ".{entity}", "create_topics": True,
              "topic_partitions": 3}
    doc = binlog_config(a.state, a.url, sink={"type": "kafka", "delivery_timeout_s": 60}, fabric=fabric,
                        snapshot="none", every=every, capture={"table": a.table})
    agent = Agent(config_module.parse(doc), drain_timeout=60, separate_delivery=separate)
    agent.build()
    return agent


def fill(a, one_transaction: bool, multi_row: bool) -> float:
    """Single-row INSERT statements (as ORMs write) or 1000-row INSERT statements (bulk)."""
    from tests.support.binlog import INSERT_CUSTOMER, execute
    sql = (f"INSERT INTO {a.table} (cust_no, cust_name, company, curr, tax_code, credit_lim) VALUES (%s,%s,%s,%s,%s,%s)"
           if multi_row else INSERT_CUSTOMER.replace("erp_customer", a.table))
    extra = ("01", "USD", "NY") if multi_row else ()
    t0 = time.perf_counter()
    step = a.rows if one_transaction else 1000
    for start in range(0, a.rows, step):
        execute(a.url, many=(sql, [(f"C-{n:07d}", f"Customer number {n}", *extra, n % 100000 * 1.25 + 0.01)
                                   for n in range(start, start + step)]))
    return time.perf_counter() - t0


def child(a) -> dict:
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    e2e = a.child.startswith("e2e")
    agent = make_agent(a, every="0.2s" if a.child == "latency" else "1h", separate=e2e)
    agent.run_pass()                       # records the start position (snapshot: none)
    out = {"rss_after_build_mb": rss_mb()}
    if a.child == "latency":
        acked, queued = {}, {}
        sink = agent.deliveries["out"].sink
        new_producer = sink._new_producer
        from latency_probes import AckSpy   # same folder: wraps the producer's callbacks
        sink._new_producer = lambda: AckSpy(new_producer(), acked)
        commit = agent.queue.commit_capture

        def commit_spy(route, events, *rest, **kw):
            added = commit(route, events, *rest, **kw)
            now = time.time()
            queued.update((e["key"], now) for e in events)
            return added
        agent.queue.commit_capture = commit_spy
        agent.start()
        time.sleep(1.0)
        cpu0, t0 = os.times(), time.monotonic()
        time.sleep(5.0)                    # idle: heartbeats every 0.05 s, a pass every 0.5 s
        cpu1 = os.times()
        out["idle_cpu_pct"] = 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (time.monotonic() - t0)
        print("READY", flush=True)
        deadline = time.monotonic() + a.seconds + 120
        while len(acked) < a.expect and time.monotonic() < deadline:
            time.sleep(0.1)
        agent.stop()
        return {**out, "acked": acked, "queued": queued, "rss_peak_mb": rss_mb()}
    out["fill_s"] = fill(a, "-big" in a.child, a.child.endswith("multi"))
    if e2e:
        agent.start(capture=False)         # the delivery process starts; capture stays here
        out["delivery_ready_s"] = wait_delivery_ready(agent)
    main = threading.main_thread().native_id
    meter = AgentMeter(agent).start()
    t0 = time.perf_counter()
    captured = 0
    while captured < a.rows:
        captured += agent.run_pass()
    out["capture_s"] = time.perf_counter() - t0
    waiting = thread_cpu_s([main])
    if e2e:
        while agent.queue.depth():
            time.sleep(0.01)
    out["total_s"] = time.perf_counter() - t0
    out.update(meter.read())
    out["harness_cpu_s"] = thread_cpu_s([main]) - waiting     # the main thread's waiting for the drain
    out["capture_cpu_s"] -= out["harness_cpu_s"]
    out["cpu_s"] -= out["harness_cpu_s"]
    out["captured"] = captured
    rss = peak_rss(agent)
    agent.stop()
    out.update(rss_peak_mb=rss_mb(), delivery_rss_peak_mb=rss["delivery_mb"], tracker_rss_peak_mb=rss["tracker_mb"])
    return out


def run_child(a, mode, work, **extra):
    out = os.path.join(work, f"{mode}-{uuid.uuid4().hex[:6]}.json")
    table = f"t{uuid.uuid4().hex[:8]}"
    from tests.support.binlog import CUSTOMER_DDL, execute
    execute(a.url, CUSTOMER_DDL.replace("erp_customer", table))
    args = [sys.executable, __file__, "--child", mode, "--out", out, "--url", a.url, "--table", table,
            "--bootstrap", a.bootstrap, "--registry", a.registry, "--rows", str(a.rows),
            "--state", tempfile.mkdtemp(prefix=f"{mode}-", dir=work)]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    return proc, out, table


def latency(a, work) -> dict:
    import pymysql
    total = int(a.rate * a.seconds)
    proc, out, table = run_child(a, "latency", work, seconds=a.seconds, expect=total)
    assert proc.stdout.readline().strip() == "READY"
    conn = pymysql.connect(host="127.0.0.1", port=a.port, user="root", database="bench", autocommit=True)
    commits = {}
    start = time.time()
    with conn.cursor() as cur:
        for i in range(total):
            delay = start + i / a.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            key = f"L-{i:07d}"
            cur.execute(f"INSERT INTO {table} (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                        " VALUES (%s, 'Latency probe', '01', 'USD', 'NY', 10.00)", (key,))
            commits[key] = time.time()
    achieved = total / (time.time() - start)
    conn.close()
    proc.wait()
    res = json.load(open(out))
    stats = {"rate": achieved, "rows": total, "rss_peak_mb": res["rss_peak_mb"], "idle_cpu_pct": res["idle_cpu_pct"]}
    for what in ("queued", "acked"):
        lat = sorted(res[what][k] - c for k, c in commits.items() if k in res[what])
        stats[what] = {"n": len(lat)}
        if lat:
            stats[what].update(p50=lat[len(lat) // 2] * 1000, p99=lat[int(len(lat) * 0.99) - 1] * 1000,
                               max=lat[-1] * 1000)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--child"), ap.add_argument("--out"), ap.add_argument("--url"), ap.add_argument("--table")
    ap.add_argument("--bootstrap"), ap.add_argument("--registry"), ap.add_argument("--state")
    ap.add_argument("--expect", type=int, default=0)
    a = ap.parse_args()
    if a.child:
        json.dump(child(a), open(a.out, "w"))
        return
    from tests.support.binlog import PrivateMariaDB
    from tests.support.registry_double import RegistryDouble
    from tests.support.services import Broker
    work = tempfile.mkdtemp(prefix="bench-binlog-")
    db = PrivateMariaDB(Path(work) / "mariadb")
    broker = Broker(Path(work) / "tansu.log")
    registry = RegistryDouble()
    a.url, a.port, a.bootstrap, a.registry = db.database("bench"), db.port, broker.bootstrap, registry.url
    results = {}
    try:
        for mode in ("e2e-1k-single", "capture-1k-single", "e2e-1k-multi", "capture-1k-multi", "e2e-big-multi",
                     "capture-big-multi"):
            proc, out, _ = run_child(a, mode, work)
            assert proc.wait() == 0, mode
            results[mode] = json.load(open(out))
            r = results[mode]
            us = lambda seconds: seconds / a.rows * 1e6  # noqa: E731
            print(f"{mode}: {a.rows / r['total_s']:,.0f} events/s ({r['total_s']:.2f} s, capture {r['capture_s']:.2f} s,"
                  f" fill {r['fill_s']:.1f} s); agent CPU {us(r['cpu_s']):.1f} us/event (capture "
                  f"{us(r['capture_cpu_s']):.1f}, delivery {us(r['delivery_cpu_s']):.1f}; harness left out "
                  f"{r['harness_cpu_s']:.2f} s); peak RSS capture {r['rss_peak_mb']:.0f} MB, delivery "
                  f"{r['delivery_rss_peak_mb']:.0f} MB, tracker {r['tracker_rss_peak_mb']:.0f} MB; "
                  f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        results["latency"] = latency(a, work)
        print("latency:", json.dumps(results["latency"]), flush=True)
    finally:
        broker.stop()
        registry.stop()
        db.destroy()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
