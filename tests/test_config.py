"""Config loading: every problem at once, secrets from env and files, exit code 2."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent import config
from agent.contracts import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "outpost.example.yaml"


def test_example_config_is_valid(tmp_path, monkeypatch):
    secret_file = tmp_path / "registry-credentials"
    secret_file.write_text("svc:s3cr3t-registry\n")
    document = yaml.safe_load(EXAMPLE.read_text())
    document["fabric"]["schema_registry"]["basic.auth.user.info"] = f"${{file:{secret_file}}}"
    monkeypatch.setenv("OUTPOST_KAFKA_PASSWORD", "kafka-pw-123")
    monkeypatch.setenv("OUTPOST_ERP_PASSWORD", "erp-pw-456")
    cfg = config.parse(document)
    assert cfg.fabric.kafka["sasl.password"] == "kafka-pw-123"
    assert cfg.fabric.schema_registry["basic.auth.user.info"] == "svc:s3cr3t-registry"
    assert {"kafka-pw-123", "erp-pw-456", "svc:s3cr3t-registry"} <= cfg.secrets
    assert cfg.routes["projects"].schedule.cron == "*/2 * * * *"
    assert cfg.source_options("customers")["table"] == "CUSTOMER"
    assert cfg.source_options("customers")["lag_seconds"] == 10


def test_every_problem_is_reported_together(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    document = {
        "queue": {"max_bytes": "plenty"},
        "fabric": {"kafka": {"sasl.password": "${NOT_SET_ANYWHERE}"}},
        "mappings": {"m": {"entity": "Customer", "fields": {"customer_number": "NO", "colour": "C",
                                                            "currency": {"column": "CUR", "lookup": "nope"}}}},
        "sources": {"erp": {"type": "no_such_adapter"}},
        "sinks": {"out": {"type": "avro_files"}},
        "routes": {"r": {"source": "erp", "sink": "missing", "mapping": "m", "schedule": {"every": "soon"}}},
    }
    with pytest.raises(ConfigError) as caught:
        config.parse(document)
    text = "\n".join(caught.value.problems)
    for expected in ("queue.max_bytes", "NOT_SET_ANYWHERE", "mappings.m.fields.colour",
                     "mappings.m.fields.currency.lookup", "mappings.m.fields.name: required",
                     "routes.r.schedule.every", "sinks.out.directory", "no adapter named 'no_such_adapter'"):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert len(caught.value.problems) >= 8


def test_cli_rejects_bad_file_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  r: {source: a, sink: b, mapping: c, surprise: 1}\nqueue: {max_bytes: x}\n")
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check", "-c", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "routes.r.surprise" in result.stderr and "queue.max_bytes" in result.stderr
    assert "routes.r.source: expected one of" in result.stderr


def test_unreadable_yaml_is_a_config_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(broken)


def test_bad_cron_expression_is_reported():
    document = yaml.safe_load(EXAMPLE.read_text())
    document["routes"]["projects"]["schedule"] = {"cron": "every full moon"}
    document["fabric"]["kafka"]["sasl.password"] = "x"
    document["sources"]["erp"]["url"] = "postgresql+psycopg://outpost@erp-db/erp"
    document["fabric"]["schema_registry"]["basic.auth.user.info"] = "u:p"
    with pytest.raises(ConfigError) as caught:
        config.parse(document)
    (problem,) = caught.value.problems
    assert problem.startswith("routes.projects.schedule") and "every full moon" in problem


def test_secrets_from_references_are_redacted_from_logs(tmp_path, monkeypatch, capsys):
    import logging

    from agent.logs import setup
    monkeypatch.setenv("ERP_PW", "hunter2-very-secret")
    cfg = config.parse({"sources": {"erp": {"type": "sql_poll", "url": "postgresql://u:${ERP_PW}@db/erp"}}})
    setup("INFO", "text", None, cfg.secrets)
    try:
        logging.getLogger("outpost.test").warning("cannot connect to %s", cfg.sources["erp"]["url"])
        try:
            raise RuntimeError(f"driver said: password {cfg.sources['erp']['url']} rejected")
        except RuntimeError:
            logging.getLogger("outpost.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "hunter2-very-secret" not in err
    assert "postgresql://u:***@db/erp" in err and "driver said" in err


def test_an_ha_pair_refuses_what_it_cannot_fence_or_read_again(tmp_path):
    """A pair publishes only through fenced kafka sinks, and Debezium's slot moves before
    the fabric has the events (a failover could not read them again)."""
    from agent.config import parse
    from agent.contracts import ConfigError
    document = {"state_dir": str(tmp_path), "ha": {"group": "erp-pair"},
                "mappings": {"c": {"entity": "Customer", "fields": {
                    "customer_number": "id", "name": "id", "legal_entity": "id", "currency": "id",
                    "tax_jurisdiction": "id", "updated_at": "ts"}}},
                "sources": {"pg": {"type": "debezium", "user": "u", "database": "erp", "table": "public.t"}},
                "sinks": {"files": {"type": "avro_files", "directory": "out"}},
                "routes": {"r": {"source": "pg", "sink": "files", "mapping": "c"}}}
    with pytest.raises(ConfigError) as raised:
        parse(document)
    problems = "\n".join(raised.value.problems)
    assert "ha: needs fabric.kafka.bootstrap.servers" in problems
    assert "routes.r.sink: an HA pair publishes only through fenced kafka sinks" in problems
    assert "routes.r.source: debezium is not supported in an HA pair" in problems
