"""Names from outside never forge a log line or drive the operator's terminal.

A real file with a newline, a forged log line and ANSI escapes in its name is dropped
into a real inbox of a real agent process (text logs to a file); the log and the
operator's ``queue list`` must show the name escaped, on the line it belongs to.
"""
import re

import yaml

from tests.support.agent_process import AgentProcess, outpost
from tests.test_file_drop_agent import HEADER, config, invoice_line

FORGED = "2026-12-01 12:00:00,000 ERROR   outpost.agent: forged"
HOSTILE = f"inv\n{FORGED}\x1b[2J\x1b[31m\u2028.csv"
LINE_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)|    \| )")


def test_a_hostile_file_name_is_escaped_in_the_log_and_in_queue_list(tmp_path):
    document = config(tmp_path, {"pattern": "*.csv", "format": "csv"})
    document["log"] = {"format": "text", "file": str(tmp_path / "agent.log"), "level": "INFO"}
    document["shutdown_timeout"] = "5s"
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    inbox = tmp_path / "inbox"
    # an unknown legal entity: the whole file is rejected and its name logged at ERROR
    (inbox / HOSTILE).write_text(HEADER + invoice_line(1, company="99"))
    log_file = tmp_path / "agent.log"
    with AgentProcess(path, tmp_path / "stdout.log") as agent:
        assert agent.until(lambda: log_file.exists() and "forged" in log_file.read_text(errors="replace"), 60), \
            agent.log()
    text = log_file.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert all(LINE_START.match(line) for line in lines), [line for line in lines if not LINE_START.match(line)]
    assert not any(line.startswith(FORGED) for line in lines)
    assert "\x1b" not in text and "\u2028" not in text
    assert "inv\\n2026-12-01 12:00:00,000 ERROR   outpost.agent: forged\\x1b[2J" in text
    listing = outpost("queue", "list", "-c", path)
    assert listing.returncode == 0 and "forged" in listing.stdout, listing
    assert "\x1b" not in listing.stdout and not any(line.startswith(FORGED) for line in listing.stdout.splitlines())
