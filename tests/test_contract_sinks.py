"""Every sink adapter passes the contract suite (tests/support/contract.py), each on its real
destination (tests/support/harness.py): the tansu broker, an outbox folder, a SQLite table.
The schema registry is the HTTP double of ``tests/support/registry_double.py`` (no registry
server can run here). Their SIGKILL recovery contract runs in the route's own module
(tests/test_contract_coverage.py checks that every adapter has one).
"""
from tests.support.contract import SinkContract
from tests.support.harness import AvroFilesHarness, KafkaSinkHarness, SqlApplyHarness

APPENDS = ("the destination is an append-only log: a repeat is appended again under the same event_id "
           "and consumers de-duplicate on it (delivery invariant 4)")


class TestKafkaSink(SinkContract):
    harness = KafkaSinkHarness
    not_applicable = {"test_a_duplicate_write_changes_nothing": APPENDS}


class TestAvroFilesSink(SinkContract):
    harness = AvroFilesHarness
    not_applicable = {"test_a_duplicate_write_changes_nothing": APPENDS + " (readers of the outbox files)"}


class TestSqlApplySink(SinkContract):
    harness = SqlApplyHarness
