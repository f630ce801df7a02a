#!/usr/bin/env python
"""Benchmark of the inbound route: tansu -> kafka source -> SQLite queue -> sql_apply -> PG / MariaDB.

Run:  .venv/bin/python bench/bench_inbound.py [--events 20000] [--targets postgres,mariadb]

Everything is real (tansu with memory storage, PostgreSQL 15 and MariaDB on this host,
SQLite WAL queue with synchronous=FULL, confluent-kafka consumer group) except the schema
registry: the HTTP double of tests/support/registry_double.py (one lookup per run).

e2e events/s     N canonical Customer events are in the topic (3 partitions) before the
                 timer: N/2 CREATEs of distinct keys, then an UPDATE of each with its before
                 image (so the conflict check reads the local rows FOR UPDATE). A child process
                 runs the agent as `outpost run` does: Agent(separate_delivery=True).start(),
                 the kafka source capturing into the queue in the child (its stream loop), the
                 sql_apply sink applying in the delivery process (source batch 2000, delivery
                 batch 2000); timer = first event in the local queue .. the route's
                 published_total reaches N (each settled after sql_apply committed the row
                 and its ledger entry in one local transaction; the parent then checks the
                 ledger holds N and the table N/2). The consumer-group join (~3 s on tansu)
                 is excluded and reported on its own, as is the delivery process's start.
consume-only /s  same window, until the queue had captured all N (the applier runs too).
apply-only /s    this process: SqlApplySink.write() over the same N events already encoded
                 (decode + reverse mapping + conflict prefetch with FOR UPDATE + upsert
                 executemany + ledger insert + commit), batches of 2000, fresh table.
The reverse mapping is tests/support/inbound.py's REVERSE (timestamp conflict detection).
cpu_us_per_event CPU time (user+sys, psutil) per event over the timed window: e2e, every agent
                 process (capture = the child without its main thread, which only watches the
                 queue's status; delivery = the delivery process; split given); apply-only,
                 this process, i.e. the sink alone: the ceiling. db_cpu_us_per_event is the
                 database server's processes over the same window (PostgreSQL: the backends
                 of the bench's database and the server's own processes, not other sessions'
                 backends, which on a shared server come and go). Peak RSS is each agent
                 process's VmHWM. The machine and the load average are printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
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
# again as __mp_main__: it loads nothing of the harness; the agent's child (--child) loads only the agent and psutil (see child_e2e).
if __name__ != "__mp_main__":
    import psutil  # noqa: E402
if __name__ == "__main__" and "--child" not in sys.argv:
    import sqlalchemy as sa  # noqa: E402

    from agent.contracts import AdapterContext  # noqa: E402
    from tests.support.inbound import (CATALOG, LOOKUPS, REVERSE, FabricProducer, create_local, customer,  # noqa: E402
                                       event, inbound_config, queued)
    from tests.support.registry_double import RegistryDouble  # noqa: E402
    from tests.support.services import Broker  # noqa: E402

SERVERS = {"postgres": ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", 'CREATE DATABASE "{n}"',
                        'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'),
           "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/", "CREATE DATABASE `{n}` CHARACTER SET utf8mb4",
                       "DROP DATABASE IF EXISTS `{n}`")}


class FreshDatabase:
    def __init__(self, target: str):
        server, self.create, self.drop = SERVERS[target]
        self.name = "outpost_bench_" + uuid.uuid4().hex[:8]
        self.admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.exec_driver_sql(self.create.format(n=self.name))
        self.url = sa.engine.make_url(server).set(database=self.name).render_as_string(hide_password=False)

    def close(self):
        with self.admin.connect() as conn:
            conn.exec_driver_sql(self.drop.format(n=self.name))
        self.admin.dispose()


DB_PROCESSES = {"postgres": ("postgres",), "mariadb": ("mariadbd", "mysqld")}


class CpuMeter:
    """CPU seconds (user+sys) of this process and of the database server's processes that
    work for this bench: on PostgreSQL the backends of the bench's database and the
    server's own processes (postmaster, WAL writer, checkpointer...), not the backends
    other sessions of the shared server have open on other databases. Per process, so one
    that exits inside the window (another session's backend) is not subtracted from the sum
    (it used to be: 3 us/event was once reported); one that starts inside counts whole."""

    def __init__(self, target: str, me: bool = True, database: str = ""):
        self.me = psutil.Process() if me else None
        self.names = DB_PROCESSES[target]
        self.database = database

    def _ours(self, proc) -> bool:
        if not self.database or self.names != DB_PROCESSES["postgres"]:
            return True
        title = " ".join(proc.cmdline())
        # a backend's title is "postgres: <cluster>: <user> <database> <client> <state>"
        backend = "(" in title or " [local]" in title or "autovacuum worker" in title
        return not backend or f" {self.database} " in f"{title} "

    def _db(self) -> dict:
        used = {}
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] in self.names:
                try:
                    if self._ours(proc):
                        used[proc.pid] = sum(proc.cpu_times()[:2])
                except psutil.Error:
                    pass
        return used

    def _mine(self) -> float:
        return sum(self.me.cpu_times()[:2]) if self.me else 0.0

    def start(self):
        self.t0 = (self._mine(), self._db())
        return self

    def per_event_us(self, n: int) -> dict:
        mine, end = self._mine() - self.t0[0], self._db()
        db = sum(cpu - self.t0[1].get(pid, 0.0) for pid, cpu in end.items())
        return {"cpu_us_per_event": round(mine / n * 1e6), "db_cpu_us_per_event": round(db / n * 1e6)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")


def scalar(engine, sql):
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()
    except sa.exc.ProgrammingError:
        return 0


def child_e2e(config_path: str, target: str, n: int) -> dict:
    """The agent alone in this process (plus its delivery process); the main thread only
    watches the queue's status and is left out of the agent's CPU."""
    from agent import config as config_module
    from agent.runtime import Agent
    from agent_procs import AgentMeter, peak_rss
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    document = json.loads(Path(config_path).read_text())
    database = document["sinks"]["erp_apply"]["url"].rsplit("/", 1)[1]
    agent = Agent(config_module.parse(document), drain_timeout=5,
                  separate_delivery=True)
    main = threading.main_thread().native_id
    started = time.monotonic()
    agent.start()
    first = consumed = ready = None
    try:
        while True:
            status = agent.queue.status().get("inbound", {})
            captured = status.get("captured_total", 0)
            if ready is None and all(h.is_alive() for h in agent.deliveries.values()):
                ready = time.monotonic()
            if first is None and captured:
                first = time.monotonic()
                meter, db = AgentMeter(agent, harness=[main]).start(), CpuMeter(target, me=False, database=database).start()
            if consumed is None and captured >= n:
                consumed = time.monotonic()
            if status.get("published_total", 0) >= n:
                break
            if time.monotonic() - started > 600:
                raise RuntimeError("timed out")
            time.sleep(0.05)
        done = time.monotonic()
        used, db_used, rss = meter.read(), db.per_event_us(n), peak_rss(agent)
    finally:
        agent.stop()
    us = lambda seconds: round(seconds / n * 1e6, 1)  # noqa: E731
    return {"join_s": round(first - started, 1), "delivery_ready_s": round(ready - started, 1) if ready else None,
            "e2e_per_s": round(n / (done - first)), "consume_per_s": round(n / (consumed - first)),
            "e2e_incl_join_per_s": round(n / (done - started)), "cpu_us_per_event": us(used["cpu_s"]),
            "capture_cpu_us_per_event": us(used["capture_cpu_s"]),
            "delivery_cpu_us_per_event": us(used["delivery_cpu_s"]), "harness_cpu_s": round(used["harness_cpu_s"], 2),
            "db_cpu_us_per_event": db_used["db_cpu_us_per_event"], "capture_rss_mb": round(rss["capture_mb"]),
            "delivery_rss_mb": round(rss["delivery_mb"]), "tracker_rss_mb": round(rss["tracker_mb"]),
            "load": [round(x, 2) for x in os.getloadavg()]}


def e2e(target, n, broker, registry, events) -> dict:
    db = FreshDatabase(target)
    try:
        engine = sa.create_engine(db.url)
        create_local(engine, with_audit=False)
        topic = f"bench{uuid.uuid4().hex[:8]}.customer"
        broker.create_topic(topic, partitions=3)
        FabricProducer(broker.bootstrap, registry.url, topic).send(events)
        with tempfile.TemporaryDirectory() as state:
            document = inbound_config(Path(state), db.url, broker.bootstrap, registry.url, topic, every="0.05s")
            document["sources"]["fabric_in"]["batch_size"] = 2000
            document["queue"] = {"delivery_batch": 2000}
            document["log"] = {"level": "WARNING"}
            config, out = Path(state) / "bench-config.json", Path(state) / "bench-result.json"
            config.write_text(json.dumps(document))
            cmd = [sys.executable, __file__, "--child", str(config), "--target", target, "--events", str(n),
                   "--out", str(out)]
            if subprocess.run(cmd, cwd=state).returncode:
                raise SystemExit(f"{target}: the agent's child failed")
            result = json.loads(out.read_text())
        assert scalar(engine, "SELECT count(*) FROM outpost_applied_events") == n
        assert scalar(engine, "SELECT count(*) FROM erp_customer") == n // 2
        engine.dispose()
        return result
    finally:
        db.close()


def apply_only(target, n, events) -> dict:
    from adapters.sql_apply.sink import SqlApplySink
    db = FreshDatabase(target)
    try:
        engine = sa.create_engine(db.url)
        create_local(engine, with_audit=False)
        context = AdapterContext(name="erp_apply", state_dir=Path(tempfile.gettempdir()), schemas=CATALOG,
                                 log=logging.getLogger("bench"))
        sink = SqlApplySink({"url": db.url, "entities": REVERSE, "lookups": LOOKUPS}, context)
        sink.open()
        batch = queued(events)
        cpu = CpuMeter(target, database=db.name).start()
        started = time.monotonic()
        for start in range(0, n, 2000):
            report = sink.write(batch[start:start + 2000])
            assert len(report.delivered) == len(batch[start:start + 2000]), report
        elapsed = time.monotonic() - started
        used = cpu.per_event_us(n)
        sink.close()
        engine.dispose()
        return {"apply_only_per_s": round(n / elapsed), **{f"apply_only_{k}": v for k, v in used.items()}}
    finally:
        db.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--targets", default="postgres,mariadb")
    for hidden in ("child", "target", "out"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(child_e2e(args.child, args.target, args.events)))
        return
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)   # "skipped: max instances" while a run streams
    half = args.events // 2
    firsts = [customer(f"C-{i:07d}", f"Customer {i}", limit=f"{i % 100000}.25") for i in range(half)]
    events = [event(c, operation="CREATE") for c in firsts] + [
        event({**c, "name": c["name"] + " (renamed)", "updated_at": c["updated_at"] + dt.timedelta(seconds=1)},
              before=c) for c in firsts]
    print("machine:", machine(), flush=True)
    broker = Broker(Path(tempfile.mkdtemp()) / "tansu.log")
    registry = RegistryDouble()
    try:
        for target in args.targets.split(","):
            result = e2e(target, args.events, broker, registry, events)
            result.update(apply_only(target, args.events, events))
            print(target, args.events, json.dumps(result), flush=True)
            print(f"{target}: e2e {result['e2e_per_s']:,} events/s (target >= 10,000: "
                  f"{'MET' if result['e2e_per_s'] >= 10000 else 'NOT met'}), agent CPU {result['cpu_us_per_event']} "
                  f"us/event (capture {result['capture_cpu_us_per_event']}, delivery "
                  f"{result['delivery_cpu_us_per_event']}), {target} CPU {result['db_cpu_us_per_event']} us/event; "
                  f"peak RSS capture {result['capture_rss_mb']} MB, delivery {result['delivery_rss_mb']} MB, tracker "
                  f"{result['tracker_rss_mb']} MB; apply-only ceiling {result['apply_only_per_s']:,}/s "
                  f"({result['apply_only_cpu_us_per_event']} us/event), e2e / ceiling "
                  f"{result['e2e_per_s'] / result['apply_only_per_s']:.2f}; load {result['load']}", flush=True)
    finally:
        registry.stop()
        broker.stop()


if __name__ == "__main__":
    main()
