#!/usr/bin/env python
"""Failover time of an HA pair: SIGKILL of the active to the first event from the new one.

Run:  .venv/bin/python bench/bench_failover.py [--rounds 5] [--lease 6s]

Two real `outpost run` processes (own state directories, one PostgreSQL sql_poll source,
kafka sink, the real tansu broker; the schema registry is the HTTP double of
tests/support/registry_double.py) with the default lease unless told. A writer inserts a
row every 50 ms. Each round: wait until one agent is active and publishing, SIGKILL it,
and time until the other agent produced its first committed event (the message's
CreateTime, read by a read_committed consumer; the `outpost_agent` header tells who
published; the consumer itself may see it later, when the broker's stable offset moves). The killed agent is restarted and joins
as the passive. Reported: each round and the median; target <= 10 s with defaults.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402

from tests.support.agent_process import AgentProcess, route_status, wait_for  # noqa: E402
from tests.support.registry_double import RegistryDouble  # noqa: E402
from tests.support.route import create_tables, route_config  # noqa: E402
from tests.support.services import Broker  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lease", default="6s")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="outpost-failover-"))
    name = "outpost_failover_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    broker, registry = Broker(work / "tansu.log"), RegistryDouble()
    engine = create_tables(url)
    stop = threading.Event()
    try:
        document = route_config(work / "unused", url, broker.bootstrap, registry.url, every="0.2s", lag=0.3)
        document["ha"] = {"group": f"bench-{uuid.uuid4().hex[:6]}", "lease": a.lease}
        topic = document["fabric"]["topic_template"].format(entity="customer")
        agents = []
        for member in ("a", "b"):
            path = work / f"outpost-{member}.yaml"
            path.write_text(yaml.safe_dump({**document, "state_dir": str(work / f"state-{member}")}))
            agents.append(AgentProcess(path, work / f"agent-{member}.log").start())

        def role(agent):
            return route_status(agent.config_path.parent / f"state-{agent.config_path.stem[-1]}", "(ha)").get("role")

        def writer():
            n = 0
            with engine.connect() as conn:
                while not stop.is_set():
                    n += 1
                    conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code,"
                                         " credit_lim) VALUES (:no, 'n', '01', 'USD', 'NY', 1)"), {"no": f"F-{n:07d}"})
                    conn.commit()
                    time.sleep(0.05)

        threading.Thread(target=writer, daemon=True).start()
        broker.create_topic(topic, 3)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                             "auto.offset.reset": "latest", "isolation.level": "read_committed"})
        consumer.subscribe([topic])
        times = []
        for round_ in range(a.rounds):
            assert wait_for(lambda: sum(role(x) == "active" for x in agents if x.alive()) == 1, 60)
            victim = next(x for x in agents if x.alive() and role(x) == "active")
            survivor = next(x for x in agents if x is not victim)
            suffix = f"state-{survivor.config_path.stem[-1]}"
            while consumer.poll(0.1) is not None:        # caught up: what comes next is new
                pass
            victim.kill()
            killed = time.time()
            first = None
            while first is None and time.time() - killed < 120:
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    agent = dict(message.headers() or []).get("outpost_agent", b"").decode()
                    if agent.endswith(suffix):    # when the new active produced it (CreateTime)
                        first = message.timestamp()[1] / 1000 - killed
            times.append(first)
            print(f"round {round_ + 1}: first event from the new active {first:.2f} s after the SIGKILL at {time.strftime('%H:%M:%S', time.localtime(killed))}.{int(killed % 1 * 1000):03d}", flush=True)
            victim.start()
        consumer.close()
        print(f"median failover {statistics.median(times):.2f} s (lease {a.lease}); target <= 10 s with defaults")
    finally:
        stop.set()
        for agent in locals().get("agents", []):
            agent.kill()
        engine.dispose()
        registry.stop()
        broker.stop()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
