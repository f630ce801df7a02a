"""file_drop with real agent processes: SIGKILL in the middle of a large file (the SIGKILL
recovery contract of tests/support/recovery.py), and two agents (separate state
directories) sharing one inbox. Output goes to the avro_files sink, read back from disk;
no broker is needed."""
import json
import sqlite3
import time
from pathlib import Path

import fastavro
import pytest
import yaml

from tests.support.route import INVOICE_MAPPING, LOOKUPS
from tests.support.agent_process import AgentProcess, queue_depth
from tests.support.harness import Change, avro_file_changes
from tests.support.recovery import RecoveryContract

pytestmark = pytest.mark.slow
HEADER = "inv_no,cust_no,company,curr,tax_code,inv_date,net,tax,gross,status\n"


def write_invoices(path: Path, first: int, count: int) -> None:
    temp = path.with_name("." + path.name)          # written under a hidden name, then renamed in
    with open(temp, "w", newline="") as handle:
        handle.write(HEADER)
        for n in range(first, first + count):
            handle.write(f"I-{n:06d},C-{n % 97},{'01' if n % 3 else '02'},USD,{'NY' if n % 2 else 'LDN'},"
                         f"2026-11-27,{n}.25,1.00,{n + 1}.25,open\r\n")
    temp.rename(path)


def agent_config(tmp_path: Path, name: str, inbox: Path) -> Path:
    document = {
        "state_dir": str(tmp_path / name / "state"), "lookups": LOOKUPS, "mappings": {"invoice": INVOICE_MAPPING},
        "shutdown_timeout": "20s",
        "sources": {"drop": {"type": "file_drop", "inbox": str(inbox), "observer": "native", "system": "fin",
                             "rescan_every": "2s"}},
        "sinks": {"files": {"type": "avro_files", "directory": str(tmp_path / name / "out"), "rotate_seconds": 0.5}},
        "routes": {"invoices": {"source": "drop", "sink": "files", "mapping": "invoice", "schedule": {"every": "0.2s"},
                                "capture": {"pattern": "*.csv", "format": "csv", "min_age": 0.3, "settle": 0.2,
                                            "batch_size": 500, "progress_log_every": "0.2s"}}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def checkpoint(state_dir: Path):
    path = state_dir / "queue.db"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(path, timeout=10) as db:
            row = db.execute("SELECT value FROM checkpoints WHERE route='invoices'").fetchone()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]) if row else None


def progress(state_dir: Path):
    try:
        with sqlite3.connect(state_dir / "queue.db", timeout=10) as db:
            row = db.execute("SELECT value FROM route_status WHERE route='invoices'").fetchone()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]).get("progress") if row else None


def read_events(out: Path) -> list[dict]:
    events = []
    for path in sorted(out.glob("*/*.avro")):
        with open(path, "rb") as handle:
            events.extend(fastavro.reader(handle))
    return events


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class TestSigkillInTheMiddleOfALargeFile(RecoveryContract):
    """The recovery contract over file_drop -> avro_files, killed once while the file is
    checked and twice while it is emitted, at random records: every record once, under one id."""

    route = ("file_drop", "avro_files")
    rows = 30_000

    def prepare(self, request, tmp_path):
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        config_path = agent_config(tmp_path, "a", self.inbox)
        self.state = self.state_dir = tmp_path / "a" / "state"
        write_invoices(self.inbox / "big.csv", 1, self.rows)
        self.expected = [Change(f"I-{n:06d}", f"{n}.25") for n in range(1, self.rows + 1)]
        return yaml.safe_load(config_path.read_text())

    def run(self):
        state, inbox, rows = self.state, self.inbox, self.rows
        # first while the file is being checked (pass 1: claimed, nothing committed yet)
        wait_for(lambda: (progress(state) or {}).get("phase") == "checking", 60, "the check pass")
        self.agent.kill()
        assert checkpoint(state) in (None, {"v": 1, "file": None}) and list(inbox.glob("processing/*/big.csv"))
        self.start_agent()
        kills = self.kills = []
        for _ in range(2):    # kill twice while the file is being emitted, at random records
            low = 1000 if not kills else min(kills[-1] + 1000, rows - 1500)
            target = self.rng.randint(low, rows - 4000 if not kills else rows - 1000)

            def in_flight_past_target():
                cp = checkpoint(state)
                return bool(cp and cp["file"] and cp["file"]["record"] >= target)
            wait_for(in_flight_past_target, 90, f"the checkpoint to pass record {target}")
            self.agent.kill()
            kills.append(checkpoint(state)["file"]["record"])
            assert 0 < kills[-1] < rows, "killed in the middle of the file"
            assert list(inbox.glob("processing/*/big.csv")), "the claimed file waits in processing/ for the restart"
            self.start_agent()
        wait_for(lambda: list(inbox.glob("archive/*/big.csv")) and queue_depth(state) == 0, 120, "the file to finish")

    def landed(self):
        return avro_file_changes(self.tmp_path / "a" / "out", version_of=lambda e: f"{e['after']['net_amount']}")

    def check(self, landed):
        resent = len(landed) - self.rows
        assert resent <= 2 * 500 * 3, "only the batches in flight at each kill may be written again (same ids)"
        log = self.agent.log()
        assert "resuming file big.csv after record" in log and "rows/s" in log
        assert not list(self.inbox.glob("error/*")) and not list(self.inbox.glob("processing/*/*"))
        print(f"killed at records {self.kills}; {resent} event(s) written twice under the same id")


def test_two_agents_on_one_inbox_process_each_file_exactly_once(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    agents = [AgentProcess(agent_config(tmp_path, name, inbox), tmp_path / f"{name}.log") for name in ("a", "b")]
    for agent in agents:
        agent.start()
    files, per_file = 16, 150
    for i in range(files):
        write_invoices(inbox / f"inv{i:02d}.csv", i * per_file + 1, per_file)
        time.sleep(0.05)
    wait_for(lambda: len(list(inbox.glob("archive/*/*.csv"))) == files, 90, "every file archived")
    states = [tmp_path / name / "state" for name in ("a", "b")]
    wait_for(lambda: all(queue_depth(s) == 0 for s in states), 60, "both queues drained")
    for agent, name in zip(agents, ("a", "b")):
        assert agent.terminate() == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    per_agent = {name: read_events(tmp_path / name / "out") for name in ("a", "b")}
    keys = [e["key"] for events in per_agent.values() for e in events]
    assert len(keys) == files * per_file and set(keys) == {f"I-{n:06d}" for n in range(1, files * per_file + 1)}
    assert sorted(p.name for p in inbox.glob("archive/*/*.csv")) == [f"inv{i:02d}.csv" for i in range(files)]
    assert not list(inbox.glob("error/*")) and not list(inbox.glob("archive/*/*.skipped.json"))
    print({name: len(events) for name, events in per_agent.items()})
