"""``outpost check``: what the agent needs of the machine it runs on, tried for real.

- the state directory can be created and written (the queue, offsets and locks live
  there; an unwritable one would fail only when the service starts);
- the status endpoint's port is free (a second program on it fails the start).
"""
from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from .statedir import holder

__all__ = ["host_problems"]


def host_problems(cfg) -> list[str]:
    http = (_port_problems(cfg) + _exposure(cfg)) if cfg.http.enabled else []
    return _state_dir_problems(Path(cfg.state_dir)) + http


def _exposure(cfg) -> list[str]:
    from .http import exposed_without_token
    if not exposed_without_token(cfg.http):
        return []
    return [f"warning: http.bind: {cfg.http.bind} serves the status endpoint beyond this machine without a "
            "token: set http.token: ${OUTPOST_HTTP_TOKEN} (or ${credential:http_token}), or bind 127.0.0.1"]


def _state_dir_problems(path: Path) -> list[str]:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return [f"state_dir: found {str(path)!r}, but {existing} is a file, not a directory; set state_dir to a "
                "directory the service account owns"]
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".outpost-check-"):
            pass
    except OSError as exc:
        return [f"state_dir: found {str(path)!r}, which this user ({_user()}) cannot write ({exc.strerror}); "
                f"create it owned by the service account (e.g. install -d -o outpost -m 0700 {path}) or set "
                "state_dir to a writable directory"]
    return []


def _port_problems(cfg) -> list[str]:
    bind, port = cfg.http.bind, cfg.http.port
    if port == 0:
        return []
    try:
        with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as probe:
            probe.bind((bind, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return [f"http.bind: cannot listen on {bind}:{port} ({exc.strerror}); set http.bind to an address of "
                    "this machine (127.0.0.1 for local access only)"]
        running = holder(cfg.state_dir)
        if running:
            return [f"warning: http.port: {port} is in use, most likely by the running agent (PID "
                    f"{running.get('pid')}) of this state directory"]
        return [f"http.port: found {port}, which another program already listens on ({bind}:{port}); pick a free "
                "port (e.g. http.port: 8766) or stop the other program (ss -ltnp shows which)"]
    return []


def _user() -> str:
    try:
        import getpass
        return getpass.getuser()
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "?"
