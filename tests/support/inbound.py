"""Helpers for inbound tests: canonical Customer events, a producer that frames them the
Confluent way (magic byte + registry id) for the real tansu broker, and configs.

The registry is the HTTP double of ``registry_double`` (no registry server can run here).
"""
from __future__ import annotations

import copy

import datetime as dt
import struct
import uuid
from decimal import Decimal
from typing import Optional

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from agent.contracts import QueuedEvent
from agent.schemas import SchemaCatalog

CATALOG = SchemaCatalog.load()
CUSTOMER = CATALOG.entity("Customer")
T0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.timezone.utc)

# legacy ERP customer table, as the CRM's updates must land in it
LOCAL_DDL = {
    "default": ("CREATE TABLE erp_customer (cust_no VARCHAR(20) PRIMARY KEY, cust_name VARCHAR(60) NOT NULL,"
                " company VARCHAR(4), curr VARCHAR(3), tax_code VARCHAR(8), credit_lim NUMERIC(18,2),"
                " status VARCHAR(10), updated_at {ts}, deleted CHAR(1) DEFAULT 'N')"),
    "audit": "CREATE TABLE apply_audit (n INTEGER PRIMARY KEY {auto}, cust_no VARCHAR(20), cust_name VARCHAR(60))",
}
LOOKUPS = {"legal_entity": {"01": "US01", "02": "UK01"}, "tax_jurisdiction": {"NY": "US-NY", "LDN": "GB"}}
REVERSE = {"Customer": {"tables": [{
    "table": "erp_customer", "key": "cust_no",
    "columns": {"cust_no": "customer_number", "cust_name": "name",
                "company": {"field": "legal_entity", "lookup": "legal_entity"},
                "curr": "currency", "tax_code": {"field": "tax_jurisdiction", "lookup": "tax_jurisdiction"},
                "credit_lim": "credit_limit", "status": "status", "updated_at": "updated_at"},
    "conflict": {"mode": "timestamp", "column": "updated_at", "field": "updated_at"},
    "delete": {"policy": "soft", "column": "deleted", "value": "Y"}}]}}


# a legacy invoice table: uppercase names, a version column kept by a trigger
INVOICE_DDL = ("CREATE TABLE {q}INVOICE{q} ({q}INVNO{q} VARCHAR(20) PRIMARY KEY, {q}CUSTNO{q} VARCHAR(20) NOT NULL,"
               " {q}COMPANY{q} VARCHAR(4), {q}CURR{q} CHAR(3), {q}TAXCODE{q} VARCHAR(8), {q}INVDATE{q} DATE,"
               " {q}NET{q} NUMERIC(18,2), {q}TAX{q} NUMERIC(18,2), {q}GROSS{q} NUMERIC(18,2), {q}STATUS{q} VARCHAR(12),"
               " {q}ROWVER{q} INTEGER NOT NULL DEFAULT 1)")
INVOICE_REVERSE = {"Invoice": {"tables": [{
    "table": "INVOICE", "key": "INVNO",
    "columns": {"INVNO": "invoice_number", "CUSTNO": "customer_number",
                "COMPANY": {"field": "legal_entity", "lookup": "legal_entity"}, "CURR": "currency",
                "TAXCODE": {"field": "tax_jurisdiction", "lookup": "tax_jurisdiction"}, "INVDATE": "invoice_date",
                "NET": "net_amount", "TAX": "tax_amount", "GROSS": "total_amount", "STATUS": "status"}}]}}


def create_invoices(engine) -> None:
    """The INVOICE table, its ROWVER bumped by a trigger on every update."""
    dialect = engine.dialect.name
    q = '"' if dialect == "postgresql" else "`"
    with engine.begin() as conn:
        conn.exec_driver_sql(INVOICE_DDL.format(q=q))
        if dialect == "postgresql":
            conn.exec_driver_sql('CREATE FUNCTION bump_rowver() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN'
                                 ' NEW."ROWVER" := OLD."ROWVER" + 1; RETURN NEW; END $$')
            conn.exec_driver_sql('CREATE TRIGGER invoice_rowver BEFORE UPDATE ON "INVOICE" FOR EACH ROW'
                                 ' EXECUTE FUNCTION bump_rowver()')
        else:
            conn.exec_driver_sql("CREATE TRIGGER invoice_rowver BEFORE UPDATE ON INVOICE FOR EACH ROW"
                                 " SET NEW.ROWVER = OLD.ROWVER + 1")


def invoice(no: str, customer_number: str = "C-1", *, status: str = "OPEN", company: str = "US01",
            net: str = "100.00", **extra) -> dict:
    net_amount = Decimal(net)
    return {"invoice_number": no, "customer_number": customer_number, "legal_entity": company, "currency": "USD",
            "tax_jurisdiction": "US-NY", "invoice_date": dt.date(2026, 11, 1), "due_date": None,
            "net_amount": net_amount, "tax_amount": (net_amount * Decimal("0.19")).quantize(Decimal("0.01")),
            "total_amount": (net_amount * Decimal("1.19")).quantize(Decimal("0.01")), "status": status, **extra}


def create_local(engine, with_audit: bool = True) -> None:
    """The target table plus (optionally) an audit trigger counting every write to it."""
    dialect = engine.dialect.name
    ts = {"postgresql": "TIMESTAMPTZ", "sqlite": "DATETIME", "mysql": "DATETIME(6)"}[dialect]
    auto = {"postgresql": "GENERATED ALWAYS AS IDENTITY", "sqlite": "AUTOINCREMENT", "mysql": "AUTO_INCREMENT"}[dialect]
    with engine.begin() as conn:
        conn.exec_driver_sql(LOCAL_DDL["default"].format(ts=ts))
        if not with_audit:
            return
        conn.exec_driver_sql(LOCAL_DDL["audit"].format(auto=auto))
        for op in ("INSERT", "UPDATE"):
            if dialect == "postgresql":
                if op == "INSERT":
                    conn.exec_driver_sql(
                        "CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                        " INSERT INTO apply_audit (cust_no, cust_name) VALUES (NEW.cust_no, NEW.cust_name);"
                        " RETURN NEW; END $$")
                conn.exec_driver_sql(f"CREATE TRIGGER audit_{op.lower()} AFTER {op} ON erp_customer"
                                     " FOR EACH ROW EXECUTE FUNCTION audit_write()")
            else:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER audit_{op.lower()} AFTER {op} ON erp_customer FOR EACH ROW"
                    + (" BEGIN " if dialect == "sqlite" else " ")
                    + "INSERT INTO apply_audit (cust_no, cust_name) VALUES (NEW.cust_no, NEW.cust_name)"
                    + ("; END" if dialect == "sqlite" else ""))


def customer(no: str, name: str = "Acme", *, limit: str = "100.00", company: str = "US01",
             updated_at: Optional[dt.datetime] = None, **extra) -> dict:
    return {"customer_number": no, "name": name, "legal_entity": company, "country": "US", "currency": "USD",
            "tax_jurisdiction": "US-NY", "credit_limit": Decimal(limit), "status": "active",
            "updated_at": updated_at or T0, **extra}


def event(after: Optional[dict], *, before: Optional[dict] = None, operation: str = "UPDATE",
          event_id: Optional[str] = None, correlation_id: Optional[str] = None, entity: str = "Customer",
          occurred_at: Optional[dt.datetime] = None, version: Optional[int] = None) -> dict:
    """A canonical event of ``entity`` (Customer by default) as the fabric publishes it."""
    image = after or before
    identity = event_id or str(uuid.uuid4())
    metadata = {"event_id": identity, "correlation_id": correlation_id or f"corr-{identity}",
                "causation_id": "crm-deal-1", "source": {"system": "crm", "object": "deal", "position": identity},
                "operation": operation, "occurred_at": occurred_at or T0, "captured_at": T0, "schema_version": 2}
    if version is not None:
        metadata["version"] = version
    return {"metadata": metadata, "key": image[CATALOG.entity(entity).key_field], "before": before, "after": after}


def queued(events: list[dict], route: str = "inbound", entity: str = "Customer") -> list[QueuedEvent]:
    """Events as the pass-through translator would queue them (for direct sink tests)."""
    schema, out = CATALOG.entity(entity), []
    for seq, e in enumerate(events, 1):
        op = e["metadata"]["operation"].lower()
        out.append(QueuedEvent(seq, e["metadata"]["event_id"], route, entity, e["key"], schema.fingerprint,
                               schema.encode(e), e["metadata"]["correlation_id"], op, 0.0))
    return out


class FabricProducer:
    """Publishes canonical events as the fabric does: Confluent framing, registry id."""

    def __init__(self, bootstrap: str, registry_url: str, topic: str, entity: str = "Customer"):
        self.topic, self.schema = topic, CATALOG.entity(entity)
        self.registry = SchemaRegistryClient({"url": registry_url})
        self.schema_id = self.registry.register_schema(f"{topic}-value", Schema(self.schema.schema_json, "AVRO"))
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})

    def send(self, events: list[dict], raw: Optional[list[bytes]] = None) -> None:
        for e in events:
            self.producer.produce(self.topic, key=e["key"].encode(), value=self.frame(self.schema.encode(e)),
                                  headers=[("event_id", e["metadata"]["event_id"].encode())])
        for value in raw or []:
            self.producer.produce(self.topic, key=b"poison", value=value)
        assert self.producer.flush(30) == 0

    def frame(self, body: bytes, schema_id: Optional[int] = None) -> bytes:
        return b"\x00" + struct.pack(">I", schema_id or self.schema_id) + body


TANSU_CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def inbound_config(state_dir, db_url: str, bootstrap: str, registry_url: str, topic: str, *,
                   reverse: Optional[dict] = None, sink_extra: Optional[dict] = None, consumer: Optional[dict] = None,
                   every: str = "0.2s") -> dict:
    return {
        "state_dir": str(state_dir),
        "fabric": {"kafka": {"bootstrap.servers": bootstrap}, "schema_registry": {"url": registry_url}},
        "sources": {"fabric_in": {"type": "kafka", "topics": [topic], "group_id": f"g-{uuid.uuid4().hex[:8]}",
                                  # tansu holds a join for about half the session timeout
                                  "poll_timeout_s": 0.5, "consumer": {**TANSU_CONSUMER, **(consumer or {})}}},
        "sinks": {"erp_apply": {"type": "sql_apply", "url": db_url, "entities": reverse or REVERSE,
                                "lookups": copy.deepcopy(LOOKUPS), **(sink_extra or {})}},
        "routes": {"inbound": {"source": "fabric_in", "sink": "erp_apply", "schedule": {"every": every}}},
    }


def write_config(path, document: dict):
    """The config as the agent process reads it (YAML next to the test's state)."""
    import yaml
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def new_topic(broker, name: str, partitions: int = 1) -> str:
    topic = f"{name}{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=partitions)
    return topic


def rows(engine, sql) -> list[tuple]:
    """The rows of ``sql``; [] while its table does not exist yet (the applier creates its own)."""
    import sqlalchemy as sa
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    except sa.exc.ProgrammingError:
        return []
