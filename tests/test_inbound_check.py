"""``outpost check`` beside a running inbound agent (issue 10, defects 6 and 7).

Real agent process and real ``outpost check`` process, real tansu broker, real PostgreSQL.
The schema registry is the HTTP double of ``tests/support/registry_double.py`` (no
registry server can run here).
"""
import uuid

import pytest
import sqlalchemy as sa

from tests.support.agent_process import AgentProcess, outpost, wait_for
from tests.support.databases import PG_SERVER
from tests.support.inbound import (create_local, customer, event, FabricProducer, inbound_config, new_topic, rows,
                                   write_config)


def test_check_beside_a_running_agent_leaves_its_consumer_group_alone(tmp_path, pg_url, broker, registry):
    """Defect 6: the check used to subscribe with the agent's group id: its consumer joined the
    live group and left again, a rebalance of the running agent each time (on tansu the
    departed member could even stay the group's leader). The agent logs every revoke."""
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    topic = new_topic(broker, "chk", partitions=3)
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    path = write_config(tmp_path / "outpost.yaml",
                        inbound_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, topic))
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        fabric.send([event(customer("C-0"), operation="CREATE")])
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM erp_customer") == [(1,)]), agent.log()[-2000:]
        assert "assigned" in agent.log() and "revoked" not in agent.log()
        for _ in range(2):
            checked = outpost("check", "-c", path)
            assert checked.returncode == 0, checked.stdout + checked.stderr
        fabric.send([event(customer(f"C-{n}"), operation="CREATE") for n in range(1, 6)])
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM erp_customer") == [(6,)], timeout=60), \
            agent.log()[-2000:]
        wait_for(lambda: "revoked" in agent.log(), timeout=5)     # a late rebalance would show here
    assert "revoked" not in agent.log(), "the check joined the live consumer group: " + agent.log()[-2000:]


@pytest.fixture
def limited_role(pg_url):
    """A login role for the apply user in the test's database (roles are cluster-wide:
    its grants there are dropped, then the role, before the database goes)."""
    name = f"apply_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
    yield name
    with sa.create_engine(pg_url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql(f"DROP OWNED BY {name}")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP ROLE {name}")
    admin.dispose()


UPPERCASE = {"Customer": {"tables": [{
    "table": "CUSTMAST", "key": "CUSTNO",
    "columns": {"CUSTNO": "customer_number", "CUSTNAME": "name", "CURR": "currency"}}]}}


def test_check_on_postgres_quotes_uppercase_table_names(tmp_path, pg_url, limited_role):
    """Defect 7: the privilege lookup passed CUSTMAST unquoted, so PostgreSQL looked for custmast."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "CUSTMAST" ("CUSTNO" VARCHAR(20) PRIMARY KEY, "CUSTNAME" VARCHAR(60),'
                             ' "CURR" CHAR(3))')
    document = inbound_config(tmp_path / "state", pg_url, "127.0.0.1:1", "http://127.0.0.1:1", "t.customer",
                              reverse=UPPERCASE)
    checked = outpost("check", "-c", write_config(tmp_path / "outpost.yaml", document))
    sink_part = checked.stdout.split("sink erp_apply:", 1)[1]
    assert sink_part.startswith(" ok"), checked.stdout
    assert "does not exist" not in checked.stdout, checked.stdout
    with engine.begin() as conn:      # the bookkeeping tables exist now (the check opened the sink)
        conn.exec_driver_sql(f'GRANT SELECT, INSERT ON "CUSTMAST" TO {limited_role}')
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON outpost_applied_events, outpost_applied_rows,"
                             f" outpost_applied_keys TO {limited_role}")
    url = sa.engine.make_url(pg_url).set(username=limited_role).render_as_string(hide_password=False)
    document["sinks"]["erp_apply"]["url"] = url
    checked = outpost("check", "-c", write_config(tmp_path / "limited.yaml", document))
    assert checked.returncode == 1, checked.stdout
    problems = [line.strip() for line in checked.stdout.split("sink erp_apply:", 1)[1].splitlines()[1:]]
    assert "- the apply user lacks UPDATE on CUSTMAST" in problems, checked.stdout
    assert not any("lacks" in p and "outpost_applied" in p for p in problems), checked.stdout
    assert "does not exist" not in checked.stdout, checked.stdout
