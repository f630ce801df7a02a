"""``outpost check`` on MariaDB: a cursor column nothing in the database keeps current
(no ON UPDATE, no trigger) is warned about; one with ON UPDATE is not. Real MariaDB."""
import sqlalchemy as sa

from adapters.sql_poll.source import SqlPollSource
from agent.contracts import AdapterContext


def _check(url, tmp_path, table):
    source = SqlPollSource({"url": url, "table": table, "cursor": "tms"},
                           AdapterContext(name="erp", state_dir=tmp_path, schemas=None, route="r"))
    return source.check()


def test_a_cursor_without_on_update_is_warned_about(mariadb_url, tmp_path):
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE plain (id INT PRIMARY KEY, tms TIMESTAMP NOT NULL DEFAULT "
                             "CURRENT_TIMESTAMP, INDEX (tms))")
        conn.exec_driver_sql("CREATE TABLE kept (id INT PRIMARY KEY, tms TIMESTAMP NOT NULL DEFAULT "
                             "CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, INDEX (tms))")
    (warning,) = _check(mariadb_url, tmp_path, "plain")
    assert warning.startswith("warning: cursor column 'tms' of plain has no ON UPDATE") and "ON UPDATE " \
        "CURRENT_TIMESTAMP" in warning, warning
    assert _check(mariadb_url, tmp_path, "kept") == []
