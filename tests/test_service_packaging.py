"""Packaging: wheel and sdist, the PyInstaller folder, and the versioned state directory.

The builds run on a copy of the source tree in a temp dir (the shared checkout is left
untouched). The PyInstaller folder is then used for real: ``outpost schemas list`` and
the whole demo route (SQLite -> queue -> Avro files) run from it.
"""
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent import queue_schema as queue_module
from agent.contracts import OutpostError
from agent.queue import DurableQueue, migrate

ROOT = Path(__file__).resolve().parent.parent


def _source_copy(tmp_path) -> Path:
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("agent", "adapters", "avro", "packaging", "docs"):
        # without the generated encoders: the build must write them
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                                "_avro_encoders.py"))
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    return tree


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_code_the_page_and_the_schemas(tmp_path):
    pytest.importorskip("build")
    tree = _source_copy(tmp_path)
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(tree)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("outpost-*.whl")
    (sdist,) = (tmp_path / "dist").glob("outpost-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("agent/http.py", "agent/metrics.py", "agent/notify.py", "agent/service_windows.py",
                   "agent/web/page.py", "adapters/kafka/sink.py"):
        assert module in names, module
    assert any(n.endswith("data/share/outpost/avro/EventMetadata.avsc") for n in names)
    for released in (ROOT / "avro" / "released").glob("v*/*.avsc"):     # how an upgrade sends the old backlog
        shipped = f"data/share/outpost/avro/released/{released.parent.name}/{released.name}"
        assert any(n.endswith(shipped) for n in names), f"{shipped}: a line per version in setup.cfg"
    codecs = zipfile.ZipFile(wheel).read("agent/_avro_encoders.py").decode()
    entities = [p for p in (ROOT / "avro").glob("*.avsc") if "outpost.entity" in p.read_text()]
    for table in ("ENCODERS", "DECODERS"):
        rows = codecs.split(f"\n{table} = {{", 1)[1].split("\n}", 1)[0]
        assert rows.count("\n    '") == len(entities), f"{table}: one generated function per canonical entity schema"
    assert any(n.endswith("data/share/doc/outpost/operations.md") for n in names), "the unit's Documentation="
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "outpost = agent.cli:main" in entry_points
    assert any(n.endswith("avro/Customer.avsc") for n in tarfile.open(sdist).getnames())


@pytest.mark.slow
def test_pyinstaller_folder_runs_without_the_source_tree(tmp_path):
    pytest.importorskip("PyInstaller")
    tree = _source_copy(tmp_path)
    done = subprocess.run(["bash", str(tree / "packaging" / "build_pyinstaller.sh"), str(tmp_path / "dist")],
                          cwd=tree, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                               "OUTPOST_BUILD_DIR": str(tmp_path / "work")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    shutil.rmtree(tree)                       # the folder must not need the sources
    assert (tmp_path / "dist" / "outpost" / "docs" / "operations.md").is_file(), "the unit's Documentation="
    exe = tmp_path / "dist" / "outpost" / "outpost"
    listed = subprocess.run([str(exe), "schemas", "list"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert listed.returncode == 0 and "Customer" in listed.stdout and "Invoice" in listed.stdout, listed.stderr
    demo = subprocess.run([str(exe), "demo", "--dir", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "published 3" in demo.stdout and "rejected 1" in demo.stdout


def test_the_state_directory_schema_is_versioned_and_migrated(tmp_path, monkeypatch):
    queue = DurableQueue(tmp_path)
    queue.close()
    # this release's queue, opened by the next release that adds a column
    current = queue_module.SCHEMA_VERSION
    applied = []
    monkeypatch.setitem(queue_module.MIGRATIONS, current,
                        lambda conn: applied.append(conn.execute("ALTER TABLE outbox ADD COLUMN note TEXT")))
    monkeypatch.setattr(queue_module, "SCHEMA_VERSION", current + 1)
    with sqlite3.connect(tmp_path / "queue.db", isolation_level=None) as db:
        assert migrate(db, tmp_path / "queue.db") == current
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(current + 1),)
        assert "note" in [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
        assert migrate(db, tmp_path / "queue.db") == current + 1 and len(applied) == 1, "runs once"
        db.execute("UPDATE meta SET value='9' WHERE key='schema_version'")   # written by a newer agent
    with pytest.raises(OutpostError, match="newer than this agent"):
        DurableQueue(tmp_path)


def test_systemd_unit_is_valid_and_hardened(tmp_path):
    text = (ROOT / "packaging" / "systemd" / "outpost.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["WatchdogSec"] == "60s" and settings["Restart"] == "on-failure"
    assert settings["User"] == "outpost" and settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict" and "/var/lib/outpost" in settings["ReadWritePaths"]
    assert settings["ProtectHome"] == "yes" and settings["PrivateTmp"] == "yes"
    assert settings["SystemCallFilter"] == "@system-service" and settings["SystemCallErrorNumber"] == "EPERM"
    assert "LoadCredential=db_password:/etc/outpost/credentials/db_password" in text, "a credentials example"
    documentation = settings["Documentation"].removeprefix("file:///opt/outpost/")
    assert (ROOT / documentation).is_file(), f"the unit points at {documentation}, which the build ships"
    analyze = shutil.which("systemd-analyze")
    if analyze:
        unit = tmp_path / "outpost.service"
        unit.write_text(text.replace("/opt/outpost/outpost run", "/bin/true run"))
        verified = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                                  timeout=60)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
