"""`outpost demo`: the whole outbound route on an embedded default, no external service.

A SQLite "legacy ERP" is seeded, the polling route captures it into Avro container
files (the `avro_files` sink), a few changes are made (one of them with an unknown
legal entity, which lands in the exception queue), and the decoded canonical events
and the status are printed.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import fastavro

from . import config as config_module
from .runtime import Agent
from .status import collect, render

_SEED = """
CREATE TABLE IF NOT EXISTS cust (
    cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, ctry TEXT, curr TEXT,
    tax_code TEXT, credit_lim NUMERIC, updated_at DATETIME NOT NULL);
CREATE TABLE IF NOT EXISTS inv_hdr (
    inv_no TEXT PRIMARY KEY, cust_no TEXT, company TEXT, curr TEXT, tax_code TEXT, inv_date TEXT,
    net REAL, tax REAL, gross REAL, status TEXT, updated_at DATETIME NOT NULL);
CREATE INDEX IF NOT EXISTS cust_updated ON cust (updated_at);
CREATE INDEX IF NOT EXISTS inv_hdr_updated ON inv_hdr (updated_at);
"""

_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def demo_config(directory: Path) -> dict:
    database = directory / "legacy-erp.db"
    return {
        "state_dir": str(directory / "state"),
        "lookups": {"legal_entity": {"01": "US01", "02": "UK01"},
                    "tax_jurisdiction": {"NY": "US-NY", "LDN": "GB"}},
        "mappings": {
            "customer": {"entity": "Customer", "fields": {
                "customer_number": "cust_no", "name": {"column": "cust_name", "convert": ["strip"]},
                "legal_entity": {"column": "company", "lookup": "legal_entity"}, "country": "ctry",
                "currency": {"column": "curr", "convert": ["upper"]},
                "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"},
                "credit_limit": "credit_lim", "updated_at": "updated_at"}},
            "invoice": {"entity": "Invoice", "fields": {
                "invoice_number": "inv_no", "customer_number": "cust_no",
                "legal_entity": {"column": "company", "lookup": "legal_entity"}, "currency": "curr",
                "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"},
                "invoice_date": "inv_date", "net_amount": "net", "tax_amount": "tax", "total_amount": "gross",
                "status": "status"}},
        },
        # lag 0 is safe here only because the demo is the single writer of its database
        "sources": {"erp": {"type": "sql_poll", "url": f"sqlite:///{database}", "lag_seconds": 0}},
        "sinks": {"outbox": {"type": "avro_files", "directory": str(directory / "outbox"), "rotate_seconds": 3600}},
        "routes": {
            "customers": {"source": "erp", "sink": "outbox", "mapping": "customer",
                          "capture": {"table": "cust", "cursor": "updated_at"}, "schedule": {"every": "5s"}},
            "invoices": {"source": "erp", "sink": "outbox", "mapping": "invoice",
                         "capture": {"table": "inv_hdr", "cursor": "updated_at"}, "schedule": {"every": "5s"}},
        },
    }


def _seed(database: Path) -> None:
    with sqlite3.connect(database) as db:
        db.executescript(_SEED)
        db.executemany(f"INSERT OR REPLACE INTO cust VALUES (?,?,?,?,?,?,?,{_NOW})", [
            ("C-1001", "Acme Consulting LLC", "01", "US", "usd", "NY", "250000.00"),
            ("C-1002", "Brightwater Partners Ltd", "02", "GB", "GBP", "LDN", "120000.50"),
        ])
        db.executemany(f"INSERT OR REPLACE INTO inv_hdr VALUES (?,?,?,?,?,?,?,?,?,?,{_NOW})", [
            # amounts kept in doubles, as legacy schemas do: mapped to exact decimals
            ("INV-9001", "C-1001", "01", "USD", "NY", "2026-11-02", 10000.10, 887.51, 10887.61, "open"),
        ])


def _change(database: Path) -> None:
    with sqlite3.connect(database) as db:
        db.execute(f"UPDATE cust SET credit_lim='300000.00', updated_at={_NOW} WHERE cust_no='C-1001'")
        db.execute(f"INSERT OR REPLACE INTO inv_hdr VALUES ('INV-9002','C-1002','02','GBP','LDN','2026-11-20',"
                   f"5000.00,1000.00,6000.00,'open',{_NOW})")
        # an unknown legal entity: goes to the exception queue, never to the fabric
        db.execute(f"INSERT OR REPLACE INTO cust VALUES ('C-1003','Nordlicht GmbH','07','DE','EUR','NY',"
                   f"'50000',{_NOW})")


def _capture(agent: Agent) -> None:
    time.sleep(1.1)     # SQLite's clock has second resolution: let the signpost pass the rows
    agent.run_pass()
    agent.deliver_all()


_MARK = ".outpost-demo"     # only a directory the demo made is reset on a re-run


def _reset(directory: Path) -> None:
    """A re-run starts from the same seed: what an earlier run left (its database, queue,
    outbox) is removed, in a directory the demo marked as its own and nowhere else."""
    if not (directory / _MARK).exists():
        return
    for name in ("legacy-erp.db", "outpost.yaml"):
        (directory / name).unlink(missing_ok=True)
    for name in ("state", "outbox"):
        shutil.rmtree(directory / name, ignore_errors=True)


def run_demo(directory: Path) -> None:
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    _reset(directory)
    (directory / _MARK).write_text("made by outpost demo; a re-run resets this directory\n", encoding="utf-8")
    database = directory / "legacy-erp.db"
    _seed(database)
    cfg = config_module.parse(demo_config(directory))
    agent = Agent(cfg)
    agent.build()
    agent.start(capture=False)
    print(f"1. seeded {database}; first capture (initial snapshot)")
    _capture(agent)
    print("2. changed a credit limit, added an invoice and a customer with an unknown legal entity")
    _change(database)
    _capture(agent)
    agent.stop()        # finalises the open outbox files

    print(f"\n3. canonical events in {directory / 'outbox'} (polling reads each row's latest version: "
          "UPDATE is a new or a changed row, it cannot tell which; SNAPSHOT is the first read):")
    for path in sorted((directory / "outbox").glob("*/*.avro")):
        with open(path, "rb") as handle:
            for event in fastavro.reader(handle):
                meta = event["metadata"]
                print(f"  {path.parent.name:<9} {meta['operation']:<8} key={event['key']:<9} "
                      f"id={meta['event_id'][:8]} {json.dumps(event['after'], default=str)}")
    print("\n4. status:")
    print(render(collect(cfg)))
    config_path = directory / "outpost.yaml"
    config_path.write_text(_as_yaml(demo_config(directory)), encoding="utf-8")
    print(f"\nThe rejected record, with its row, mapping and failed rule: outpost queue list -c {config_path}")


def _as_yaml(document: dict) -> str:
    import yaml
    return yaml.safe_dump(document, sort_keys=False)
