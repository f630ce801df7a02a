"""Fixtures for the real databases: a fresh, throw-away database per test.

PostgreSQL (127.0.0.1:5432, trust, user postgres) and MariaDB (127.0.0.1:3306, root, no
password) are started by `.ci/run` (and run on every development machine). Override with
OUTPOST_TEST_PG / OUTPOST_TEST_MARIADB (SQLAlchemy URLs of the server, no database).
"""
from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

PG_SERVER = os.environ.get("OUTPOST_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_SERVER = os.environ.get("OUTPOST_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/")


def _fresh_database(server_url: str, create: str, drop: str):
    name = "outpost_t_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(create.format(name=name))
    url = sa.engine.make_url(server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(drop.format(name=name))
        admin.dispose()


@pytest.fixture
def pg_url():
    """URL of a new, empty PostgreSQL database (dropped after the test)."""
    yield from _fresh_database(PG_SERVER, 'CREATE DATABASE "{name}"',
                               'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mariadb_url():
    """URL of a new, empty MariaDB database (dropped after the test)."""
    yield from _fresh_database(MARIADB_SERVER, "CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
                               "DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def sqlite_url(tmp_path):
    """URL of a new SQLite database file in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'legacy.db'}"


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def any_db_url(request):
    """Runs the test once per real database engine."""
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url",
                                    "mariadb": "mariadb_url"}[request.param])


@pytest.fixture(params=["postgres", "mariadb"])
def server_url(request):
    """Runs the test once per real database server (PostgreSQL, MariaDB)."""
    return request.getfixturevalue({"postgres": "pg_url", "mariadb": "mariadb_url"}[request.param])
