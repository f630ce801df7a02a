"""Logs: event lines carry their ids, both formats; and no configured secret ever
appears anywhere an operator or another local user can read (issue 9 "Done means"):
stdout, stderr, the log file, /status, /metrics, `queue list` / `queue show`, and
queue.db (exception context, route status, every table, the raw database and WAL files).

The full run is a real process: PostgreSQL (trust auth, so any password in the URL
works) -> sql_poll -> queue -> kafka sink -> tansu, with a broker outage on the way to
provoke the error paths. The database password has URL-special characters, and two more
routes fail with it in their URL: one cannot connect, one names a missing table (a
configuration problem found at run time). Then the same secrets in a config that fails
validation, for every command that loads it. The schema registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here); it ignores the
basic-auth credentials the agent sends.
"""
import copy
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, unquote

import sqlalchemy as sa
import yaml

from agent import config as config_module
from agent.logs import JsonFormatter, RedactingFilter, TextFormatter
from tests.support.route import create_tables, insert_customers, route_config

ROOT = Path(__file__).resolve().parent.parent


def _record(message, **extra):
    record = logging.LogRecord("outpost.test", logging.WARNING, __file__, 1, message, (), None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_event_lines_carry_event_and_correlation_ids_in_both_formats():
    record = _record("rejected", event_id="e-1", correlation_id="c-1", route="customers")
    assert TextFormatter().format(record).endswith("rejected [event_id=e-1 correlation_id=c-1]")
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["event_id"], entry["correlation_id"], entry["route"]) == ("e-1", "c-1", "customers")
    assert TextFormatter().format(_record("plain")).endswith("plain")


def test_redaction_covers_arguments_and_tracebacks():
    secret_filter = RedactingFilter(["hunter2-secret"])
    try:
        raise ValueError("login failed for hunter2-secret")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "connect %s", ("pw=hunter2-secret",),
                                   sys.exc_info())
    secret_filter.filter(record)
    line = TextFormatter().format(record)
    assert "hunter2-secret" not in line and "pw=***" in line and "login failed for ***" in line


DB_PASSWORD = "Db@Pa55/w0rd#in-url"          # URL-special: it must be encoded into the URL


def _secret_config(tmp_path, pg_url, broker, registry):
    os.environ["OUTPOST_T_DB_PASSWORD"] = DB_PASSWORD
    os.environ["OUTPOST_T_KAFKA_SECRET"] = "Kafka-Sasl-S3cret"
    os.environ["OUTPOST_T_HTTP_TOKEN"] = "Http-T0ken-value"
    (tmp_path / "registry.secret").write_text("registry-user:Registry-Pa55\n")
    url = pg_url.replace("postgres@", "postgres:${OUTPOST_T_DB_PASSWORD}@", 1)
    document = copy.deepcopy(route_config(tmp_path / "state", url, broker.bootstrap, registry.url, every="0.3s",
                                          lag=0, delivery_timeout=2))
    # SASL-style settings that are safe with a PLAINTEXT broker: librdkafka keeps them unused
    document["fabric"]["kafka"].update({"sasl.username": "outpost", "sasl.password": "${OUTPOST_T_KAFKA_SECRET}"})
    document["fabric"]["schema_registry"]["basic.auth.user.info"] = f"${{file:{tmp_path / 'registry.secret'}}}"
    document["http"] = {"enabled": True, "port": 0, "token": "${OUTPOST_T_HTTP_TOKEN}"}
    document["log"] = {"level": "DEBUG", "format": "json", "file": str(tmp_path / "logs" / "outpost.log")}
    customers = document["routes"]["customers"]
    document["sources"]["erp_down"] = {**document["sources"]["erp"],
                                       "url": "postgresql+psycopg://postgres:${OUTPOST_T_DB_PASSWORD}@127.0.0.1:1/erp"}
    document["routes"]["unreachable"] = {**customers, "source": "erp_down"}
    document["routes"]["misconfigured"] = {**customers, "capture": {"table": "no_such_table", "cursor": "updated_at"}}
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, document


def _outpost(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": "Bearer Http-T0ken-value"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _queue_db_contents(state_dir: Path) -> str:
    """Every row of every table as SQL text, plus the raw bytes of the database and its WAL."""
    with sqlite3.connect(state_dir / "queue.db", timeout=10) as db:
        dump = "\n".join(db.iterdump())
    raw = b"".join(f.read_bytes() for f in state_dir.glob("queue.db*"))
    return dump + "\n" + raw.decode("latin-1")


def _assert_nothing_leaks(channels: dict, secrets):
    """No secret, nor any 5-character run of the URL-special one (raw or encoded), in any
    channel, read as it is and percent-decoded."""
    runs = {text[i:i + 5] for text in (DB_PASSWORD, quote(DB_PASSWORD, safe="")) for i in range(len(text) - 4)}
    for name, text in channels.items():
        for shown in (text, unquote(text)):
            leaks = [s for s in secrets if s in shown] + [r for r in runs if r in shown]
            assert not leaks, f"{leaks} leaked into {name}: ...{shown[shown.find(leaks[0]) - 200:][:400]}"


def test_no_secret_appears_in_any_channel_of_a_full_run(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 21))
    insert_customers(engine, range(21, 23), company="07")         # rejected: a logged event line
    config_path, document = _secret_config(tmp_path, pg_url, broker, registry)
    secrets = config_module.load(config_path).secrets
    assert {DB_PASSWORD, quote(DB_PASSWORD, safe=""), "Kafka-Sasl-S3cret", "Http-T0ken-value",
            "registry-user:Registry-Pa55"} <= secrets

    log_file = tmp_path / "logs" / "outpost.log"
    channels = {}
    run = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(config_path)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"published_total": 20' not in _status(tmp_path):
            time.sleep(0.3)
        port = re.search(r"status endpoint on http://127\.0\.0\.1:(\d+)/", log_file.read_text()).group(1)
        with broker.outage():                                        # error paths: sink unavailable
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE erp_customer SET credit_lim = 7, updated_at = clock_timestamp()"))
            time.sleep(6)
            channels["/status during the outage"] = _get(f"http://127.0.0.1:{port}/status")
            channels["/metrics during the outage"] = _get(f"http://127.0.0.1:{port}/metrics")
        while time.monotonic() < deadline + 60 and '"published_total": 40' not in _status(tmp_path):
            time.sleep(0.3)
        channels["/status"] = _get(f"http://127.0.0.1:{port}/status")
        channels["/metrics"] = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        run.send_signal(signal.SIGTERM)
        channels["run stdout"], channels["run stderr"] = run.communicate(timeout=60)
    check = _outpost("check", "-c", config_path)
    listing = _outpost("queue", "list", "-c", config_path)
    exception_ids = [int(line.split()[0]) for line in listing.stdout.splitlines() if line.split()[0].isdigit()]
    shown = [_outpost("queue", "show", "-c", config_path, n) for n in exception_ids]
    channels.update({"check": check.stdout + check.stderr, "queue list": listing.stdout + listing.stderr,
                     "queue show": "".join(r.stdout + r.stderr for r in shown), "log file": log_file.read_text(),
                     "queue.db": _queue_db_contents(tmp_path / "state")})
    _assert_nothing_leaks(channels, secrets)

    # what was scanned holds what it must: a verbose run, the error paths that carry the URL
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(entries) > 20 and any(e["level"] == "DEBUG" for e in entries), "a verbose run was scanned"
    assert any("unavailable" in e["message"] or "acknowledgement" in e["message"] for e in entries), \
        "the outage was logged"
    rejected = [e for e in entries if "rejected by mapping" in e["message"]]
    assert len(rejected) == 4 and all(e["event_id"] and e["correlation_id"] for e in rejected)   # 2 rows x 2 versions
    assert '"published_total": 40' in _status(tmp_path)
    for channel in ("/status", "queue.db", "log file"):
        assert "postgres:***@127.0.0.1:1/erp" in channels[channel], f"the unreachable source in {channel}"
        assert "no_such_table" in channels[channel], f"the missing table in {channel}"
    assert "outpost_events_published_total" in channels["/metrics"]
    assert len(exception_ids) >= 2 and all(r.returncode == 0 and '"record"' in r.stdout for r in shown)
    assert "C-00021" in channels["queue.db"], "the exception context was scanned"

    # The same secrets in a config that fails validation: every command that loads it
    # prints the problems (exit 2); nothing reaches the log or the queue.
    broken = copy.deepcopy(document)
    broken["sourcs"] = broken.pop("sources")                         # misspelt section, URLs inside
    del broken["routes"]["customers"]["capture"]["cursor"]
    broken["fabric"]["topic_partitions"] = "${OUTPOST_T_KAFKA_SECRET}"
    broken["http"]["port"] = "${OUTPOST_T_HTTP_TOKEN}"
    broken["queue"] = {"max_bytes": "x" * 50 + "${OUTPOST_T_DB_PASSWORD}"}   # long: shortened after redaction
    broken_path = tmp_path / "broken.yaml"
    broken_path.write_text(yaml.safe_dump(broken))
    log_before = log_file.read_text()
    refused = {" ".join(map(str, args)): _outpost(*args, "-c", broken_path)
               for args in (("run",), ("run", "--once"), ("check",), ("status",), ("status", "--json"),
                            ("queue", "list"), ("queue", "show", exception_ids[0]))}
    for command, result in refused.items():
        assert result.returncode == 2, f"{command}: {result.stdout}{result.stderr}"
        assert "sourcs: unknown key" in result.stderr and "queue.max_bytes" in result.stderr, command
    assert log_file.read_text() == log_before
    _assert_nothing_leaks({**{f"{c} (invalid config)": r.stdout + r.stderr for c, r in refused.items()},
                           "log file": log_file.read_text(), "queue.db": _queue_db_contents(tmp_path / "state")},
                          secrets)


def _status(tmp_path) -> str:
    """The stored route status as text ("" while the agent has not made its tables yet)."""
    from tests.support.agent_process import route_status
    status = route_status(tmp_path / "state", "customers")
    return json.dumps(status) if status else ""


def test_a_secret_quoted_by_an_error_is_redacted_in_status_and_check(tmp_path):
    """A secret used as a table name (``${TBL}``) came back raw in two places the log
    filter does not cover: the stored route status (so ``status`` and ``/status``) and
    the problems ``outpost check`` prints. Both are redacted where they are written."""
    from tests.support.agent_process import outpost, route_status
    secret = "Secret-Table-Tok3n"
    database = tmp_path / "erp.db"
    sqlite3.connect(database).close()
    document = {"state_dir": str(tmp_path / "state"),
                "mappings": {"c": {"entity": "Customer", "fields": {
                    "customer_number": "id", "name": "id", "legal_entity": "id", "currency": "id",
                    "tax_jurisdiction": "id", "updated_at": "ts"}}},
                "sources": {"db": {"type": "sql_poll", "url": f"sqlite:///{database}"}},
                "sinks": {"files": {"type": "avro_files", "directory": "outbox"}},
                "routes": {"r": {"source": "db", "sink": "files", "mapping": "c",
                                 "capture": {"table": "${TBL}", "cursor": "ts"}}}}
    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    env = {"TBL": secret}
    once = outpost("run", "--once", "-c", config_path, env=env)
    stored = json.dumps(route_status(tmp_path / "state", "r"))
    assert "not found" in stored and secret not in stored, stored
    status = outpost("status", "-c", config_path, env=env)
    check = outpost("check", "-c", config_path, env=env)
    assert "not found" in check.stdout, check
    for name, text in {"run --once": once.stdout + once.stderr, "status": status.stdout + status.stderr,
                       "check": check.stdout + check.stderr}.items():
        assert secret not in text, (name, text)
