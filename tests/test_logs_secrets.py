"""Logs: event lines carry their ids, both formats; and no configured secret ever
appears in a log of a full agent run.

The full run is a real process: PostgreSQL (trust auth, so any password in the URL
works) -> sql_poll -> queue -> kafka sink -> tansu, with a broker outage on the way to
provoke the error paths. The schema registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here); it ignores the
basic-auth credentials the agent sends.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _secret_config(tmp_path, pg_url, broker, registry):
    os.environ["OUTPOST_T_DB_PASSWORD"] = "Db-Pa55w0rd-in-url"
    os.environ["OUTPOST_T_KAFKA_SECRET"] = "Kafka-Sasl-S3cret"
    os.environ["OUTPOST_T_HTTP_TOKEN"] = "Http-T0ken-value"
    (tmp_path / "registry.secret").write_text("registry-user:Registry-Pa55\n")
    url = pg_url.replace("postgres@", "postgres:${OUTPOST_T_DB_PASSWORD}@", 1)
    document = route_config(tmp_path / "state", url, broker.bootstrap, registry.url, every="0.3s", lag=0,
                            delivery_timeout=2)
    # SASL-style settings that are safe with a PLAINTEXT broker: librdkafka keeps them unused
    document["fabric"]["kafka"].update({"sasl.username": "outpost", "sasl.password": "${OUTPOST_T_KAFKA_SECRET}"})
    document["fabric"]["schema_registry"]["basic.auth.user.info"] = f"${{file:{tmp_path / 'registry.secret'}}}"
    document["http"] = {"enabled": True, "port": 0, "token": "${OUTPOST_T_HTTP_TOKEN}"}
    document["log"] = {"level": "DEBUG", "format": "json", "file": str(tmp_path / "logs" / "outpost.log")}
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_no_secret_appears_in_any_log_of_a_full_run(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 21))
    insert_customers(engine, range(21, 23), company="07")         # rejected: a logged event line
    config_path = _secret_config(tmp_path, pg_url, broker, registry)
    secrets = config_module.load(config_path).secrets
    assert secrets == {"Db-Pa55w0rd-in-url", "Kafka-Sasl-S3cret", "Http-T0ken-value", "registry-user:Registry-Pa55"}

    run = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(config_path)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    log_file = tmp_path / "logs" / "outpost.log"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"published_total": 20' not in _status(tmp_path):
            time.sleep(0.3)
        with broker.outage():                                        # error paths: sink unavailable
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE erp_customer SET credit_lim = 7, updated_at = clock_timestamp()"))
            time.sleep(6)
        while time.monotonic() < deadline + 60 and '"published_total": 40' not in _status(tmp_path):
            time.sleep(0.3)
    finally:
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=60)[0].decode(errors="replace")
    check = subprocess.run([sys.executable, "-m", "agent.cli", "check", "-c", str(config_path)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)

    lines = log_file.read_text().splitlines() + output.splitlines() + (check.stdout + check.stderr).splitlines()
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(entries) > 20 and any(e["level"] == "DEBUG" for e in entries), "a verbose run was scanned"
    assert any("unavailable" in e["message"] or "acknowledgement" in e["message"] for e in entries), \
        "the outage was logged"
    rejected = [e for e in entries if "rejected by mapping" in e["message"]]
    assert len(rejected) == 4 and all(e["event_id"] and e["correlation_id"] for e in rejected)   # 2 rows x 2 versions
    for secret in secrets:
        leaks = [line for line in lines if secret in line]
        assert not leaks, f"secret leaked into the log: {leaks[:3]}"
    assert '"published_total": 40' in _status(tmp_path)


def _status(tmp_path) -> str:
    import sqlite3
    if not (tmp_path / "state" / "queue.db").exists():
        return ""
    with sqlite3.connect(tmp_path / "state" / "queue.db", timeout=10) as db:
        row = db.execute("SELECT value FROM route_status WHERE route='customers'").fetchone()
    return row[0] if row else ""
