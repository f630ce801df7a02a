"""Secrets substituted into URLs: percent-encoded where they land in the userinfo or a
query value, so a password with URL-special characters neither breaks the URL nor leaks.

End to end with a real PostgreSQL role whose password is ``Ap@p/Pw#2026``. PostgreSQL
here trusts 127.0.0.1, so it does not check the password: the test reads what libpq
was handed (user, host, password) and parses the URL with SQLAlchemy's ``make_url``.
"""
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from agent import config
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS, create_tables, insert_customers

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Ap@p/Pw#2026"


def fragments(secret: str, size: int = 5) -> set[str]:
    """Every run of ``size`` characters of the secret and of its percent-encoded form."""
    return {text[i:i + size] for text in (secret, quote(secret, safe="")) for i in range(len(text) - size + 1)}


def assert_no_fragment(text: str, secret: str = SECRET):
    for shown in (text, unquote(text)):
        leaked = sorted(f for f in fragments(secret) if f in shown)
        assert not leaked, f"fragments {leaked} of the secret in:\n{shown[-3000:]}"


def source_url(monkeypatch, template: str, **env) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = config.parse({"sources": {"erp": {"type": "sql_poll", "url": template}}})
    return cfg.sources["erp"]["url"], cfg.secrets


def test_a_password_in_the_userinfo_is_encoded_and_parses_back(monkeypatch):
    url, secrets = source_url(monkeypatch, "postgresql+psycopg://app:${OUTPOST_T_PW}@127.0.0.1:5432/erp",
                              OUTPOST_T_PW=SECRET)
    assert url == "postgresql+psycopg://app:Ap%40p%2FPw%232026@127.0.0.1:5432/erp"
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == \
        ("app", SECRET, "127.0.0.1", 5432, "erp")
    assert {SECRET, "Ap%40p%2FPw%232026"} <= secrets, "the redactor knows the encoded form"


def test_user_and_query_values_are_encoded_the_rest_is_left_as_written(monkeypatch):
    url, _ = source_url(monkeypatch, "postgresql+psycopg://${OUTPOST_T_USER}:${OUTPOST_T_PW}@${OUTPOST_T_HOST}/erp"
                                     "?sslpassword=${OUTPOST_T_PW}&application_name=a+b",
                        OUTPOST_T_USER="dom\\app:1", OUTPOST_T_PW="p&w=?% +", OUTPOST_T_HOST="db.example:5433")
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == ("dom\\app:1", "p&w=?% +",
                                                                            "db.example", 5433)
    assert dict(parsed.query) == {"sslpassword": "p&w=?% +", "application_name": "a b"}


def test_a_whole_url_from_the_environment_is_taken_as_it_is(monkeypatch):
    written = "postgresql+psycopg://app:already%40encoded@127.0.0.1/erp"
    url, _ = source_url(monkeypatch, "${OUTPOST_T_URL}", OUTPOST_T_URL=written)
    assert url == written


def test_a_reference_outside_a_url_is_not_encoded(monkeypatch):
    monkeypatch.setenv("OUTPOST_T_PW", SECRET)
    cfg = config.parse({"fabric": {"kafka": {"sasl.password": "${OUTPOST_T_PW}"}}})
    assert cfg.fabric.kafka["sasl.password"] == SECRET


@pytest.fixture
def role(pg_url):
    """A real login role whose password has URL-special characters, allowed to read the tables."""
    name = "outpost_t_" + uuid.uuid4().hex[:8]
    engine = create_tables(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")     # DDL takes no parameters
        conn.exec_driver_sql(f"GRANT SELECT ON erp_customer TO {name}")
    insert_customers(engine, range(1, 4))
    yield name, engine
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP OWNED BY {name}")
        conn.exec_driver_sql(f"DROP ROLE {name}")
    engine.dispose()


def _config(tmp_path, url: str) -> Path:
    document = {
        "state_dir": str(tmp_path / "state"),
        "log": {"level": "DEBUG", "file": str(tmp_path / "outpost.log")},
        "lookups": LOOKUPS, "mappings": {"customer": CUSTOMER_MAPPING},
        "sources": {"erp": {"type": "sql_poll", "url": url, "lag_seconds": 0}},
        "sinks": {"out": {"type": "avro_files", "directory": "outbox"}},
        "routes": {"customers": {"source": "erp", "sink": "out", "mapping": "customer",
                                 "capture": {"table": "erp_customer", "cursor": "updated_at"}}},
    }
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _outpost(*args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OUTPOST_T_PW": SECRET})


def test_a_real_role_with_a_url_special_password_connects_and_captures(tmp_path, role, monkeypatch):
    name, _ = role
    database = make_url(str(role[1].url)).database
    path = _config(tmp_path, f"postgresql+psycopg://{name}:${{OUTPOST_T_PW}}@127.0.0.1:5432/{database}")
    monkeypatch.setenv("OUTPOST_T_PW", SECRET)
    url = config.load(path).sources["erp"]["url"]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        info = conn.connection.dbapi_connection.info          # what libpq was handed
        assert (info.user, info.host, info.password, info.dbname) == (name, "127.0.0.1", SECRET, database)
        assert conn.exec_driver_sql("SELECT current_user").scalar() == name
    engine.dispose()

    check = _outpost("check", "-c", path)
    assert check.returncode == 0 and "route customers: source erp: ok" in check.stdout, check.stdout + check.stderr
    once = _outpost("run", "--once", "-c", path)
    assert once.returncode == 0, once.stderr
    assert len(list((tmp_path / "state" / "outbox").glob("*/*.avro"))) == 1
    assert_no_fragment(check.stdout + check.stderr + once.stdout + once.stderr + (tmp_path / "outpost.log").read_text())


def test_a_failing_connection_message_holds_no_fragment_of_the_password(tmp_path, role):
    name, _ = role
    path = _config(tmp_path, f"postgresql+psycopg://{name}:${{OUTPOST_T_PW}}@127.0.0.1:1/nowhere")
    check = _outpost("check", "-c", path)
    once = _outpost("run", "--once", "-c", path)
    log = (tmp_path / "outpost.log").read_text()
    assert_no_fragment(check.stdout + check.stderr + once.stdout + once.stderr + log)
    assert check.returncode == 1 and "route customers: source erp: PROBLEMS" in check.stdout, check.stdout
    assert f"{name}:***@127.0.0.1:1/nowhere" in check.stdout, "the URL is intact, its password masked"
    assert f"{name}:***@127.0.0.1:1/nowhere" in log, "the failed attempt is logged"
