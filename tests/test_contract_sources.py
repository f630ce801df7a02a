"""Every source adapter passes the contract suite (tests/support/contract.py), each on its real
endpoint (tests/support/harness.py): PostgreSQL, MariaDB, the Debezium engine, an inbox
folder, the tansu broker. The schema registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here). Their SIGKILL
recovery contract runs in the route's own module (tests/test_contract_coverage.py checks
that every adapter has one).
"""
from tests.support.contract import SourceContract
from tests.support.debezium_pg import pg_repl  # noqa: F401  (fixture of the debezium harness)
from tests.support.harness import (BinlogHarness, DebeziumHarness, FileDropHarness, KafkaSourceHarness,
                                   SqlPollHarness)


class TestSqlPollSource(SourceContract):
    harness = SqlPollHarness


class TestBinlogSource(SourceContract):
    harness = BinlogHarness


class TestDebeziumSource(SourceContract):
    harness = DebeziumHarness
    created_at_construction = {
        "debezium": "the JVM starts when the source is built, on the building (main) thread (a JVM started "
                    "from another thread can hang the process at exit), and writes its log configuration here"}


class TestFileDropSource(SourceContract):
    harness = FileDropHarness


class TestKafkaSource(SourceContract):
    harness = KafkaSourceHarness
