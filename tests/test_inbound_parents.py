"""Parents before children (issue 10, defect 4): a closed-won deal arrives children first
(one topic per entity, no order across them); a child whose parent row is not there yet
waits, visible in ``status``, and is applied once its parent committed; only a parent
that never arrives parks the child, naming the missing parent.

Real agent process (``tests/support/agent_process.py``), real ``outpost status``, real
tansu broker, real PostgreSQL and MariaDB tables joined by foreign keys. The schema
registry is the HTTP double of ``tests/support/registry_double.py`` (no registry server
can run here).
"""
import json

import sqlalchemy as sa

from tests.support import deals
from tests.support.agent_process import AgentProcess, open_exceptions, outpost, queue_depth
from tests.support.inbound import FabricProducer, inbound_config, new_topic, write_config


def setup(tmp_path, url, broker, registry, **sink_extra):
    engine = sa.create_engine(url)
    deals.create_tables(engine)
    topics = {entity: new_topic(broker, entity.lower()[:6], partitions=3) for entity in deals.ENTITIES}
    producers = {entity: FabricProducer(broker.bootstrap, registry.url, topic, entity=entity)
                 for entity, topic in topics.items()}
    document = inbound_config(tmp_path / "state", url, broker.bootstrap, registry.url, topics["Customer"],
                              reverse=deals.REVERSE, sink_extra=sink_extra)
    document["sources"]["fabric_in"]["topics"] = list(topics.values())
    document["sinks"]["erp_apply"]["lookups"] = deals.SINK_LOOKUPS
    path = write_config(tmp_path / "outpost.yaml", document)
    return engine, producers, path, AgentProcess(path, tmp_path / "agent.log")


def status_of(path) -> dict:
    return json.loads(outpost("status", "--json", "-c", path).stdout)["routes"]["inbound"]


def test_a_thousand_closed_won_deals_children_first_apply_with_nothing_parked(tmp_path, server_url, broker,
                                                                             registry):
    engine, producers, path, agent = setup(tmp_path, server_url, broker, registry)
    stream = [deals.deal(n) for n in range(1000)]
    with agent:
        for entity in deals.ENTITIES[:-1]:              # milestones, invoices, projects: all children
            producers[entity].send([e for d in stream for e in d[entity]])
        children = 5000
        assert agent.until(lambda: status_of(path).get("captured_total", 0) == children, timeout=120), \
            agent.log()[-3000:]
        assert agent.until(lambda: status_of(path).get("waiting", 0) >= 2000, timeout=60), status_of(path)
        waiting = status_of(path)
        assert deals.counts(engine) == {"Customer": 0, "Project": 0, "BillingMilestone": 0, "Invoice": 0}
        shown = outpost("status", "-c", path).stdout
        producers["Customer"].send([e for d in stream for e in d["Customer"]])       # the parents, last
        assert agent.until(lambda: deals.counts(engine) == {"Customer": 1000, "Project": 1000,
                                                            "BillingMilestone": 3000, "Invoice": 1000}
                           and queue_depth(tmp_path / "state") == 0, timeout=180), \
            (deals.counts(engine), status_of(path), agent.log()[-3000:])
        after = status_of(path)
    assert "waits for its parent: crm_customer with cust_no = 'C-" in waiting["waiting_reason"] \
        or "waits for its parent: prj_project with prj_code" in waiting["waiting_reason"], waiting
    assert "held back:" in shown and "waits for its parent" in shown, shown
    assert open_exceptions(tmp_path / "state") == [], "0 parked, 0 stale"
    assert after.get("waiting", 0) == 0 and after["published_total"] == 6000
    with engine.connect() as conn:
        orphans = conn.exec_driver_sql("SELECT count(*) FROM prj_milestone m LEFT JOIN prj_project p"
                                       " ON p.prj_code = m.prj_code WHERE p.prj_code IS NULL").scalar()
    assert orphans == 0


def test_a_parent_that_never_arrives_parks_the_child_naming_it(tmp_path, server_url, broker, registry):
    engine, producers, path, agent = setup(tmp_path, server_url, broker, registry, wait_for_parent="4s")
    orphan, fine = deals.deal(1), deals.deal(2)
    with agent:
        producers["Customer"].send(fine["Customer"])
        producers["Project"].send(orphan["Project"] + fine["Project"])
        assert agent.until(lambda: status_of(path).get("waiting") == 1, timeout=60), agent.log()[-3000:]
        assert deals.counts(engine)["Project"] == 1, "the other deal's project is not held up"
        assert agent.until(lambda: len(open_exceptions(tmp_path / "state")) == 1, timeout=30), agent.log()[-3000:]
        (parked,) = open_exceptions(tmp_path / "state")
    assert parked["entity"] == "Project" and parked["key"] == "P-00001"
    assert parked["reason"].startswith("Project P-00001 waits for its parent: crm_customer with cust_no = 'C-00001'"
                                       " (waited "), parked["reason"]
    assert deals.counts(engine)["Project"] == 1
