"""An unreachable source database: the route retries with backoff, says so in status,
and captures everything once the database is back. Real SQLite file, real files sink."""
import sqlite3
import time

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
