"""Snapshot progress: rows done of the estimated total, rate and ETA, logged while the
snapshot runs and kept in the route status (``status``, ``/status``, the page). A real
sql_poll snapshot of a SQLite table in chunks, and the arithmetic on a given clock."""
import logging
import sqlite3

import pytest

from agent import config as config_module, progress
from agent.progress import ProgressWatch, describe
from agent.runtime import Agent
from agent.status import collect, render


def test_rate_percent_and_time_left_from_the_rows_reported():
    watch = ProgressWatch()
    first = watch.enrich({"phase": "snapshot", "rows": 0, "total": 300_000}, now=100.0)
    assert first["rate_per_s"] is None and first["percent"] == 0.0
    later = watch.enrich({"phase": "snapshot", "rows": 120_000, "total": 300_000}, now=124.0)
    assert later["rate_per_s"] == 5000.0 and later["percent"] == 40.0 and later["eta_s"] == 36.0
    assert describe(later) == "snapshot: 120,000 of ~300,000 rows (40.0 %), 5,000 rows/s, about 36s left"
    over = watch.enrich({"phase": "snapshot", "rows": 310_000, "total": 300_000, "done": True}, now=160.0)
    assert over["percent"] == 100.0 and "eta_s" not in over, "an estimate below the rows read stops at 100 %"
    assert describe(over) == "snapshot: 310,000 of ~300,000 rows (100.0 %), done"
    assert describe({"phase": "incremental", "cursor": "2026-01-01"}) is None, "no rows: the source's own words"


def test_due_every_few_seconds_and_at_the_end():
    watch = ProgressWatch()
    watch.enrich({"phase": "snapshot", "rows": 0}, now=0.0)
    assert not watch.due({"rows": 10}, now=5.0)
    assert watch.due({"rows": 20}, now=10.5)
    assert not watch.due({"rows": 30}, now=12.0)
    assert watch.due({"rows": 31, "done": True}, now=12.5)


def _document(tmp_path, database, **extra) -> dict:
    return {
        "state_dir": str(tmp_path / "state"),
        "lookups": {"legal_entity": {"01": "US01"}, "tax_jurisdiction": {"NY": "US-NY"}},
        "mappings": {"customer": {"entity": "Customer", "fields": {
            "customer_number": "cust_no", "name": "cust_name", "legal_entity": {"column": "company",
                                                                                "lookup": "legal_entity"},
            "currency": "curr", "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"},
            "updated_at": "updated_at"}}},
        "sources": {"erp": {"type": "sql_poll", "url": f"sqlite:///{database}", "lag_seconds": 0}},
        "sinks": {"outbox": {"type": "avro_files", "directory": str(tmp_path / "outbox")}},
        "routes": {"customers": {"source": "erp", "sink": "outbox", "mapping": "customer",
                                 "capture": {"table": "cust", "cursor": "updated_at", "snapshot_chunk": 250}}},
        "delivery_process": False, **extra}


@pytest.fixture
def snapshot_route(tmp_path, request):
    database = tmp_path / "erp.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cust (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
                   " tax_code TEXT, updated_at TIMESTAMP NOT NULL)")
        db.executemany("INSERT INTO cust VALUES (?, 'Acme', '01', 'USD', 'NY', '2026-01-01 10:00:00')",
                       [(f"C-{n:04d}",) for n in range(1000)])
    cfg = config_module.parse(_document(tmp_path, database, **getattr(request, "param", {})))
    agent = Agent(cfg)
    agent.build()
    try:
        yield agent, cfg
    finally:
        agent.stop(timeout=10)


def test_a_snapshot_logs_its_progress_and_status_keeps_it(snapshot_route, caplog, monkeypatch):
    agent, cfg = snapshot_route
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)      # every chunk, not every 10 s
    with caplog.at_level(logging.INFO, logger="outpost.capture"):
        assert agent.run_pass() == 1000
    lines = [r.getMessage() for r in caplog.records if "snapshot:" in r.getMessage()]
    assert any("route customers: snapshot: 500 of ~1,000 rows (50.0 %)" in line for line in lines), lines
    assert lines[-1] == "route customers: snapshot: 1,000 of ~1,000 rows (100.0 %), done"
    report = collect(cfg)
    shown = report["routes"]["customers"]
    assert shown["progress"]["total"] == 1000 and shown["progress"]["percent"] == 100.0
    assert shown["progress_text"] == "snapshot: 1,000 of ~1,000 rows (100.0 %), done"
    assert "  progress: snapshot: 1,000 of ~1,000 rows (100.0 %), done" in render(report).splitlines()


@pytest.mark.parametrize("snapshot_route", [{"queue": {"max_bytes": "4KB"}, "http": {"enabled": True, "port": 0}}],
                         indirect=True)
def test_the_page_shows_a_snapshot_half_way(snapshot_route, tmp_path):
    """A snapshot paused by the queue quota after its first chunk: a real half-read table."""
    import shutil
    from agent.http import StatusServer
    from tests.test_http_endpoints import _page
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/test.sh --setup-services installs it)")
    agent, cfg = snapshot_route
    assert agent.run_pass() == 250, "the first chunk, then the quota pauses capture"
    server = StatusServer(agent, sample_every=0.3)
    server.start()
    agent.start(capture=False)
    try:
        cells, _ = _page(chromium, f"http://127.0.0.1:{server.port}", tmp_path, "snapshot-in-progress",
                         token=None)
    finally:
        server.stop()
    assert cells["route-customers-progress"]["text"] == "snapshot: 250 of ~1,000 rows (25.0 %)"
    assert cells["route-customers-progress-bar"]["value"] == "25"
    assert cells["route-customers-capture"]["text"].startswith("snapshotting (continues on the next pass)")
