"""The `outpost` command as a user runs it: demo, status, check, queue, schemas."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def outpost(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"outpost {' '.join(map(str, args))} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    return directory, outpost("demo", "--dir", directory)


def test_demo_shows_decoded_events_and_status(demo):
    directory, result = demo
    out = result.stdout
    assert "SNAPSHOT key=C-1001" in out and "UPDATE   key=C-1001" in out and "key=INV-9002" in out
    assert '"credit_limit": "300000.00"' in out and '"total_amount": "10887.61"' in out
    assert "C-1003" not in out.split("4. status:")[0], "the unknown legal entity must not be published"
    assert "open exceptions: 1" in out
    assert len(list((directory / "outbox").glob("*/*.avro"))) == 2


def test_status_json_reports_each_route(demo):
    directory, _ = demo
    report = json.loads(outpost("status", "-c", directory / "outpost.yaml", "--json").stdout)
    customers = report["routes"]["customers"]
    assert customers["captured_total"] == 3 and customers["published_total"] == 3
    assert customers["queue_depth"] == 0 and customers["open_exceptions"] == 1
    assert report["routes"]["invoices"]["published_total"] == 2


def test_check_connects_to_source_and_sink(demo):
    directory, _ = demo
    result = outpost("check", "-c", directory / "outpost.yaml")
    assert "route customers: source erp: ok" in result.stdout and "sink outbox: ok" in result.stdout


def test_exception_queue_list_show_retry_discard(demo):
    directory, _ = demo
    config = directory / "outpost.yaml"
    listing = outpost("queue", "list", "-c", config).stdout
    assert "customers" in listing and "unknown legal_entity code '07'" in listing
    exception_id = int(listing.split()[0])
    shown = json.loads(outpost("queue", "show", "-c", config, exception_id).stdout)
    assert shown["context"]["record"]["after"]["cust_no"] == "C-1003"
    assert shown["context"]["problems"][0]["rule"] == "legal_entity"
    retried = outpost("queue", "retry", "-c", config, exception_id, check=False)
    assert retried.returncode == 1 and "still failing" in retried.stdout, "master data not fixed yet"
    assert "discarded" in outpost("queue", "discard", "-c", config, exception_id).stdout
    assert "no open exceptions" in outpost("queue", "list", "-c", config).stdout


def test_schemas_list_and_check():
    listing = outpost("schemas", "list").stdout
    for entity in ("Customer", "Engagement", "Contract", "Project", "BillingMilestone", "Timesheet", "Invoice",
                   "RevenueEvent"):
        assert entity in listing
    assert outpost("schemas", "check").stdout.count("compatible") == 9


def test_help_on_every_command():
    for command in ([], ["run"], ["check"], ["status"], ["queue"], ["queue", "retry"], ["schemas"], ["demo"]):
        assert "Usage: " in outpost(*command, "--help").stdout
