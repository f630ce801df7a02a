"""Every adapter the registry knows has adopted the contract suite: a ``SourceContract`` or
``SinkContract`` class for each role it plays, and a SIGKILL recovery route
(``RecoveryContract``) in which it plays that role. An adapter added without them fails here.
"""
import importlib
from pathlib import Path

from agent.registry import adapter_names
from tests.support.contract import SinkContract, SourceContract
from tests.support.recovery import RecoveryContract

TESTS = Path(__file__).resolve().parent


def adopters(base: type) -> list[type]:
    """The collected (``Test*``) subclasses of ``base`` in every test module that adopts the suite."""
    for path in sorted(TESTS.glob("test_*.py")):
        if "Contract" in path.read_text():
            importlib.import_module(f"tests.{path.stem}")
    found, todo = [], [base]
    while todo:
        for cls in todo.pop().__subclasses__():
            todo.append(cls)
            if cls.__name__.startswith("Test"):
                found.append(cls)
    return found


def test_every_adapter_passes_the_contract_suite_in_each_role():
    checked = {("source", c.harness.adapter) for c in adopters(SourceContract)}
    checked |= {("sink", c.harness.adapter) for c in adopters(SinkContract)}
    missing = [(kind, name) for kind in ("source", "sink") for name in adapter_names(kind) if (kind, name) not in checked]
    assert not missing, f"adapters without a SourceContract / SinkContract class: {missing}"


def test_every_adapter_runs_in_a_sigkill_recovery_route_in_each_role():
    routes = [c.adapters() for c in adopters(RecoveryContract)]
    covered = {("source", source) for source, _ in routes} | {("sink", sink) for _, sink in routes}
    missing = [(kind, name) for kind in ("source", "sink") for name in adapter_names(kind) if (kind, name) not in covered]
    assert not missing, f"adapters in no RecoveryContract route: {missing}"
