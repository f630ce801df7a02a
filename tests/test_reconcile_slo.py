"""Business objectives and the last reconciliation in /metrics, /status, `outpost status` and the
page, against a real route (PostgreSQL -> sql_poll -> queue -> kafka -> tansu)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent import config as config_module
from agent.reconcile_run import reconcile_route
from agent.runtime import Agent
from tests.support.route import create_tables, insert_customers, route_config
from tests.test_http_endpoints import _Cells, _get, _until, serving


def test_objectives_and_reconciliation_show_everywhere(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, lag=0, delivery_timeout=3)
    document["http"] = {"enabled": True, "port": 0}
    document["objectives"] = {"Customer": {"within": "60s", "target": 0.99}}
    document["routes"]["customers"]["reconcile"] = {"cron": "0 2 * * *", "window": "all", "deletes": "off"}
    with serving(document) as (agent, base, cfg):
        # snapshot rows (the first pass) are old rows, not changes: they stay out of the objective
        insert_customers(engine, range(101, 104))
        agent.run_pass()
        assert _until(lambda: agent.queue.depth() == 0)
        insert_customers(engine, range(1, 13))
        agent.run_pass()
        assert _until(lambda: agent.queue.depth() == 0)
        outcome = reconcile_route(cfg, agent.catalog, agent.queue, "customers", "all", publish=False)
        assert outcome["tied_out"] and outcome["source_count"] == outcome["published_count"] == 15
        code, text = _get(base + "/metrics")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        labels = (("entity", "Customer"), ("route", "customers"))
        assert samples[("outpost_change_to_ack_seconds_count", labels)] == 12
        assert samples[("outpost_change_to_ack_seconds_bucket", (labels[0], ("le", "60.0"), labels[1]))] == 12
        assert samples[("outpost_objective_attained_ratio", labels)] == 1.0
        assert samples[("outpost_objective_error_budget_remaining_ratio", labels)] == 1.0
        assert samples[("outpost_objective_target_ratio", labels)] == 0.99
        assert samples[("outpost_reconcile_tied_out", (("route", "customers"),))] == 1
        code, body = _get(base + "/status")
        business = json.loads(body)["objectives"]["customers"]["business"]
        assert (business["entity"], business["confirmed"], business["on_time"], business["met"]) == \
            ("Customer", 12, 12, True)
        path = tmp_path / "outpost.yaml"
        path.write_text(yaml.safe_dump(document))
        shown = subprocess.run([str(Path(sys.executable).with_name("outpost")), "status", "-c", str(path)],
                               capture_output=True, text=True, timeout=60).stdout
        assert "objective Customer: 99 % within 60s, attained 100.00 % of 12 change(s), error budget left 100.0 %" \
            in shown
        assert "last reconciliation: window all, tied out, 0 differing key(s)" in shown
        chromium = shutil.which("chromium")
        if chromium is not None:        # scripts/test.sh installs it; the numbers above hold without it
            dom = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", "--dump-dom", base + "/"],
                capture_output=True, text=True, timeout=90).stdout
            page = _Cells()
            page.feed(dom)
            assert page.by_id["business-customers-objective"]["text"] == "Customer: 99.0 % within 60 s"
            assert page.by_id["business-customers-attained"]["text"] == "100.00 %"
            assert page.by_id["business-customers-budget"]["text"] == "100.0 %"
            assert page.by_id["business-customers-reconcile"]["text"].startswith("tied out (all, 0 differing")
    engine.dispose()


def test_a_reconcile_cron_is_scheduled_in_its_zone(tmp_path):
    cfg = config_module.parse({
        "state_dir": str(tmp_path / "state"), "mappings": {"c": {"entity": "Customer", "fields": {
            "customer_number": "no", "name": "no", "legal_entity": {"const": "US01"}, "currency": {"const": "USD"},
            "tax_jurisdiction": {"const": "US-NY"}}}},
        "sources": {"erp": {"type": "sql_poll", "url": f"sqlite:///{tmp_path / 'erp.db'}"}},
        "sinks": {"out": {"type": "avro_files", "directory": str(tmp_path / "out")}},
        "routes": {"customers": {"source": "erp", "sink": "out", "mapping": "c", "schedule": {"every": "1h"},
                                 "capture": {"table": "t", "cursor": "ts"},
                                 "reconcile": {"cron": "0 2 * * *", "zone": "Europe/Berlin"}}}})
    agent = Agent(cfg)
    agent.captures = {}
    agent._start_capture()
    try:
        job = agent.scheduler.get_job("reconcile-customers")
        assert job is not None and str(job.trigger.timezone) == "Europe/Berlin"
        assert job.next_run_time.astimezone(job.trigger.timezone).hour == 2
    finally:
        agent.scheduler.shutdown(wait=False)
