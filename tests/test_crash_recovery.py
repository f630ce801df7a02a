"""Crash consistency: the agent runs as a real process and is killed with SIGKILL.

PostgreSQL is the legacy database, tansu the broker, the registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here). After every
kill the agent is restarted; an independent consumer then checks that every change
arrived and that no change was published under two different event ids.
"""
import os
import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.support.agent_process import AgentProcess, queue_depth, route_status, wait_for
from tests.support.route import create_tables, decode_messages, route_config

ROOT = Path(__file__).resolve().parent.parent
ROWS = 3000

pytestmark = pytest.mark.slow


def write_stream(engine, stop_after: int, done: threading.Event):
    """Inserts in small transactions, as a busy ERP would; every row is one change."""
    numbers = iter(range(1, stop_after + 1))
    with engine.connect() as conn:
        while True:
            chunk = [n for _, n in zip(range(25), numbers)]
            if not chunk:
                break
            with conn.begin():
                conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code,"
                                     " credit_lim) VALUES (:no, :name, '01', 'USD', 'NY', :lim)"),
                             [{"no": f"C-{n:05d}", "name": f"Customer {n}", "lim": n} for n in chunk])
            time.sleep(0.02)
    done.set()


def test_sigkill_at_random_points_loses_nothing_and_never_changes_an_id(tmp_path, pg_url, broker, registry):
    seed = int(os.environ.get("OUTPOST_CRASH_SEED", time.time()))
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    engine = create_tables(pg_url)
    state_dir = tmp_path / "state"
    document = route_config(state_dir, pg_url, broker.bootstrap, registry.url, every="0.2s", lag=0.3)
    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    topic = document["fabric"]["topic_template"].format(entity="customer")
    agent = AgentProcess(config_path, tmp_path / "agent.log")

    done = threading.Event()
    writer = threading.Thread(target=write_stream, args=(engine, ROWS, done), daemon=True)
    agent.start()
    writer.start()
    kills = 0
    while not done.is_set() or kills < 3:          # SIGKILL at random points of the stream
        time.sleep(rng.uniform(0.4, 1.6))
        agent.kill()
        kills += 1
        agent.start()

    # and once exactly between capture and publish: events queued, broker unreachable.
    # First everything inserted is published (else the updated rows could be read by a
    # snapshot still running, and the two versions of a row would rightly be one event).
    assert wait_for(lambda: route_status(state_dir, "customers").get("published_total", 0) >= ROWS
                    and queue_depth(state_dir) == 0, 120), (tmp_path / "agent.log").read_text()[-3000:]
    with broker.outage():
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE erp_customer SET credit_lim = credit_lim + 1, updated_at = clock_timestamp()"
                                 " WHERE cust_no <= 'C-00100'"))
        assert wait_for(lambda: queue_depth(state_dir) >= 100, 20), \
            "the update batch should be captured while the broker is down"
        agent.kill()
    agent.start()

    expected_changes = ROWS + 100
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1)
        if queue_depth(state_dir) == 0 and (state_dir / "queue.db").exists():
            messages = broker.consume(topic, timeout=60)
            if len({(m.key(), dict(m.headers())["event_id"]) for m in messages}) >= expected_changes:
                break
    assert agent.terminate() == 0, (tmp_path / "agent.log").read_text()[-3000:]

    events = decode_messages(broker.consume(topic, timeout=60), registry)
    ids_per_change = defaultdict(set)
    for e in events:
        change = (e["key"], e["metadata"]["source"]["position"])
        ids_per_change[change].add(e["metadata"]["event_id"])
    keys = {key for key, _ in ids_per_change}
    assert keys == {f"C-{n:05d}" for n in range(1, ROWS + 1)}, f"lost rows (seed {seed})"
    assert len(ids_per_change) == expected_changes, f"every insert and every update, once (seed {seed})"
    assert all(len(ids) == 1 for ids in ids_per_change.values()), f"a change under two ids (seed {seed})"
    updated = [e for e in events if e["key"] <= "C-00100" and e["after"]["credit_limit"] > int(e["key"][2:])]
    assert len({e["key"] for e in updated}) == 100
