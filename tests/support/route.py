"""Helpers for end-to-end tests: a PostgreSQL 'legacy ERP' table and a matching config.

The registry used with these configs is the HTTP double of ``registry_double`` (no
schema-registry server is installable here); everything else is real.
"""
from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Optional

import sqlalchemy as sa

CUSTOMER_DDL = """
CREATE TABLE erp_customer (
    cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT, tax_code TEXT,
    credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())
"""
INVOICE_DDL = """
CREATE TABLE erp_invoice (
    inv_no TEXT PRIMARY KEY, cust_no TEXT, company TEXT, curr TEXT, tax_code TEXT, inv_date DATE,
    net NUMERIC(18,2), tax NUMERIC(18,2), gross NUMERIC(18,2), status TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())
"""

LOOKUPS = {"legal_entity": {"01": "US01", "02": "UK01"}, "tax_jurisdiction": {"NY": "US-NY", "LDN": "GB"}}
CUSTOMER_MAPPING = {"entity": "Customer", "fields": {
    "customer_number": "cust_no", "name": "cust_name", "legal_entity": {"column": "company", "lookup": "legal_entity"},
    "currency": "curr", "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"},
    "credit_limit": "credit_lim", "updated_at": "updated_at"}}
INVOICE_MAPPING = {"entity": "Invoice", "fields": {
    "invoice_number": "inv_no", "customer_number": "cust_no",
    "legal_entity": {"column": "company", "lookup": "legal_entity"}, "currency": "curr",
    "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"}, "invoice_date": "inv_date",
    "net_amount": "net", "tax_amount": "tax", "total_amount": "gross", "status": "status"}}


def create_tables(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(CUSTOMER_DDL)
        conn.exec_driver_sql(INVOICE_DDL)
    return engine


def insert_customers(engine: sa.Engine, numbers, limit: Decimal = Decimal("1000.00"), company: str = "01") -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                             " VALUES (:no, :name, :co, 'USD', 'NY', :lim)"),
                     [{"no": f"C-{n:05d}", "name": f"Customer {n}", "co": company, "lim": limit} for n in numbers])


def write_stream(engine: sa.Engine, rows: int, committed, chunk: int = 25, pause: float = 0.02) -> None:
    """Inserts C-00001.. in small transactions, as a busy ERP would (credit limit = the row's
    number); ``committed(numbers)`` after each commit."""
    with engine.connect() as conn:
        for start in range(1, rows + 1, chunk):
            numbers = range(start, min(start + chunk, rows + 1))
            with conn.begin():
                conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code,"
                                     " credit_lim) VALUES (:no, :name, '01', 'USD', 'NY', :lim)"),
                             [{"no": f"C-{n:05d}", "name": f"Customer {n}", "lim": n} for n in numbers])
            committed(numbers)
            time.sleep(pause)


def route_config(state_dir, pg_url: str, bootstrap: str, registry_url: str, *, topic_prefix: Optional[str] = None,
                 invoices: bool = False, every: str = "0.2s", lag: float = 0.3,
                 delivery_timeout: float = 30) -> dict:
    prefix = topic_prefix or f"t{uuid.uuid4().hex[:8]}"
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": every},
                            "capture": {"table": "erp_customer", "cursor": "updated_at", "batch_size": 500}}}
    if invoices:
        routes["invoices"] = {"source": "erp", "sink": "fabric", "mapping": "invoice", "schedule": {"every": every},
                              "capture": {"table": "erp_invoice", "cursor": "updated_at"}}
    return {
        "state_dir": str(state_dir),
        "fabric": {"kafka": {"bootstrap.servers": bootstrap}, "schema_registry": {"url": registry_url},
                   "topic_template": prefix + ".{entity}", "create_topics": True, "topic_partitions": 3},
        "lookups": LOOKUPS,
        "mappings": {"customer": CUSTOMER_MAPPING, "invoice": INVOICE_MAPPING},
        "sources": {"erp": {"type": "sql_poll", "url": pg_url, "lag_seconds": lag, "system": "acme-erp"}},
        "sinks": {"fabric": {"type": "kafka", "delivery_timeout_s": delivery_timeout}},
        "routes": routes,
    }


def decode_messages(messages, registry, catalog=None) -> list[dict]:
    """Confluent-framed values decoded with the schema the registry holds for their id."""
    import io
    import json

    import fastavro
    parsed = {}
    out = []
    for msg in messages:
        value = msg.value()
        assert value[0] == 0, "Confluent magic byte"
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id not in parsed:
            parsed[schema_id] = fastavro.parse_schema(json.loads(registry.schemas_by_id[schema_id]["schema"]))
        event = fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed[schema_id], parsed[schema_id])
        event["_headers"] = {k: v.decode() for k, v in (msg.headers() or [])}
        event["_key"] = msg.key().decode()
        event["_partition"] = msg.partition()
        event["_timestamp"] = msg.timestamp()[1] / 1000      # when the producer made it (CreateTime)
        out.append(event)
    return out
