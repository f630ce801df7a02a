"""``outpost debezium ...``: housekeeping of log-based capture (no JVM needed).

* ``outpost debezium slots SOURCE``: each route's slot, whether it is active and the WAL it
  retains (the same number ``status`` shows as ``slot_retained_bytes``).
* ``outpost debezium reset SOURCE [--route R]``: forget the stored offsets (and schema
  history) of the source's routes, after a lost slot / purged log / missing history. The
  next start takes the snapshot chosen by ``snapshot:`` again. Run it with the agent stopped.
* ``outpost debezium drop-slot SOURCE [--route R]``: drop the replication slot and the
  publication of each route (decommissioning: an abandoned slot pins WAL forever).
"""
from __future__ import annotations

import sys

import click

from agent.cli_common import CONFIG_OPTION, load_config
from agent.contracts import ConfigError, TransientError

from .spec import SourceOptions, route_key, slot_and_publication, state_paths


def _routes(config_path, source: str, route: str | None):
    cfg = load_config(config_path)
    if cfg.sources.get(source, {}).get("type") != "debezium":
        raise click.ClickException(f"{source!r} is not a debezium source in {config_path}")
    names = [n for n, r in cfg.routes.items() if r.source == source and (route is None or n == route)]
    if not names:
        raise click.ClickException(f"no route reads source {source!r}" + (f" as {route!r}" if route else ""))
    return cfg, [(n, SourceOptions.model_validate(cfg.source_options(n))) for n in names]


@click.group("debezium")
def debezium():
    """Log-based capture housekeeping: replication slots and stored offsets."""


@debezium.command("slots")
@CONFIG_OPTION
@click.argument("source")
def slots(config_path, source):
    """Show each route's replication slot and the WAL it retains."""
    from . import pg
    _, specs = _routes(config_path, source, None)
    for name, spec in specs:
        slot, _ = slot_and_publication(source, spec)
        try:
            with pg.connect(spec) as conn:
                state = pg.slot_state(conn, slot)
        except (ConfigError, TransientError) as exc:
            raise click.ClickException(str(exc))
        click.echo(f"route {name}: slot {slot}: " + ("missing" if state is None else
                   f"active={state['active']} retained={state['retained_bytes']} bytes "
                   f"confirmed_flush_lsn={state['confirmed_flush_lsn']} wal_status={state['wal_status']}"))


@debezium.command("reset")
@CONFIG_OPTION
@click.argument("source")
@click.option("--route", default=None, help="Only this route (default: every route of SOURCE).")
def reset(config_path, source, route):
    """Forget stored offsets and schema history (the next start snapshots again). Agent stopped."""
    cfg, specs = _routes(config_path, source, route)
    for name, spec in specs:
        paths = state_paths(cfg.state_dir, route_key(source, spec))
        removed = [p.name for p in (paths["offsets"], paths["history"]) if p.exists()]
        for key in ("offsets", "history"):
            paths[key].unlink(missing_ok=True)
        click.echo(f"route {name}: " + (f"removed {', '.join(removed)}" if removed else "nothing stored") +
                   f"; the next start takes snapshot mode {spec.snapshot!r}")


@debezium.command("drop-slot")
@CONFIG_OPTION
@click.argument("source")
@click.option("--route", default=None, help="Only this route (default: every route of SOURCE).")
def drop_slot(config_path, source, route):
    """Drop the replication slot and publication (decommissioning; the agent must be stopped)."""
    from . import pg
    _, specs = _routes(config_path, source, route)
    failed = False
    for name, spec in specs:
        if spec.connector != "postgres":
            click.echo(f"route {name}: connector {spec.connector} has no replication slot")
            continue
        try:
            for line in pg.drop_slot(spec, source):
                click.echo(f"route {name}: {line}")
        except (ConfigError, TransientError) as exc:
            failed = True
            click.echo(f"route {name}: {exc}", err=True)
    sys.exit(1 if failed else 0)


# found by agent.registry.adapter_commands()
COMMANDS = [debezium]
