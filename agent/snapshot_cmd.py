"""``outpost snapshot``: ask the running agent for a re-snapshot of tables, list requests,
or forget a route's stored position (the documented recoveries for log-based sources)."""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import click

from . import snapshots
from .cli_common import CONFIG_OPTION, load_config as _load
from .statedir import StateDirInUse, StateLock

# The source types whose adapters read ``agent.snapshots`` requests while they stream; any
# other would leave a request pending forever.
SERVES_SNAPSHOT_REQUESTS = frozenset({"binlog", "debezium"})


@click.command("snapshot")
@CONFIG_OPTION
@click.option("--list", "show", is_flag=True, help="List snapshot requests and their progress.")
@click.option("--reset-checkpoint", "reset_route", metavar="ROUTE", default=None,
              help="Forget ROUTE's stored source position (stop the agent first); on the next start the "
                   "route begins again as its 'snapshot' option says.")
@click.argument("source", required=False)
@click.argument("tables", nargs=-1)
def snapshot(config_path, show, reset_route, source, tables):
    """Re-snapshot TABLES of the log-based SOURCE while streaming continues.

    The running agent picks the request up between batches; progress shows in
    `outpost status` and `outpost snapshot --list`.
    """
    cfg = _load(config_path, needs_secrets=False)     # requests and positions live in the state directory
    if reset_route:
        _reset(cfg, reset_route)
        return
    if show:
        for item in snapshots.listing(cfg.state_dir, source):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["requested_at"]))
            click.echo(f"{item['id']:>5}  {when}  {item['source']:<12} {item['table_name']:<24} {item['state']:<8}"
                       f" {json.dumps(item['progress'])}" + (f"  error: {item['error']}" if item["error"] else ""))
        return
    if not source or not tables:
        raise click.UsageError("give a SOURCE and at least one TABLE (or --list / --reset-checkpoint ROUTE)")
    if source not in cfg.sources:
        raise click.ClickException(f"no source {source!r} in {config_path} (sources: {', '.join(cfg.sources)})")
    kind = cfg.sources[source].get("type")
    if kind not in SERVES_SNAPSHOT_REQUESTS:
        routes = [name for name, r in cfg.routes.items() if r.source == source]
        raise click.ClickException(
            f"source {source!r} is {kind}, which does not take snapshot requests (only "
            f"{' and '.join(sorted(SERVES_SNAPSHOT_REQUESTS))} sources do); to read a table again from the start, "
            f"stop the agent and run: outpost snapshot --reset-checkpoint ROUTE -c {config_path} "
            f"(routes of {source}: {', '.join(routes) or 'none'})")
    captured = {str(r.capture.get("table")) for r in cfg.routes.values() if r.source == source}
    captured |= {f"{r.capture['schema']}.{r.capture['table']}" for r in cfg.routes.values()
                 if r.source == source and r.capture.get("schema")}
    unknown = [t for t in tables if t not in captured]
    if unknown and cfg.sources[source].get("type") == "binlog":
        raise click.ClickException(f"no route of source {source!r} captures {', '.join(unknown)} "
                                   f"(captured: {', '.join(sorted(captured)) or 'none'})")
    for request_id, table in zip(snapshots.request(cfg.state_dir, source, tables), tables):
        click.echo(f"snapshot request {request_id}: {source} {table} queued; the running agent picks it up "
                   "(progress: outpost status / outpost snapshot --list)")


def _reset(cfg, route: str) -> None:
    if route not in cfg.routes:
        raise click.ClickException(f"no route {route!r} (routes: {', '.join(cfg.routes)})")
    path = Path(cfg.state_dir) / "queue.db"
    if not path.exists():
        click.echo(f"route {route}: no stored position")
        return
    try:   # a running agent would write its next checkpoint over the reset
        lock = StateLock(cfg.state_dir, "outpost snapshot --reset-checkpoint").acquire()
    except StateDirInUse as exc:
        raise click.ClickException(f"stop the agent first: {exc}") from None
    with lock, closing(sqlite3.connect(path, timeout=30)) as db:
        row = db.execute("SELECT value FROM checkpoints WHERE route=?", (route,)).fetchone()
        db.execute("DELETE FROM checkpoints WHERE route=?", (route,))
        db.commit()
    click.echo(f"route {route}: stored position {row[0] if row else '(none)'} forgotten; the next start "
               "begins as the route's 'snapshot' option says")
