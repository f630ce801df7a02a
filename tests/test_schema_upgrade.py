"""An upgrade that brings a new canonical schema version, with events still queued.

The old agent wrote its backlog with schema v2 while the fabric was unreachable. The new
agent knows v3, and v2 only as ``avro/released/v2`` (docs/schemas.md, "Changing a schema").
The queued events keep their v2 fingerprint and v2 bodies. They must be delivered under
v2, not parked as "unknown schema fingerprint" (a whole backlog in the exception queue).
New changes go out as v3.

Real PostgreSQL, real tansu, real SQLite queue; the schema registry is the HTTP double.
"""
import json
import shutil
import time
import uuid
from decimal import Decimal

from agent import config as config_module
from agent.checks import _queued_schemas
from agent.runtime import Agent
from agent.schemas import SchemaCatalog, find_schema_dir
from tests.support.route import create_tables, decode_messages, insert_customers, route_config


def _upgraded(tmp_path):
    """(the schema folder of the old agent, that of the new one: Customer v3 adds a
    nullable field, and v2 is released)."""
    old = tmp_path / "avro-v2"
    shutil.copytree(find_schema_dir(), old)
    new = tmp_path / "avro-v3"
    shutil.copytree(old, new)
    current = SchemaCatalog.load(old).entity("Customer").schema
    (new / "released" / "v2").mkdir(parents=True, exist_ok=True)
    (new / "released" / "v2" / "Customer.avsc").write_text(json.dumps(current, indent=1))
    source = json.loads((new / "Customer.avsc").read_text())
    assert source["outpost.version"] == 2, "this test assumes Customer is at v2 today"
    source["outpost.version"] = 3
    payload = next(f for f in source["fields"] if f["name"] == "before")["type"][1]
    payload["fields"].append({"name": "segment", "type": ["null", "string"], "default": None})
    (new / "Customer.avsc").write_text(json.dumps(source, indent=1))
    return old, new


def test_a_released_version_is_found_by_its_fingerprint(tmp_path):
    old, new = _upgraded(tmp_path)
    v2, catalog = SchemaCatalog.load(old).entity("Customer"), SchemaCatalog.load(new)
    assert catalog.entity("Customer").version == 3 and catalog.entity("Customer").fingerprint != v2.fingerprint
    found = catalog.by_fingerprint(v2.fingerprint)
    assert found.version == 2 and found.schema == v2.schema
    assert catalog.by_fingerprint(catalog.entity("Customer").fingerprint).version == 3


def _agent(tmp_path, pg_url, broker, registry, schema_dir, prefix, deliver):
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, lag=0, topic_prefix=prefix)
    document["schema_dir"] = str(schema_dir)
    agent = Agent(config_module.parse(document), drain_timeout=10)
    agent.build()
    if deliver:
        agent.start(capture=False)
    return agent


def test_events_queued_before_an_upgrade_are_delivered_under_their_schema(tmp_path, pg_url, broker, registry):
    old, new = _upgraded(tmp_path)
    prefix = f"upg{uuid.uuid4().hex[:8]}"
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 21), limit=Decimal("1234.56"))
    before = _agent(tmp_path, pg_url, broker, registry, old, prefix, deliver=False)
    try:
        assert before.run_pass() == 20        # captured, not delivered: the fabric was "down"
    finally:
        before.stop()
    after = _agent(tmp_path, pg_url, broker, registry, new, prefix, deliver=True)
    try:
        insert_customers(engine, range(21, 26), limit=Decimal("1234.56"))
        assert after.run_pass() == 5
        deadline = time.monotonic() + 30
        while after.queue.depth() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after.queue.depth() == 0
        assert after.queue.count_exceptions() == 0, [e["reason"] for e in after.queue.exceptions()]
        events = decode_messages(broker.consume(f"{prefix}.customer", expected=25, timeout=30), registry)
    finally:
        after.stop()
    versions = {e["after"]["customer_number"]: e["metadata"]["schema_version"] for e in events}
    assert versions == {**{f"C-{n:05d}": 2 for n in range(1, 21)}, **{f"C-{n:05d}": 3 for n in range(21, 26)}}
    assert all(("segment" in e["after"]) == (versions[e["after"]["customer_number"]] == 3) for e in events)
    assert {e["after"]["credit_limit"] for e in events} == {Decimal("1234.56")}
    assert len(registry.subjects[f"{prefix}.customer-value"]) == 2, "v2 and v3 registered"


def test_check_names_a_backlog_whose_schema_the_new_version_lacks(tmp_path, pg_url, broker, registry):
    """``outpost check`` with the new version, before the service starts (packaging/README.md,
    "Upgrade"): a backlog written with a schema that was never released would be parked."""
    old, new = _upgraded(tmp_path)
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 8))
    before = _agent(tmp_path, pg_url, broker, registry, old, f"chk{uuid.uuid4().hex[:8]}", deliver=False)
    try:
        assert before.run_pass() == 7
    finally:
        before.stop()
    cfg = config_module.parse({**route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url),
                               "schema_dir": str(new)})
    assert _queued_schemas(cfg, SchemaCatalog.load(new)) == [], "v2 is released: the backlog has its schema"
    shutil.rmtree(new / "released" / "v2")
    (problem,) = _queued_schemas(cfg, SchemaCatalog.load(new))
    assert problem.startswith("queue: 7 queued Customer event(s) were written with schema ") and \
        "neither has nor has released" in problem and str(new / "released") in problem, problem
    assert SchemaCatalog.load(old).entity("Customer").fingerprint[:12] in problem
    assert before.queue.depth() == 7, "the check only read the queue"
