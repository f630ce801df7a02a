"""The SIGKILL recovery contract (tests/support/recovery.py) over sql_poll -> kafka: the route
of the polling source and of the kafka sink.

PostgreSQL is the legacy database, tansu the broker, the registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here). Killed at random
points while an ERP inserts, then once exactly between capture and publish (events queued,
broker unreachable); an independent consumer checks every insert and update arrived once.
The same route again with its delivery process killed alone and with the agent, in turn.
"""
import psutil
import sqlalchemy as sa

from tests.support.agent_process import queue_depth, route_status, wait_for
from tests.support.harness import ROUTE, Change, kafka_changes
from tests.support.recovery import RecoveryContract
from tests.support.route import create_tables, route_config, write_stream

ROWS = 3000
UPDATED = 100


class TestSqlPollToKafkaRecovery(RecoveryContract):
    route = ("sql_poll", "kafka")

    def prepare(self, request, tmp_path):
        self.broker, self.registry = request.getfixturevalue("broker"), request.getfixturevalue("registry")
        url = request.getfixturevalue("pg_url")
        self.engine = create_tables(url)
        request.addfinalizer(self.engine.dispose)
        document = route_config(self.state_dir, url, self.broker.bootstrap, self.registry.url, every="0.2s", lag=0.3)
        self.topic = document["fabric"]["topic_template"].format(entity="customer")
        return document

    def write(self):
        write_stream(self.engine, ROWS, lambda numbers: self.expected.extend(Change(f"C-{n:05d}", f"{n}.00")
                                                                             for n in numbers))

    def run(self):
        super().run()
        # and once exactly between capture and publish: events queued, broker unreachable.
        # First everything inserted is published (else the updated rows could be read by a
        # snapshot still running, and the two versions of a row would rightly be one event).
        assert wait_for(lambda: route_status(self.state_dir, ROUTE).get("published_total", 0) >= ROWS
                        and queue_depth(self.state_dir) == 0, 120), self.agent.log(3000)
        with self.broker.outage():
            with self.engine.begin() as conn:
                conn.execute(sa.text("UPDATE erp_customer SET credit_lim = credit_lim + 1, "
                                     f"updated_at = clock_timestamp() WHERE cust_no <= 'C-{UPDATED:05d}'"))
            self.expected += [Change(f"C-{n:05d}", f"{n + 1}.00") for n in range(1, UPDATED + 1)]
            assert wait_for(lambda: queue_depth(self.state_dir) >= UPDATED, 20), \
                "the update batch should be captured while the broker is down"
            self.agent.kill()
        self.start_agent()

    def landed(self):
        return kafka_changes(self.broker, self.registry, self.topic)



class TestDeliveryProcessKilledAloneAndWithTheAgent(TestSqlPollToKafkaRecovery):
    """The delivery process SIGKILLed alone (capture runs on; the agent restarts it, with
    backoff) and with the agent, in turn: what a killed delivery process had in flight is
    sent again under the same ids, nothing is lost, each key stays in order."""
    kill_process = "alternate"
    min_kills = 4

    def run(self):
        RecoveryContract.run(self)
        # the agent's only other process is its delivery process (no multiprocessing
        # resource tracker: agent.delivery_child is started without "spawn")
        children = []
        for child in psutil.Process(self.agent.pid).children():
            try:
                children.append(" ".join(child.cmdline()))
            except psutil.Error:          # a delivery process just killed, not yet reaped
                pass
        assert all("agent.delivery_child" in c for c in children), children
        # and last, the delivery process alone: what is still queued arrives only if the
        # running agent starts a new one
        assert self.kill_delivery_process(), self.agent.log(3000)

    def check(self, landed):
        assert len(self.killed_deliveries) >= 3, self.killed_deliveries
        assert "the delivery process exited unexpectedly" in self.agent.log(), self.agent.log(3000)
