"""A full disk under the state directory: capture and delivery pause and retry, and
resume by themselves once space is back, losing and splitting nothing.

The state directory is a real 24 MiB tmpfs (mounting it needs root, as CI runs; the
test is skipped elsewhere), filled with a real file. PostgreSQL is the ERP, tansu the
broker, the agent a real process; the registry is the HTTP double (no registry server
can run here).
"""
import errno
import sqlite3
import subprocess
import time
from collections import defaultdict

import pytest
import yaml

from tests.support.agent_process import AgentProcess, queue_depth, route_status, wait_for
from tests.support.route import create_tables, decode_messages, insert_customers, route_config

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _published(state) -> int:
    return route_status(state, "customers").get("published_total", 0)


def _fill(folder) -> None:
    block = b"\0" * (1 << 20)
    with open(folder / "filler", "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:      # the last few KiB too
            try:
                handle.write(b"\0" * 4096)
            except OSError:
                return


def test_a_full_state_disk_pauses_the_agent_and_it_recovers_alone(tmp_path, small_disk, pg_url, broker, registry):
    engine = create_tables(pg_url)
    document = route_config(small_disk, pg_url, broker.bootstrap, registry.url, delivery_timeout=5)
    config = tmp_path / "outpost.yaml"
    config.write_text(yaml.safe_dump(document))
    topic = document["fabric"]["topic_template"].format(entity="customer")
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        insert_customers(engine, range(1, 101))
        assert wait_for(lambda: _published(small_disk) >= 100, 60), agent.log()
        with broker.outage():
            insert_customers(engine, range(101, 301))
            assert wait_for(lambda: queue_depth(small_disk) == 200, 60), agent.log()
            # an empty WAL: the next write must grow it, which the full disk refuses
            with sqlite3.connect(small_disk / "queue.db", timeout=10) as db:
                assert wait_for(lambda: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, 20)
            _fill(small_disk)
        # the broker acknowledges the backlog, but the queue cannot settle it
        time.sleep(8)
        assert agent.alive(), agent.log()[-3000:]
        assert "database or disk is full" in agent.log()
        (small_disk / "filler").unlink()
        insert_customers(engine, range(301, 311))
        assert wait_for(lambda: queue_depth(small_disk) == 0 and _published(small_disk) >= 310, 90), \
            agent.log()[-3000:]
    log = agent.log()
    assert "Exception in thread" not in log and "died" not in log, log[-3000:]
    events = decode_messages(broker.consume(topic, timeout=60), registry)
    ids_per_change = defaultdict(set)
    for event in events:
        ids_per_change[event["metadata"]["source"]["position"]].add(event["metadata"]["event_id"])
    assert {event["_key"] for event in events} == {f"C-{n:05d}" for n in range(1, 311)}, "nothing lost"
    assert all(len(ids) == 1 for ids in ids_per_change.values()), "no change under two ids"
