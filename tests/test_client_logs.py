"""The Kafka client's log lines as an operator reads them: a repeated error once, with a
count of what was held back, and translated into what to check."""
import logging

from agent.client_logs import CollapseRepeats, advice, attach


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _record(text):
    return logging.LogRecord("outpost.sink.librdkafka", logging.ERROR, __file__, 1, "%s [%s] %s",
                             ("FAIL", "rdkafka#producer-1", text), None)


def test_repeats_are_held_back_and_counted_on_the_next_line():
    clock = _Clock()
    collapse = CollapseRepeats(window=60, clock=clock)
    shown = []
    for attempt in range(35):       # one outage: the same failure for every connection attempt
        clock.now = attempt * 0.3
        record = _record(f"127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
                         f"(after {attempt}ms in state CONNECT)")
        if collapse.filter(record):
            shown.append(record.getMessage())
    assert len(shown) == 1, "one line for the whole burst"
    assert "hint: nothing listens there" in shown[0] and "bootstrap.servers" in shown[0]
    clock.now = 61.0
    record = _record("127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 2ms "
                     "in state CONNECT)")
    assert collapse.filter(record) and "(34 more like it in the last 60s)" in record.getMessage()
    other = _record("127.0.0.1:9092/1: SASL authentication error: Authentication failed")
    assert collapse.filter(other), "another kind of error is shown at once"


def test_the_misleading_broker_version_hint_is_translated():
    hint = advice("127.0.0.1:9092/1: Disconnected while requesting ApiVersion: might be caused by incorrect "
                  "security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 "
                  "(see api.version.request) / probably due to broker version < 0.10")
    assert "frozen or overloaded" in hint and "security.protocol" in hint and "not an old broker" in hint
    assert advice("a line with nothing to add") is None


def test_one_filter_per_logger():
    logger = logging.getLogger("outpost.test.librdkafka")
    attach(logger)
    attach(logger)
    assert sum(isinstance(f, CollapseRepeats) for f in logger.filters) == 1
