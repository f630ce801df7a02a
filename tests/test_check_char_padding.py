"""``outpost check`` warns when a mapped CHAR(n) column comes back blank-padded: on
PostgreSQL "C-1" would be published as "C-1     " and a padded company code would miss its
lookup on every row. MariaDB strips the blanks itself, so there is nothing to warn about;
a field that already converts with ``strip`` is not warned about either. Real PostgreSQL
and MariaDB; ``check`` runs in-process through the CLI."""
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from agent.cli import main


def _check(tmp_path, url, monkeypatch, strip_company=False) -> str:
    import agent.logs
    monkeypatch.setattr(agent.logs, "setup", lambda *a, **k: None)    # keep pytest's log capture
    company = {"column": "company", "lookup": "legal_entity", **({"convert": ["strip"]} if strip_company else {})}
    document = {
        "state_dir": str(tmp_path / "state"),
        "lookups": {"legal_entity": {"01": "US01"}, "tax_jurisdiction": {"NY": "US-NY"}},
        "mappings": {"customer": {"entity": "Customer", "fields": {
            "customer_number": "cust_no", "name": "cust_name", "legal_entity": company, "currency": "curr",
            "tax_jurisdiction": {"column": "tax_code", "lookup": "tax_jurisdiction"}, "updated_at": "updated_at"}}},
        "sources": {"erp": {"type": "sql_poll", "url": url, "lag_seconds": 0}},
        "sinks": {"outbox": {"type": "avro_files", "directory": str(tmp_path / "outbox")}},
        "routes": {"customers": {"source": "erp", "sink": "outbox", "mapping": "customer",
                                 "capture": {"table": "cust", "cursor": "updated_at"}}}}
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    return CliRunner().invoke(main, ["check", "-c", str(path)]).output


def _fill(url):
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE cust (cust_no CHAR(8) PRIMARY KEY, cust_name VARCHAR(40) NOT NULL,"
                             " company CHAR(4), curr CHAR(3), tax_code VARCHAR(8), updated_at TIMESTAMP NOT NULL)")
        conn.exec_driver_sql("CREATE INDEX cust_updated ON cust (updated_at)")
        conn.exec_driver_sql("INSERT INTO cust VALUES ('C-1', 'Acme', '01', 'USD', 'NY', '2026-01-01 10:00:00')")
    engine.dispose()


def test_padded_char_columns_are_warned_about_on_postgresql(pg_url, tmp_path, monkeypatch):
    _fill(pg_url)
    with sa.create_engine(pg_url).begin() as conn:
        conn.exec_driver_sql("ANALYZE cust")
    output = _check(tmp_path, pg_url, monkeypatch)
    warnings = [line for line in output.splitlines() if "blank-padded" in line]
    assert any("mappings.customer.fields.customer_number.column: 'cust_no'" in w and "'C-1     '" in w
               and "add convert: [strip]" in w for w in warnings), output
    assert any("fields.legal_entity.column: 'company'" in w and "'01  '" in w for w in warnings), output
    assert not any("'curr'" in w for w in warnings), "CHAR(3) holding three letters has no blanks"
    assert not any("cust_name" in w or "tax_code" in w for w in warnings), "VARCHAR is never padded"
    stripped = _check(tmp_path, pg_url, monkeypatch, strip_company=True)
    assert "'company'" not in "\n".join(line for line in stripped.splitlines() if "blank-padded" in line), stripped
    assert "'cust_no'" in stripped


def test_mariadb_strips_char_blanks_itself(mariadb_url, tmp_path, monkeypatch):
    _fill(mariadb_url)
    output = _check(tmp_path, mariadb_url, monkeypatch)
    assert "blank-padded" not in output, output
    assert "cust" in output, "the check reached the table"
