"""Operator commands as an operator runs them: on the demo's real state directory, with
the source's password missing from the shell (status and queue read only the state
directory), the exception queue's pages, filters, groups and JSON, ids that do not
exist, ``${credential:NAME}`` from systemd's credentials directory, and the small
things (--version, --log-level, JSON log time stamps, snapshot requests refused where
no adapter serves them). In-process through the CLI function: fast."""
import contextlib
import io
import json
import logging
import re

import pytest
import yaml
from click.testing import CliRunner

from agent import config as config_module
from agent.cli import main
from agent.cli_common import open_queue
from agent.demo import run_demo
from agent.logs import JsonFormatter


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's state (one open exception) plus 30 more entries on two routes, and a
    config whose source URL needs a password that is not set."""
    directory = tmp_path_factory.mktemp("operator")
    with contextlib.redirect_stdout(io.StringIO()):
        run_demo(directory)
    document = yaml.safe_load((directory / "outpost.yaml").read_text())
    document["sources"]["erp"]["url"] = "postgresql+psycopg://erp:${OUTPOST_T_NOT_SET_PW}@127.0.0.1:5432/erp"
    path = directory / "secret.yaml"
    path.write_text(yaml.safe_dump(document))
    cfg = config_module.load(path, needs_secrets=False)
    store = open_queue(cfg)
    store.commit_capture("customers", [], [{"stage": "mapping", "reason": "legal_entity: unknown code '07'",
                                            "key": f"C-{n}", "context": {}} for n in range(25)], None)
    store.commit_capture("invoices", [], [{"stage": "mapping", "reason": "currency: 'XXX' is not ISO 4217",
                                           "context": {}} for _ in range(5)], None)
    store.close()
    return path


def cli(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def test_status_and_queue_need_no_source_secret(demo, monkeypatch):
    monkeypatch.delenv("OUTPOST_T_NOT_SET_PW", raising=False)
    code, out = cli("status", "--json", "-c", demo)
    report = json.loads(out)
    assert code == 0 and report["open_exceptions"] == 31 and report["health"] == "degraded"
    assert "25 \u00d7 legal_entity: unknown code '07' (route customers)" in report["problems"][0]
    code, out = cli("queue", "show", "-c", demo, 1)
    assert code == 0 and json.loads(out)["context"]["record"]["after"]["cust_no"] == "C-1003"
    code, out = cli("check", "-c", demo)
    assert code == 2 and "sources.erp.url: expected environment variable OUTPOST_T_NOT_SET_PW" in out, \
        "commands that connect still refuse"


def test_queue_list_totals_pages_filters_groups_and_json(demo):
    code, out = cli("queue", "list", "-c", demo, "--limit", 5, "--offset", 2)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 6
    assert lines[-1] == ("3-7 of 31 open exception(s); next page: --offset 7; --group counts them by reason")
    assert "customers        mapping  - C-1: legal_entity" in lines[0]
    code, out = cli("queue", "list", "-c", demo, "--limit", 1)
    assert "Customer C-1003: legal_entity: unknown legal_entity code '07'" in out, "the key the mapping made"
    code, out = cli("queue", "list", "-c", demo, "--group")
    assert out.splitlines()[0] == "31 open exception(s) in 3 group(s):"
    assert re.search(r"^\s+25 \u00d7 customers\s+mapping\s+legal_entity: unknown code '07'\s+\(#2\.\.#26\)$",
                     out.splitlines()[1]), out
    code, out = cli("queue", "list", "-c", demo, "--route", "invoices", "--json")
    body = json.loads(out)
    assert body["total"] == 5 and {e["route"] for e in body["entries"]} == {"invoices"}
    code, out = cli("queue", "list", "-c", demo, "--reason", "ISO 4217", "--json", "--group")
    assert json.loads(out)["groups"][0]["count"] == 5
    code, out = cli("queue", "list", "-c", demo, "--older-than", "1h")
    assert code == 0 and "no open exceptions matching the filters" in out
    code, out = cli("queue", "list", "-c", demo, "--older-than", "soon")
    assert code == 2 and "--older-than" in out


def test_discarding_an_unknown_id_fails(demo):
    code, out = cli("queue", "discard", "-c", demo, 999)
    assert code == 1 and "999: no such exception" in out
    code, out = cli("queue", "discard", "-c", demo, 31, 999)
    assert code == 1 and "31: discarded" in out, "the good id is still discarded"
    code, out = cli("queue", "discard", "-c", demo, 31)
    assert code == 1 and "not open (it is discarded)" in out


def test_a_systemd_credential_resolves_and_is_redacted(tmp_path, monkeypatch):
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "db_password").write_text("p@ss/w#rd-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    cfg = config_module.parse({"sources": {"erp": {"type": "sql_poll", "url":
                               "postgresql://erp:${credential:db_password}@db/erp", "table": "t", "cursor": "c"}}})
    assert cfg.sources["erp"]["url"] == "postgresql://erp:p%40ss%2Fw%23rd-credential@db/erp"
    assert "p@ss/w#rd-credential" in cfg.secrets and "p%40ss%2Fw%23rd-credential" in cfg.secrets
    (tmp_path / "creds" / "db_password").unlink()
    with pytest.raises(config_module.ConfigError) as refused:
        config_module.parse({"x": "${credential:db_password}"})
    assert any(p.startswith("x: expected the systemd credential db_password") and "LoadCredential=db_password:" in p
               for p in refused.value.problems), refused.value.problems


def test_version_log_level_and_json_time_stamps(demo):
    code, out = cli("--version")
    assert code == 0 and re.fullmatch(r"outpost \S+\n", out)
    code, out = cli("status", "-c", demo, "--log-level", "debug")
    assert code == 0 and "health: degraded" in out
    record = logging.LogRecord("outpost", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1764646800.25
    assert json.loads(JsonFormatter().format(record))["ts"] == "2025-12-02T03:40:00.250Z"


def test_a_snapshot_request_to_a_polling_source_is_refused(demo):
    code, out = cli("snapshot", "-c", demo, "erp", "cust")
    assert code == 1 and "does not take snapshot requests" in out and "--reset-checkpoint" in out


def test_check_warns_when_the_status_endpoint_is_open_to_the_network(demo, tmp_path):
    document = yaml.safe_load(demo.read_text())
    document["sources"]["erp"]["url"] = f"sqlite:///{demo.parent / 'legacy-erp.db'}"
    document["http"] = {"enabled": True, "bind": "0.0.0.0", "port": 0}
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(document))
    code, out = cli("check", "-c", path)
    assert code == 0 and "warning: http.bind: 0.0.0.0 serves the status endpoint beyond this machine without a " \
                          "token: set http.token" in out, out


def test_the_demo_resets_itself_on_a_re_run(tmp_path):
    runs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run_demo(tmp_path / "demo")
        runs.append([line for line in out.getvalue().splitlines() if "captured" in line or "published" in line])
    assert runs[0] == runs[1] and any("captured 3, rejected 1" in line for line in runs[1]), runs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "state").mkdir()
    (tmp_path / "mine" / "state" / "keep.txt").write_text("not the demo's")
    with contextlib.redirect_stdout(io.StringIO()):
        run_demo(tmp_path / "mine")
    assert (tmp_path / "mine" / "state" / "keep.txt").exists(), "a directory the demo did not make is not reset"
