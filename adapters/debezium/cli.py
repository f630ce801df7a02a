"""``outpost debezium ...``: housekeeping of log-based capture (no JVM needed).

* ``outpost debezium slots SOURCE``: each route's slot, whether it is active and the WAL it
  retains (the same number ``status`` shows as the route's ``health.lag_bytes``).
* ``outpost debezium reset SOURCE [--route R]``: forget the stored offsets (the engine
  offsets in the route's queue checkpoint, the offsets file and the schema history) after a
  lost slot / purged log / missing history. The next start takes the snapshot chosen by
  ``snapshot:`` again. Run it with the agent stopped.
* ``outpost debezium recover SOURCE [--route R]``: PostgreSQL, for a state directory whose
  checkpoint holds no engine offsets (older agent versions) and whose offsets file is lost or
  torn: the next start resumes from the replication slot's confirmed position, without a
  snapshot. Changes after that position are read again; their event ids are the same, so
  the queue drops those it already holds. Run it with the agent stopped.
* ``outpost debezium drop-slot SOURCE [--route R]``: drop the replication slot and the
  publication of each route (decommissioning: an abandoned slot pins WAL forever).
"""
from __future__ import annotations

import sys
import time

import click

from agent.cli_common import CONFIG_OPTION, load_config
from agent.contracts import ConfigError, TransientError

from .offsets import RESUME_FROM_SLOT
from .spec import SourceOptions, route_key, slot_and_publication, state_paths


def _routes(config_path, source: str, route: str | None):
    cfg = load_config(config_path)
    if cfg.sources.get(source, {}).get("type") != "debezium":
        raise click.ClickException(f"{source!r} is not a debezium source in {config_path}")
    names = [n for n, r in cfg.routes.items() if r.source == source and (route is None or n == route)]
    if not names:
        raise click.ClickException(f"no route reads source {source!r}" + (f" as {route!r}" if route else ""))
    return cfg, [(n, SourceOptions.model_validate(cfg.source_options(n))) for n in names]


ROUTE_OPTION = click.option("--route", default=None, help="Only this route (default: every route of SOURCE).")


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


def _set_engine_offsets(cfg, route: str, checkpoint: dict, *, only_if_stored: bool = False) -> bool:
    """Replace the route's queue checkpoint (where the engine offsets live); False if skipped."""
    from agent.queue import DurableQueue
    store = DurableQueue(cfg.state_dir)
    try:
        if only_if_stored and store.checkpoint(route) is None:
            return False
        store.commit_capture(route, [], [], checkpoint)   # one transaction, as a capture commit
        return True
    finally:
        store.close()


def _for_each_route(specs, action) -> None:
    """``action(name, spec)`` returns the lines to print; a route that fails is reported and the
    others still run; the exit status says whether any failed."""
    failed = False
    for name, spec in specs:
        try:
            for line in action(name, spec):
                click.echo(f"route {name}: {line}")
        except (click.ClickException, ConfigError, TransientError) as exc:
            failed = True
            click.echo(f"route {name}: {getattr(exc, 'message', exc)}", err=True)
    sys.exit(1 if failed else 0)


@debezium.command("reset")
@CONFIG_OPTION
@click.argument("source")
@ROUTE_OPTION
def reset(config_path, source, route):
    """Forget stored offsets and schema history (the next start snapshots again). Agent stopped."""
    cfg, specs = _routes(config_path, source, route)

    def forget(name, spec):
        paths = state_paths(cfg.state_dir, route_key(source, spec))
        removed = [p.name for p in (paths["offsets"], paths["history"]) if p.exists()]
        for key in ("offsets", "history"):
            paths[key].unlink(missing_ok=True)
        if _set_engine_offsets(cfg, name, {"v": 2, "offsets": {}, "reset_at": time.time()}, only_if_stored=True):
            removed.append("the engine offsets of the queue checkpoint")
        return [(f"removed {', '.join(removed)}" if removed else "nothing stored") +
                f"; the next start takes snapshot mode {spec.snapshot!r}"]

    _for_each_route(specs, forget)


@debezium.command("recover")
@CONFIG_OPTION
@click.argument("source")
@ROUTE_OPTION
def recover(config_path, source, route):
    """Resume from the replication slot's confirmed position, no snapshot (lost offsets). Agent stopped."""
    from . import pg
    cfg, specs = _routes(config_path, source, route)

    def resume_from_slot(name, spec):
        slot, _ = slot_and_publication(source, spec)
        if spec.connector != "postgres":
            raise click.ClickException(f"connector {spec.connector} has no replication slot to resume from; "
                                       f"`outpost debezium reset {source}` snapshots again")
        with pg.connect(spec) as conn:
            state = pg.slot_state(conn, slot)
        if state is None or state["wal_status"] == "lost":
            raise click.ClickException(f"replication slot {slot} is {'missing' if state is None else 'lost'}: "
                                       f"nothing to resume from; `outpost debezium reset {source}` snapshots again")
        if state["active"]:
            raise click.ClickException(f"replication slot {slot} is in use: stop the agent first")
        state_paths(cfg.state_dir, route_key(source, spec))["offsets"].unlink(missing_ok=True)
        _set_engine_offsets(cfg, name, {"v": 2, "offsets": {}, "resume": RESUME_FROM_SLOT,
                                       "requested_at": time.time()})
        return [f"the next start resumes from replication slot {slot} at {state['confirmed_flush_lsn']} without a "
                "snapshot (changes after it are read again; the queue drops those it already holds)"]

    _for_each_route(specs, resume_from_slot)


@debezium.command("drop-slot")
@CONFIG_OPTION
@click.argument("source")
@ROUTE_OPTION
def drop_slot(config_path, source, route):
    """Drop the replication slot and publication (decommissioning; the agent must be stopped)."""
    from . import pg
    _, specs = _routes(config_path, source, route)
    _for_each_route(specs, lambda name, spec: pg.drop_slot(spec, source) if spec.connector == "postgres"
                    else [f"connector {spec.connector} has no replication slot"])


# found by agent.registry.adapter_commands()
COMMANDS = [debezium]
