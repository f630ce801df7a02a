"""The local status endpoint against a real route: PostgreSQL -> sql_poll -> SQLite queue
-> kafka sink -> tansu. The schema registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here).

The numbers the endpoint reports are checked against what actually flowed: rows
inserted, messages consumed back from the broker, entries in the exception queue.
"""
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from agent import config as config_module
from agent.http import StatusServer
from agent.runtime import Agent
from tests.support.route import create_tables, insert_customers, route_config


def _get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(condition, timeout=40.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


@contextmanager
def serving(document):
    """An agent with delivery threads and the status server on ``document``: (agent, base
    URL, config); the caller drives capture passes."""
    cfg = config_module.parse(document)
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    server = StatusServer(agent, sample_every=0.3)
    server.start()
    agent.start(capture=False)
    try:
        yield agent, f"http://127.0.0.1:{server.port}", cfg
    finally:
        agent.stop(timeout=15)
        server.stop()


@pytest.fixture
def running(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, lag=0, delivery_timeout=3)
    document["http"] = {"enabled": True, "port": 0, "token": "s3cr3t-token"}
    with serving(document) as (agent, base, cfg):
        yield agent, engine, base, cfg


def _metrics(base):
    code, text = _get(base + "/metrics", "s3cr3t-token")
    assert code == 200
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in ("route", "class")))
            values[(sample.name, labels)] = sample.value
    return values


def test_metric_values_agree_with_what_flowed(running, broker):
    agent, engine, base, cfg = running
    insert_customers(engine, range(1, 31))
    insert_customers(engine, range(31, 34), company="07")     # unknown legal entity: rejected
    assert agent.run_pass() == 30
    assert _until(lambda: agent.queue.depth() == 0)
    consumed = broker.consume(cfg.fabric.topic_template.format(entity="customer"), expected=30, timeout=30)
    assert len(consumed) == 30

    m = _metrics(base)
    route = (("route", "customers"),)
    assert m[("outpost_events_captured_total", route)] == 30
    assert m[("outpost_events_published_total", route)] == len(consumed) == 30
    assert m[("outpost_records_rejected_total", route)] == 3
    assert m[("outpost_exceptions_open", route)] == agent.queue.count_exceptions() == 3
    assert m[("outpost_queue_depth", route)] == 0
    assert m[("outpost_errors_total", (("class", "mapping_rejected"), ("route", "customers")))] == 3
    assert m[("outpost_errors_total", (("class", "sink_unavailable"), ("route", "customers")))] == 0
    assert m[("outpost_sync_success_ratio", route)] == pytest.approx(30 / 33, abs=1e-6)
    # the first pass is the initial snapshot: its rows' age is not change latency
    assert m[("outpost_snapshot_delivery_age_seconds_count", route)] == 30
    assert 0 < m[("outpost_snapshot_delivery_age_seconds_sum", route)] < 30 * 60
    assert m.get(("outpost_delivery_latency_seconds_count", route), 0) == 0
    assert m[("outpost_build_info", ())] == 1
    assert m[("outpost_capture_lag_seconds", route)] >= 0

    code, body = _get(base + "/status", "s3cr3t-token")
    status = json.loads(body)
    assert code == 200 and status["agent"]["state"] == "running" and status["agent"]["ready"]
    assert status["routes"]["customers"]["published_total"] == 30
    assert status["objectives"]["customers"]["entity"] == "Customer"
    assert status["objectives"]["customers"]["sync_success_rate"] == pytest.approx(30 / 33, abs=1e-6)

    # three rejected rows wait for a person: health says so, with the reason and its count
    assert status["health"] == "degraded" and status["exceptions"]["count"] == 3
    code, body = _get(base + "/healthz", "s3cr3t-token")
    (problem,) = json.loads(body)["problems"]
    assert code == 200 and json.loads(body)["status"] == "degraded"
    assert "3 open exception(s)" in problem and "3 \u00d7 legal_entity: unknown legal_entity code '07'" in problem
    code, body = _get(base + "/readyz", "s3cr3t-token")
    assert code == 200 and json.loads(body)["status"] == "degraded", "connected, but not all is well"

    with engine.begin() as conn:          # changes now: these are what the latency measures
        conn.execute(sa.text("UPDATE erp_customer SET credit_lim = 7, updated_at = clock_timestamp() "
                             "WHERE cust_no IN ('C-00001', 'C-00002')"))
    assert agent.run_pass() == 2 and _until(lambda: agent.queue.depth() == 0)
    m = _metrics(base)
    assert m[("outpost_delivery_latency_seconds_count", route)] == 2
    assert 0 < m[("outpost_delivery_latency_seconds_sum", route)] < 60
    assert m[("outpost_snapshot_delivery_age_seconds_count", route)] == 30


def test_token_is_required_when_configured(running):
    _, _, base, _ = running
    assert _get(base + "/metrics")[0] == 401
    assert _get(base + "/status", "wrong")[0] == 401
    assert _get(base + "/healthz", "s3cr3t-token")[0] == 200
    assert _get(base + "/healthz?token=s3cr3t-token")[0] == 200
    for path in ("/healthz", "/readyz", "/status", "/metrics", "/"):     # monitors probe with HEAD
        request = urllib.request.Request(base + path + "?token=s3cr3t-token", method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and int(response.headers["Content-Length"]) > 0
            assert response.read() == b"", "HEAD has no body"
    assert _get(base + "/healthz")[0] == 401


def test_health_and_readiness_flip_when_the_broker_goes_away_and_comes_back(running, broker):
    agent, engine, base, _ = running
    insert_customers(engine, range(1, 6))
    agent.run_pass()
    assert _until(lambda: _get(base + "/readyz", "s3cr3t-token")[0] == 200)
    assert json.loads(_get(base + "/healthz", "s3cr3t-token")[1])["status"] == "ok"
    with broker.outage():
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE erp_customer SET credit_lim = 5, updated_at = clock_timestamp()"))
        assert agent.run_pass() == 5, "capture goes on while the fabric is down"
        assert _until(lambda: _get(base + "/readyz", "s3cr3t-token")[0] == 503)
        time.sleep(2)
        code, body = _get(base + "/readyz", "s3cr3t-token")
        sink = [p for p in json.loads(body)["problems"] if "route customers: sink" in p][0]
        seconds = int(sink.split(" (for ")[1].split("s,")[0])
        started = agent.queue.status()["customers"]["sink_error_since"]
        assert abs(seconds - (time.time() - started)) <= 2, f"the outage's length, not the stall watch's: {sink}"
        assert f"{agent.queue.depth()} event(s) wait in the local queue" in sink, sink
        code, body = _get(base + "/healthz", "s3cr3t-token")
        assert code == 200 and json.loads(body)["status"] == "degraded", "alive, only the fabric is away"
    assert _until(lambda: _get(base + "/readyz", "s3cr3t-token")[0] == 200, timeout=90)
    assert json.loads(_get(base + "/healthz", "s3cr3t-token")[1])["status"] == "ok"
    assert agent.queue.depth() == 0


class _Cells(HTMLParser):
    """Text of every element with an id, from the DOM Chromium dumps after scripts ran."""

    def __init__(self):
        super().__init__()
        self.by_id, self._stack = {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._stack.append(attrs.get("id"))
        if attrs.get("id"):
            self.by_id[attrs["id"]] = attrs
            self.by_id[attrs["id"]]["text"] = ""

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        for element_id in self._stack:
            if element_id:
                self.by_id[element_id]["text"] += data


ARTEFACTS = Path(os.environ.get("OUTPOST_TEST_ARTEFACTS") or Path(__file__).resolve().parent.parent
                 / "test-artefacts") / "status-page"


def _page(chromium, base, tmp_path, state, token="s3cr3t-token"):
    """The page as Chromium renders it after its scripts ran: the cells by id, and a
    screenshot kept as a test artefact (``$OUTPOST_TEST_ARTEFACTS``, default test-artefacts/)."""
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000"]
    url = f"{base}/?token={token}" if token else f"{base}/"
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / f"{state}.png"
    shot.unlink(missing_ok=True)
    subprocess.run(common + ["--window-size=1400,700", f"--screenshot={shot}", url], capture_output=True,
                   timeout=90)
    assert shot.is_file() and shot.stat().st_size > 5000, f"no screenshot of the {state} page"
    page = _Cells()
    page.feed(dom)
    return page.by_id, dom


def test_status_page_in_chromium_healthy_exceptions_open_and_broker_down(running, tmp_path, broker):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/test.sh --setup-services installs it)")
    agent, engine, base, _ = running
    insert_customers(engine, range(1, 13))
    agent.run_pass()
    assert _until(lambda: agent.queue.depth() == 0)
    time.sleep(1.0)       # a few history samples for the sparklines
    cells, dom = _page(chromium, base, tmp_path, "healthy")
    assert cells["agent-state"]["text"] == "running" and cells["ready"]["text"] == "ready"
    assert cells["health"]["text"] == "healthy" and cells["problems"]["text"] == ""
    assert cells["route-customers-published_total"]["text"] == "12"
    assert int(dom.split('data-count="')[1].split('"')[0]) >= 2, "the sparklines have history points"

    insert_customers(engine, range(13, 15), company="07")
    agent.run_pass()
    cells, _ = _page(chromium, base, tmp_path, "exceptions-open")
    assert cells["ready"]["text"] == "ready" and cells["health"]["text"] == "degraded", "two open exceptions"
    assert "2 open exception(s)" in cells["problems"]["text"]
    assert "2 \u00d7 legal_entity: unknown legal_entity code '07'" in cells["problems"]["text"]
    assert cells["route-customers-captured_total"]["text"] == "12"
    assert cells["route-customers-rejected_total"]["text"] == "2"
    assert cells["route-customers-queue_depth"]["text"] == "0"
    assert cells["route-customers-open_exceptions"]["text"] == "2"
    assert cells["route-customers-success_rate"]["text"] == "85.7 %"       # 12 / 14
    assert cells["route-customers-entity"]["text"] == "Customer"
    assert cells["open-exceptions"]["text"] == "2"

    with broker.outage():
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE erp_customer SET credit_lim = 5, updated_at = clock_timestamp()"
                                 " WHERE company = '01'"))
        assert agent.run_pass() == 12
        assert _until(lambda: _get(base + "/readyz", "s3cr3t-token")[0] == 503)
        cells, _ = _page(chromium, base, tmp_path, "broker-down")
    assert cells["ready"]["text"] == "not ready" and cells["health"]["text"] == "degraded"
    assert "12 event(s) wait in the local queue" in cells["problems"]["text"], cells["problems"]["text"]
    assert cells["route-customers-queue_depth"]["text"] == "12"
    assert _until(lambda: agent.queue.depth() == 0, timeout=90), "delivered once the broker is back"
