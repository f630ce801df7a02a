"""One agent per state directory, and a state directory no other local user can read.

Real processes throughout: two ``outpost run`` on one config, a SIGKILLed holder, and
the operator's read-only commands beside a running agent. The source is a SQLite
"ERP", the sink the avro_files outbox, so no other service is involved.
"""
import os
import socket
import sqlite3
import stat

import yaml

from tests.support.agent_process import AgentProcess, outpost, wait_for


def _config(tmp_path, umask_hint: str = "") -> tuple:
    database = tmp_path / "erp.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cust (cust_no TEXT PRIMARY KEY, cust_name TEXT, company TEXT, curr TEXT,"
                   " tax_code TEXT, email TEXT, updated_at DATETIME)")
        db.execute("INSERT INTO cust VALUES ('C-1', 'Acme', '01', 'USD', 'NY', 'ceo@acme.example',"
                   " strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 minute'))")
        # An unknown legal entity: this row goes to the exception queue with its context.
        db.execute("INSERT INTO cust VALUES ('C-2', 'Bad Co', '99', 'USD', 'NY', 'cfo@bad.example',"
                   " strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 minute'))")
    document = {
        "state_dir": str(tmp_path / "state"),
        "shutdown_timeout": "5s",
        "lookups": {"legal_entity": {"01": "US01"}, "tax_jurisdiction": {"NY": "US-NY"}},
        "mappings": {"customer": {"entity": "Customer", "fields": {
            "customer_number": "cust_no", "name": "cust_name",
            "legal_entity": {"column": "company", "lookup": "legal_entity"}, "currency": "curr",
            "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"}, "updated_at": "updated_at"}}},
        "sources": {"erp": {"type": "sql_poll", "url": f"sqlite:///{database}", "lag_seconds": 0}},
        "sinks": {"outbox": {"type": "avro_files", "directory": "outbox", "rotate_seconds": "1s"}},
        "routes": {"customers": {"source": "erp", "sink": "outbox", "mapping": "customer",
                                 "capture": {"table": "cust", "cursor": "updated_at"}, "schedule": {"every": "0.5s"}}},
    }
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, tmp_path / "state"


def test_a_second_agent_refuses_the_state_directory_and_names_the_holder(tmp_path):
    config, state = _config(tmp_path)
    with AgentProcess(config, tmp_path / "first.log") as first:
        assert first.wait_for_log("agent running", 60), first.log()
        second = AgentProcess(config, tmp_path / "second.log").start()
        assert second.wait(60) == 3, second.log()
        refusal = second.log()
        assert f"PID {first.pid}" in refusal and socket.gethostname() in refusal, refusal
        assert "agent running" not in refusal
        # the operator's read-only commands keep working beside the running agent
        status = outpost("status", "-c", config)
        assert status.returncode == 0 and "route customers" in status.stdout, status.stderr
        assert wait_for(lambda: "legal_entity" in outpost("queue", "list", "-c", config).stdout, 30), first.log()
        # a command that would change what the running agent owns is refused
        reset = outpost("snapshot", "--reset-checkpoint", "customers", "-c", config)
        assert reset.returncode != 0 and f"PID {first.pid}" in reset.stderr, reset.stderr
        assert first.alive()


def test_a_sigkilled_holder_never_blocks_its_restart(tmp_path):
    config, state = _config(tmp_path)
    first = AgentProcess(config, tmp_path / "first.log").start()
    assert first.wait_for_log("agent running", 60), first.log()
    first.kill()
    with AgentProcess(config, tmp_path / "restart.log") as restarted:
        assert restarted.wait_for_log("agent running", 60), restarted.log()
        assert "in use by" not in restarted.log()


def test_state_directory_and_files_are_private_whatever_the_umask(tmp_path):
    config, state = _config(tmp_path)
    state.mkdir()
    (state / "left-over.json").write_text("{}")
    os.chmod(state, 0o755)
    os.chmod(state / "left-over.json", 0o644)
    old = os.umask(0o022)
    try:
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            assert agent.wait_for_log("agent running", 60), agent.log()
            assert wait_for(lambda: any((state / "outbox").rglob("*.avro")), 30), agent.log()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    loose = [(str(p.relative_to(state)), oct(stat.S_IMODE(p.stat().st_mode))) for p in state.rglob("*")
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == [], loose
    assert (state / "queue.db").exists() and any((state / "outbox").rglob("*.avro"))


def test_a_rejected_row_keeps_only_its_mapped_columns(tmp_path):
    """Another local user read customer e-mails out of queue.db-wal: a rejected row was
    stored whole, with columns the mapping never reads."""
    config, state = _config(tmp_path)
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: "legal_entity" in outpost("queue", "list", "-c", config).stdout, 60), agent.log()
        shown = outpost("queue", "show", "1", "-c", config)
        assert shown.returncode == 0 and "Bad Co" in shown.stdout, shown
        assert "cfo@bad.example" not in shown.stdout
    stored = b"".join(p.read_bytes() for p in state.glob("queue.db*"))
    assert b"Bad Co" in stored and b"cfo@bad.example" not in stored
