"""The platform-neutral parts of the Windows service: argument handling of
``outpost service ...`` and the service's start/stop driving the real ``Agent``.

Doubles (no Windows Service Control Manager can run here): ``FakeServiceManager``
records what would be registered with the SCM, ``FakeScm`` calls the service core the
way the SCM calls ``SvcDoRun`` (on its own thread) and ``SvcStop``, and ``RecordingLog``
stands in for the Event Log. The agent itself is real: a SQLite "legacy ERP" captured
into Avro files (the demo route), with a real queue.
"""
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agent.demo import _seed, demo_config
from agent.runtime import Agent, State
from agent.service_windows import (DEFAULT_ACCOUNT, ServiceCore, default_config_path, install_spec, program_data,
                                   service)


class FakeServiceManager:
    """Double of the SCM's registration API: records calls."""

    def __init__(self):
        self.calls = []

    def install(self, spec):
        self.calls.append(("install", spec))

    def remove(self, name):
        self.calls.append(("remove", name))

    def start(self, name):
        self.calls.append(("start", name))

    def stop(self, name, timeout):
        self.calls.append(("stop", name, timeout))


class RecordingLog:
    """Double of the Windows Event Log."""

    def __init__(self):
        self.entries = []

    def info(self, message):
        self.entries.append(("info", message))

    def error(self, message):
        self.entries.append(("error", message))


class FakeScm:
    """Double of the Service Control Manager's run/stop calls on a service."""

    def __init__(self, core: ServiceCore):
        self.core, self.exit_code = core, None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.exit_code = self.core.run()

    def start(self):
        self.thread.start()

    def stop(self, timeout: float) -> float:
        started = time.monotonic()
        self.core.stop()
        self.thread.join(timeout)
        return time.monotonic() - started


def _invoke(args, manager, env=None):
    return CliRunner().invoke(service, args, obj={"service_manager": manager}, env=env, catch_exceptions=False)


def test_program_data_defaults():
    env = {"ProgramData": r"D:\Data"}
    assert program_data(env) == Path(r"D:\Data") / "Outpost"
    assert default_config_path(env) == Path(r"D:\Data") / "Outpost" / "outpost.yaml"
    assert program_data({}) == Path(r"C:\ProgramData") / "Outpost"


def test_install_spec_for_the_pyinstaller_folder_and_for_a_virtualenv(tmp_path):
    frozen = install_spec(tmp_path / "o.yaml", DEFAULT_ACCOUNT, None, "auto", frozen=True,
                          executable=r"C:\Program Files\Outpost\outpost.exe")
    assert frozen.args == ["service", "host", "-c", str(tmp_path / "o.yaml")]
    assert frozen.command_line().startswith('"C:\\Program Files\\Outpost\\outpost.exe" service host')
    venv = install_spec(tmp_path / "o.yaml", r"CORP\svc-outpost", "pw", "manual", frozen=False,
                        executable=r"C:\venv\python.exe")
    assert venv.args[:4] == ["-m", "agent.cli", "service", "host"]
    assert venv.account == r"CORP\svc-outpost" and venv.password == "pw"
    assert "pw" not in repr(venv), "the password never shows in a repr (or a log)"
    gmsa = install_spec(tmp_path / "o.yaml", r"CORP\outpost$", None, "auto", frozen=True, executable="o.exe")
    assert gmsa.password is None


def test_cli_install_remove_start_stop(tmp_path):
    config = tmp_path / "outpost.yaml"
    config.write_text("routes: {}\n")
    manager = FakeServiceManager()
    result = _invoke(["install", "-c", str(config), "--account", r"CORP\svc-outpost", "--startup", "manual"],
                     manager, env={"OUTPOST_SERVICE_PASSWORD": "Pa55-w0rd!"})
    assert result.exit_code == 0, result.output
    (_, spec), = manager.calls
    assert spec.account == r"CORP\svc-outpost" and spec.password == "Pa55-w0rd!" and spec.startup == "manual"
    assert spec.args[-2:] == ["-c", str(config.resolve())]
    assert "Pa55-w0rd!" not in result.output
    for command in (["start"], ["stop", "--timeout", "12"], ["remove"]):
        assert _invoke(command, manager).exit_code == 0
    assert manager.calls[1:] == [("start", "Outpost"), ("stop", "Outpost", 12.0), ("remove", "Outpost")]


def test_cli_install_refuses_what_cannot_work(tmp_path):
    manager = FakeServiceManager()
    missing = _invoke(["install", "-c", str(tmp_path / "nope.yaml")], manager)
    assert missing.exit_code != 0 and "no config there" in missing.output
    config = tmp_path / "outpost.yaml"
    config.write_text("routes: {}\n")
    no_password = _invoke(["install", "-c", str(config), "--account", r".\outpost"], manager)
    assert no_password.exit_code != 0 and "needs --password" in no_password.output
    assert manager.calls == []


def test_without_pywin32_the_commands_say_what_to_do():
    result = CliRunner().invoke(service, ["start"])
    assert result.exit_code != 0 and "pywin32" in result.output and "systemd" in result.output


@pytest.fixture
def demo_site(tmp_path):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield _demo_site(tmp_path)
    for handler in list(root.handlers):        # the service core configured logging: undo it
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _demo_site(tmp_path):
    document = demo_config(tmp_path)
    document["shutdown_timeout"] = "5s"
    document["routes"]["customers"]["schedule"] = {"every": "0.2s"}
    (tmp_path / "outpost.yaml").write_text(yaml.safe_dump(document))
    _seed(tmp_path / "legacy-erp.db")
    return tmp_path


def test_service_start_and_stop_drive_the_agent_lifecycle(demo_site):
    states, log = [], RecordingLog()

    def factory(cfg):
        agent = Agent(cfg)
        states.append(agent)
        return agent

    core = ServiceCore(demo_site / "outpost.yaml", log, agent_factory=factory)
    scm = FakeScm(core)
    scm.start()
    deadline = time.monotonic() + 30
    while not (states and states[0].state == State.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.05)
    agent = states[0]
    assert agent.state == State.RUNNING
    while agent.queue.status().get("customers", {}).get("published_total", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    with sqlite3.connect(demo_site / "legacy-erp.db") as db:      # a change while it runs
        db.execute("UPDATE cust SET cust_name='Acme Renamed', updated_at=strftime('%Y-%m-%d %H:%M:%f', 'now')"
                   " WHERE cust_no='C-1001'")
    captured = lambda: agent.queue.status().get("customers", {}).get("captured_total", 0)  # noqa: E731
    deadline = time.monotonic() + 30       # a poll, however busy the machine: then the stop must deliver it
    while captured() < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    took = scm.stop(timeout=15)
    assert scm.exit_code == 0 and agent.state == State.STOPPED and took < 5 + 3
    assert [kind for kind, _ in log.entries] == ["info", "info"]
    assert log.entries[0][1].startswith("Outpost started: 2 route(s)") and log.entries[1][1] == "Outpost stopped"
    with sqlite3.connect(demo_site / "state" / "queue.db") as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        status = dict(db.execute("SELECT route, value FROM route_status").fetchall())
    assert '"published_total": 3' in status["customers"], "2 seeded + 1 change, delivered before the stop"
    assert (demo_site / "logs" / "outpost.log").is_file(), "the service logs to a file next to its state"


def test_service_stopped_while_loading_never_runs_and_a_bad_config_goes_to_the_event_log(demo_site, tmp_path):
    core = ServiceCore(demo_site / "outpost.yaml", RecordingLog())
    core.stop()                                    # SvcStop before SvcDoRun got the agent going
    assert core.run() == 0 and core.agent.state == State.STOPPED
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: {x: {source: nowhere}}\n")
    log = RecordingLog()
    assert ServiceCore(bad, log).run() == 2
    assert log.entries[0][0] == "error" and "Outpost cannot start" in log.entries[0][1]
