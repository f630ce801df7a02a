"""Route filters and deletes, through the real Agent on SQLite, PostgreSQL and MariaDB
(sql_poll) and the MariaDB binlog (issue 12: defect 8, build item 2).

A row that does not match is not published; a row that stops matching is published as a
delete (decided by the before image on the binlog, by the route's published keys when
polling); a delete whose before image fails the mapping is still published by its key.
"""
from __future__ import annotations

import time

import sqlalchemy as sa

from agent import config as config_module
from agent.runtime import Agent
from tests.support.binlog import execute

SOCIETE = ("CREATE TABLE llx_societe (rowid INTEGER PRIMARY KEY, code_client VARCHAR(20), nom VARCHAR(60), "
           "client INTEGER, currency VARCHAR(3), tms {stamp})")
STAMP = {"sqlite": "TIMESTAMP", "postgresql": "TIMESTAMP", "mysql": "DATETIME(6)"}
# the database's own clock, below a second (a row written twice in one second must not tie)
NOW = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')", "postgresql": "clock_timestamp()", "mysql": "NOW(6)"}
CUSTOMER = {"entity": "Customer", "fields": {
    "customer_number": "code_client", "name": "nom", "legal_entity": {"const": "US01"}, "currency": "currency",
    "tax_jurisdiction": {"const": "US-NY"}}}


def config(tmp_path, source: dict, capture: dict, route_filter=None) -> dict:
    route = {"source": "erp", "sink": "out", "mapping": "customer", "schedule": {"every": "1h"},
             "capture": {"table": "llx_societe", **capture}}
    if route_filter:
        route["filter"] = route_filter
    return {"state_dir": str(tmp_path / "state"), "mappings": {"customer": CUSTOMER},
            "sources": {"erp": {"system": "dolibarr", **source}},
            "sinks": {"out": {"type": "avro_files", "directory": str(tmp_path / "out")}},
            "routes": {"customers": route}}


def queued(agent) -> list[tuple[str, str]]:
    rows = agent.queue._conn().execute("SELECT operation, key FROM outbox ORDER BY seq").fetchall()
    return [(operation, key) for operation, key in rows]


class Poller:
    """An in-process agent on a sql_poll route, one pass at a time (no lag)."""

    def __init__(self, tmp_path, url, route_filter=None):
        self.engine = sa.create_engine(url)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(SOCIETE.format(stamp=STAMP[self.engine.dialect.name]))
        self.document = config(tmp_path, {"type": "sql_poll", "url": url, "lag_seconds": 0},
                               {"cursor": "tms"}, route_filter)
        self.agent = Agent(config_module.parse(self.document))
        self.agent.build()      # not started: nothing delivers, the outbox shows what was captured

    def write(self, sql: str, **values) -> None:
        time.sleep(0.01)
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql.replace(":tms", NOW[self.engine.dialect.name])), values)

    def capture(self) -> None:
        time.sleep(1.05)    # the signpost is the database clock in whole seconds (MariaDB, SQLite)
        self.agent.run_pass()

    def close(self) -> None:
        self.agent.stop()
        self.engine.dispose()


INSERT = "INSERT INTO llx_societe VALUES (:id, :code, :name, :client, 'EUR', :tms)"


def test_a_customer_turned_supplier_leaves_the_stream_and_suppliers_never_enter_it(any_db_url, tmp_path):
    erp = Poller(tmp_path, any_db_url, route_filter="client == 1 or client == 3")
    try:
        for rowid, code, client in ((1, "CU-1", 1), (2, "SU-2", 2), (3, "CU-3", 3)):
            erp.write(INSERT, id=rowid, code=code, name=f"third party {rowid}", client=client)
        erp.capture()
        assert queued(erp.agent) == [("snapshot", "CU-1"), ("snapshot", "CU-3")]
        erp.write("UPDATE llx_societe SET client = 2, tms = :tms WHERE rowid = 1")    # now a supplier
        erp.write("UPDATE llx_societe SET nom = 'renamed', tms = :tms WHERE rowid = 2")  # still one
        erp.capture()
        assert queued(erp.agent)[2:] == [("delete", "CU-1")]
        erp.write("UPDATE llx_societe SET nom = 'again', tms = :tms WHERE rowid = 1")   # still a supplier
        erp.write("UPDATE llx_societe SET client = 1, tms = :tms WHERE rowid = 2")      # becomes a customer
        erp.capture()
        assert queued(erp.agent)[3:] == [("update", "SU-2")], "no second delete; the new customer joins"
        assert erp.agent.queue.exceptions() == []
    finally:
        erp.close()


def test_a_soft_delete_whose_row_fails_the_mapping_is_still_published(any_db_url, tmp_path):
    """Defect 8 (polling side): a delete needs only its key."""
    engine = sa.create_engine(any_db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SOCIETE.format(stamp=STAMP[engine.dialect.name]))
        conn.exec_driver_sql("INSERT INTO llx_societe VALUES (1, 'CU-1', NULL, -1, 'XXQ', '2026-01-01 10:00:00')")
    engine.dispose()
    document = config(tmp_path, {"type": "sql_poll", "url": any_db_url, "lag_seconds": 0},
                      {"cursor": "tms", "soft_delete": {"column": "client", "value": -1}})
    agent = Agent(config_module.parse(document))
    agent.build()
    try:
        agent.run_pass()
        assert queued(agent) == [("delete", "CU-1")] and agent.queue.exceptions() == []
    finally:
        agent.stop()


def _binlog_agent(tmp_path, url, route_filter=None) -> Agent:
    document = config(tmp_path, {"type": "binlog", "url": url, "snapshot": "none"}, {}, route_filter)
    agent = Agent(config_module.parse(document))
    agent.build()
    agent.run_pass()      # records the start position
    return agent


def _capture_until(agent, count: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(queued(agent)) + len(agent.queue.exceptions()) < count:
        agent.run_pass()
    return queued(agent)


def test_a_binlog_delete_with_a_bad_before_image_reaches_the_fabric(tmp_path, mariadb_url):
    """Defect 8: the DELETE went to the exception queue, so consumers never learned the row
    was gone. The row's currency was never valid: its create is parked, its delete is not."""
    execute(mariadb_url, SOCIETE.format(stamp="DATETIME(6)"))
    agent = _binlog_agent(tmp_path, mariadb_url)
    try:
        execute(mariadb_url, "INSERT INTO llx_societe VALUES (1, 'CU-1', 'n', 1, 'XXQ', NOW())")
        execute(mariadb_url, "DELETE FROM llx_societe WHERE rowid = 1")
        assert _capture_until(agent, 2) == [("delete", "CU-1")]
        (parked,) = agent.queue.exceptions()
        assert agent.queue.exception(parked["id"])["operation"] == "create" and "ISO 4217" in parked["reason"]
    finally:
        agent.stop()


def test_on_the_binlog_the_before_image_decides_without_any_record(tmp_path, mariadb_url):
    execute(mariadb_url, SOCIETE.format(stamp="DATETIME(6)"))
    agent = _binlog_agent(tmp_path, mariadb_url, route_filter="client in (1, 3)")
    try:
        execute(mariadb_url, "INSERT INTO llx_societe VALUES (1, 'CU-1', 'n', 2, 'EUR', NOW())",   # supplier
                "UPDATE llx_societe SET client = 3 WHERE rowid = 1",                              # joins
                "UPDATE llx_societe SET client = 2 WHERE rowid = 1",                              # leaves
                "UPDATE llx_societe SET nom = 'm' WHERE rowid = 1",                               # stays out
                "DELETE FROM llx_societe WHERE rowid = 1")                                        # was out
        assert _capture_until(agent, 2) == [("create", "CU-1"), ("delete", "CU-1")]
        agent.run_pass()
        assert queued(agent) == [("create", "CU-1"), ("delete", "CU-1")]
    finally:
        agent.stop()
