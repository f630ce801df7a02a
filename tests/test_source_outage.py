"""An unreachable source database: the route retries with backoff, says so in status,
and captures everything once the database is back. Real SQLite file, real files sink."""
import sqlite3
import time

import pytest

from agent import config as config_module
from agent.demo import demo_config
from agent.runtime import Agent


def test_source_unreachable_then_back(tmp_path):
    document = demo_config(tmp_path)
    database_dir = tmp_path / "erp-share"                 # not mounted yet: cannot be opened
    document["sources"]["erp"]["url"] = f"sqlite:///{database_dir / 'legacy-erp.db'}"
    document["routes"].pop("invoices")
    agent = Agent(config_module.parse(document))
    agent.build()
    try:
        assert agent.run_pass() == 0
        status = agent.queue.status()["customers"]
        assert status["capture_state"].startswith("retrying") and "unable to open" in status["source_error"]
        assert agent.run_pass() == 0, "within the backoff the source is not hammered"

        database_dir.mkdir()
        with sqlite3.connect(database_dir / "legacy-erp.db") as db:
            db.execute("CREATE TABLE cust (cust_no TEXT PRIMARY KEY, cust_name TEXT, company TEXT, ctry TEXT,"
                       " curr TEXT, tax_code TEXT, credit_lim NUMERIC, updated_at DATETIME NOT NULL)")
            db.execute("INSERT INTO cust VALUES ('C-1', 'Acme', '01', 'US', 'USD', 'NY', '10.00',"
                       " '2026-11-27 08:00:00.000')")
        deadline = time.monotonic() + 30
        captured = 0
        while captured == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            captured = agent.run_pass()
        assert captured == 1
        status = agent.queue.status()["customers"]
        assert status["capture_state"] == "ok" and status["source_error"] is None
    finally:
        agent.stop()


def test_retry_delays_never_exceed_the_cap():
    """Capture took 40 s to resume after a 90 s outage: the backoff grew to a minute."""
    from agent.supervise import RETRY_CAP_S, Backoff
    backoff = Backoff()
    delays = [backoff.failed() for _ in range(30)]
    assert max(delays) <= RETRY_CAP_S and delays[0] < 2.5
    assert backoff.next_attempt_at <= time.time() + RETRY_CAP_S


@pytest.mark.slow
def test_capture_resumes_within_the_cap_after_postgres_access_returns(tmp_path, pg_url):
    """PostgreSQL access revoked long enough for the backoff to reach its cap, then given
    back: capture is running again within about 10 s, and status named the next attempt."""
    import uuid

    import sqlalchemy as sa
    from tests.support.route import create_tables, insert_customers, route_config

    role = f"outpost_r_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    engine = create_tables(pg_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"GRANT SELECT ON erp_customer, erp_invoice TO {role}")
    url = sa.engine.make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    document = route_config(tmp_path / "state", url, "127.0.0.1:9", "http://127.0.0.1:9", every="0.2s", lag=0)
    document["sinks"] = {"fabric": {"type": "avro_files", "directory": "outbox"}}
    agent = Agent(config_module.parse(document))
    agent.build()
    agent.start()
    try:
        insert_customers(engine, [1])
        assert _wait(lambda: agent.queue.status().get("customers", {}).get("captured_total", 0) == 1, 20)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {role} NOLOGIN")
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        # long enough for an uncapped doubling backoff to pass 30 s between attempts
        assert _wait(lambda: "attempt 6" in str(agent.queue.status()["customers"].get("capture_state")), 60)
        status = agent.queue.status()["customers"]
        assert status["next_attempt_at"] - status["source_error_at"] <= 10.5, status
        insert_customers(engine, [2])
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {role} LOGIN")
        # within one capped delay plus the poll interval (uncapped, the next try was ~30 s away)
        assert _wait(lambda: agent.queue.status()["customers"].get("captured_total", 0) == 2, 15)
    finally:
        agent.stop()
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def _wait(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())
