import atexit
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.support.databases", "tests.support.services"]


def pytest_collection_modifyitems(items):
    """Debezium tests run one after another on one worker (``--dist loadgroup``, see
    scripts/test.sh): two embedded engines starting at once on the shared PostgreSQL, each
    in a busy JVM, once left one engine silent after creating its slot."""
    import pytest
    for item in items:
        if item.module.__name__.startswith("tests.test_debezium_") or "Debezium" in (item.cls.__name__ if item.cls else ""):
            item.add_marker(pytest.mark.xdist_group("debezium"))


def pytest_sessionfinish(session, exitstatus):
    """A Debezium engine that did not stop when closed (a busy machine) keeps a Java thread
    running, and jpype's exit hook waits for it: the run would hang after its summary
    (seen once, 90 min of CI for nothing). Registered now, after jpype's hook, this one
    runs first at exit and leaves at once with pytest's status."""
    engine = sys.modules.get("adapters.debezium.engine")
    if engine is None or not engine.still_running():
        return

    def leave(code=int(exitstatus)):
        engine.close_all()
        if engine.still_running():
            print(f"conftest: debezium engine(s) {', '.join(engine.still_running())} still running; exiting without"
                  " waiting for the JVM", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    atexit.register(leave)
