"""Fifty mistakes an integration engineer makes in a first config, each caught by
``outpost check`` before the service runs: the exit code (2: the file is invalid, 1: the
file is valid but the machine, database or table disagree), the exact key path, and the
fix the message gives.

The base config polls a real SQLite table (reflected, sampled) into Avro files, so the
checks that talk to a database run for real; ``check`` runs in-process through the CLI
function, so fifty cases take seconds.
"""
import copy
import socket
import sqlite3
from dataclasses import dataclass
from typing import Callable

import pytest
import yaml
from click.testing import CliRunner

from agent.cli import main

TABLE = """
CREATE TABLE cust (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, ctry TEXT, curr TEXT,
    tax_code TEXT, credit_lim NUMERIC(18,2), credit_text TEXT, updated_at TIMESTAMP NOT NULL, touched TIMESTAMP);
INSERT INTO cust VALUES ('C-1', 'Acme', '01', 'US', 'usd', 'NY', 10, '1.000,50', '2026-01-01 10:00:00', NULL);
"""


def base(tmp) -> dict:
    return yaml.safe_load(f"""
state_dir: {tmp}/state
lookups: {{legal_entity: {{'01': US01}}, tax_jurisdiction: {{NY: US-NY}}}}
mappings:
  customer:
    entity: Customer
    fields: {{customer_number: cust_no, name: cust_name, legal_entity: {{column: company, lookup: legal_entity}},
             country: ctry, currency: {{column: curr, convert: upper}},
             tax_jurisdiction: {{column: tax_code, lookup: tax_jurisdiction}},
             credit_limit: credit_lim, updated_at: updated_at}}
sources: {{erp: {{type: sql_poll, url: 'sqlite:///{tmp}/erp.db', lag_seconds: 0}}}}
sinks: {{outbox: {{type: avro_files, directory: {tmp}/outbox}}}}
routes: {{customers: {{source: erp, sink: outbox, mapping: customer, capture: {{table: cust, cursor: updated_at}}}}}}
""")


def _walk(doc, path):
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    return doc, last


def put(path, value) -> Callable:
    def edit(doc):
        parent, last = _walk(doc, path)
        parent[last] = value
    return edit


def drop(path) -> Callable:
    def edit(doc):
        parent, last = _walk(doc, path)
        del parent[last]
    return edit


def rename(path, new) -> Callable:
    def edit(doc):
        parent, last = _walk(doc, path)
        parent[new] = parent.pop(last)
    return edit


def both(*edits) -> Callable:
    def edit(doc):
        for one in edits:
            one(doc)
    return edit


@dataclass(frozen=True)
class Mistake:
    name: str
    edit: Callable
    code: int            # 2: config invalid; 1: check found a problem
    path: str            # the key path the message starts with
    fix: str             # part of the fix the message gives


F, C, S = "mappings.customer.fields", "routes.customers.capture", "sources.erp"
MISTAKES = [
    # -- the file itself (exit 2) ------------------------------------------------------------
    Mistake("section misspelt", rename("sources", "sourcs"), 2, "sourcs", "did you mean 'sources'"),
    Mistake("adapter type misspelt", put(f"{S}.type", "sql_pol"), 2, f"{S}.type", "did you mean 'sql_poll'"),
    Mistake("source option misspelt", put(f"{S}.lag_second", 3), 2, f"{S}.lag_second", "did you mean 'lag_seconds'"),
    Mistake("route names no source", put("routes.customers.source", "erpp"), 2, "routes.customers.source",
            "expected one of erp"),
    Mistake("route names no sink", put("routes.customers.sink", "outbx"), 2, "routes.customers.sink",
            "expected one of outbox"),
    Mistake("route names no mapping", put("routes.customers.mapping", "customers"), 2, "routes.customers.mapping",
            "expected one of customer"),
    Mistake("unknown entity", put("mappings.customer.entity", "Custmer"), 2, "mappings.customer.entity",
            "known: BillingMilestone, Contract, Customer"),
    Mistake("field misspelt", rename(f"{F}.name", "nme"), 2, f"{F}.nme", "expected a field of Customer"),
    Mistake("two origins for a field", put(f"{F}.name", {"column": "cust_name", "const": "x"}), 2, f"{F}.name",
            "give exactly one of 'column', 'const' or 'expr'"),
    Mistake("conversion misspelt", put(f"{F}.currency", {"column": "curr", "convert": "uppr"}), 2,
            f"{F}.currency.convert", "expected one of strip, upper"),
    Mistake("lookup misspelt", put(f"{F}.legal_entity", {"column": "company", "lookup": "legal_entty"}), 2,
            f"{F}.legal_entity.lookup", "expected one of legal_entity, tax_jurisdiction"),
    Mistake("negative interval", put("routes.customers.schedule", {"every": "-5s"}), 2,
            "routes.customers.schedule.every", "a duration such as 30s, 5m or 2h"),
    Mistake("cron in words", put("routes.customers.schedule", {"cron": "every 5 minutes"}), 2,
            "routes.customers.schedule", "such as '*/5 * * * *'"),
    Mistake("interval and cron", put("routes.customers.schedule", {"every": "5s", "cron": "*/5 * * * *"}), 2,
            "routes.customers.schedule", "exactly one of 'every' or 'cron'"),
    Mistake("duration misspelt", put("shutdown_timeout", "10 minuts"), 2, "shutdown_timeout",
            "a duration such as 30s"),
    Mistake("size in words", put("queue.max_bytes", "2 gigs"), 2, "queue.max_bytes", "a size such as 500MB or 2GiB"),
    Mistake("log level", put("log.level", "VERBOSE"), 2, "log.level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    Mistake("log format", put("log.format", "xml"), 2, "log.format", "'text' or 'json'"),
    Mistake("port out of range", put("http.port", 70000), 2, "http.port", "less than or equal to 65535"),
    Mistake("topic placeholder misspelt", put("fabric.topic_template", "erp.{entty}"), 2, "fabric.topic_template",
            "did you mean {entity}?"),
    Mistake("topic brace unclosed", put("fabric.topic_template", "erp.{entity"), 2, "fabric.topic_template",
            "write a literal brace as '{{'"),
    Mistake("sink topic placeholder", put("sinks.bus", {"type": "kafka", "topic_template": "x.{Entty}"}), 2,
            "sinks.bus.topic_template", "did you mean {Entity}?"),
    Mistake("no cursor", drop(f"{C}.cursor"), 2, C, "'cursor' (the change-tracking column, e.g. updated_at)"),
    Mistake("snapshot of nothing", both(put(f"{C}.mode", "snapshot_only"), put(f"{C}.snapshot", "none")), 2, C,
            "would read nothing"),
    Mistake("source zone misspelt", put(f"{S}.source_timezone", "Europe/Berln"), 2, f"{S}.source_timezone",
            "an IANA name such as 'Europe/Berlin'"),
    Mistake("mapping zone unknown", put("mappings.customer.source_timezone", "Mars/Olympus"), 2,
            "mappings.customer.source_timezone", "expected an IANA time zone"),
    Mistake("secret variable unset", put(f"{S}.url", "postgresql://u:${OUTPOST_MISCONFIG_UNSET}@h/db"), 2,
            f"{S}.url", "expected environment variable OUTPOST_MISCONFIG_UNSET to be set"),
    Mistake("secret file missing", put(f"{S}.url", "postgresql://u:${file:/nonexistent/pw}@h/db"), 2, f"{S}.url",
            "expected a readable secret file"),
    Mistake("systemd credential missing", put(f"{S}.url", "postgresql://u:${credential:db_pw}@h/db"), 2, f"{S}.url",
            "LoadCredential="),
    Mistake("filter not an expression", put("routes.customers.filter", "ctry =="), 2, "routes.customers.filter",
            "not a valid expression"),
    Mistake("unknown function", put(f"{F}.name", {"expr": "titlecase(cust_name)"}), 2, f"{F}.name.expr",
            "known: abs, add_days"),
    Mistake("sink without directory", drop("sinks.outbox.directory"), 2, "sinks.outbox.directory", "Field required"),
    Mistake("sink option misspelt", rename("sinks.outbox.directory", "directry"), 2, "sinks.outbox.directry",
            "did you mean 'directory'"),
    Mistake("business key unmapped", drop(f"{F}.customer_number"), 2, f"{F}.customer_number",
            "required by Customer, found no rule for it"),
    Mistake("delivery batch zero", put("queue.delivery_batch", 0), 2, "queue.delivery_batch",
            "greater than or equal to 1"),
    Mistake("ha group with a space", put("ha", {"group": "a b"}), 2, "ha.group", "[A-Za-z0-9._-]"),
    Mistake("zero partitions", put("fabric.topic_partitions", 0), 2, "fabric.topic_partitions",
            "greater than or equal to 1"),
    Mistake("batch size zero", put(f"{S}.batch_size", 0), 2, f"{S}.batch_size", "greater than 0"),
    Mistake("soft delete without a rule", put(f"{C}.soft_delete", {"column": "x"}), 2, f"{C}.soft_delete",
            "exactly one of 'value' or 'not_null: true'"),
    Mistake("sink type misspelt", put("sinks.outbox.type", "avro_file"), 2, "sinks.outbox.type",
            "did you mean 'avro_files'"),
    # -- the file is valid; the machine or the database disagree (exit 1) -------------------
    Mistake("url not a URL", put(f"{S}.url", "not a url"), 1, f"{S}.url", "dialect+driver://user@host/database"),
    Mistake("mapped column missing", put(f"{F}.name", "cust_nme"), 1, f"{F}.name.column",
            "did you mean 'cust_name'"),
    Mistake("text behind a decimal", put(f"{F}.credit_limit", "credit_text"), 1, f"{F}.credit_limit.column",
            "e.g. '1.000,50'"),
    Mistake("nullable cursor", put(f"{C}.cursor", "touched"), 1, f"{C}.cursor", "Make the column NOT NULL"),
    Mistake("state_dir under a file", put("state_dir", "/etc/hostname/state"), 1, "state_dir",
            "is a file, not a directory"),
    Mistake("table misspelt", put(f"{C}.table", "custs"), 1, f"{C}.table", "did you mean 'cust'"),
    Mistake("cursor misspelt", put(f"{C}.cursor", "updated"), 1, f"{C}.cursor", "did you mean 'updated_at'"),
    Mistake("columns option leaves out a mapped column", put(f"{C}.columns", ["cust_no", "cust_name", "company",
                                                                              "updated_at"]),
            1, f"{C}.columns", "does not list column 'ctry'"),
    Mistake("primary key misspelt", put(f"{C}.primary_key", "cust_id"), 1, f"{C}.primary_key",
            "did you mean 'cust_no'"),
    Mistake("soft delete column missing", put(f"{C}.soft_delete", {"column": "deleted", "value": 1}), 1,
            f"{C}.soft_delete.column", "its columns: company"),
    Mistake("text cursor", put(f"{C}.cursor", "cust_name"), 1, f"{C}.cursor", "timestamp or an integer column"),
    Mistake("status port busy", put("http", {"enabled": True, "port": "BUSY"}), 1, "http.port", "pick a free port"),
]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("misconfig")
    with sqlite3.connect(tmp / "erp.db") as db:
        db.executescript(TABLE)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield tmp, busy.getsockname()[1]


def check(tmp, document, monkeypatch) -> tuple[int, str]:
    import agent.logs
    monkeypatch.setattr(agent.logs, "setup", lambda *a, **k: None)    # keep pytest's log capture
    path = tmp / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    return result.exit_code, result.output


def test_the_base_config_passes(place, monkeypatch):
    code, output = check(place[0], base(place[0]), monkeypatch)
    assert code == 0, output


def test_a_view_is_not_asked_for_an_index(place, monkeypatch):
    tmp = place[0]
    with sqlite3.connect(tmp / "erp.db") as db:
        db.execute("CREATE VIEW IF NOT EXISTS cust_v AS SELECT * FROM cust")
    document = base(tmp)
    document["routes"]["customers"]["capture"]["table"] = "cust_v"
    document["routes"]["customers"]["capture"]["primary_key"] = "cust_no"
    code, output = check(tmp, document, monkeypatch)
    assert code == 0 and "no index" not in output, output
    code, output = check(tmp, base(tmp), monkeypatch)
    assert "warning: no index starts with cursor column 'updated_at' on cust" in output, "a table still is"


def test_the_mistakes_are_distinct():
    assert len(MISTAKES) >= 40 and len({m.name for m in MISTAKES}) == len(MISTAKES)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_check_names_the_key_and_the_fix(mistake, place, monkeypatch):
    tmp, busy_port = place
    monkeypatch.delenv("OUTPOST_MISCONFIG_UNSET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    document = copy.deepcopy(base(tmp))
    mistake.edit(document)
    if document.get("http", {}).get("port") == "BUSY":
        document["http"]["port"] = busy_port
    code, output = check(tmp, document, monkeypatch)
    lines = [line[4:] for line in output.splitlines() if line.startswith("  - ") and "warning:" not in line]
    named = [line for line in lines if line.startswith(mistake.path + ":") or line.startswith(mistake.path + " ")]
    assert code == mistake.code, output
    assert named, f"no problem starts with {mistake.path}:\n{output}"
    assert any(mistake.fix in line for line in named), f"no fix {mistake.fix!r} in:\n" + "\n".join(named)
    assert "Traceback" not in output and "KeyError" not in output
