"""``outpost ha``: the active/passive pair this agent belongs to (docs/ha.md)."""
from __future__ import annotations

import json
import time

import click

from .cli_common import CONFIG_OPTION, load_config, open_queue
from .ha import STATUS_ROW


@click.group("ha")
def ha():
    """The HA pair: role, and handing over on purpose."""


def _pair(config_path):
    cfg = load_config(config_path)
    if cfg.ha is None:
        raise click.ClickException(f"{config_path} configures no HA pair (no 'ha:' section)")
    return cfg


@ha.command("status")
@CONFIG_OPTION
def ha_status(config_path):
    """This agent's role in the pair, the lease and the last handover (JSON)."""
    cfg = _pair(config_path)
    click.echo(json.dumps(open_queue(cfg).status_of(STATUS_ROW), indent=2, default=str))


@ha.command("handover")
@CONFIG_OPTION
def ha_handover(config_path):
    """Ask this (active) agent to step down so that the other takes over, e.g. before patching."""
    cfg = _pair(config_path)
    queue = open_queue(cfg)
    state = queue.status_of(STATUS_ROW)
    if state.get("role") != "active":
        raise click.ClickException(f"this agent is {state.get('role', 'not running')}, not active: nothing to hand "
                                   "over (run it on the active one)")
    queue.update_status(STATUS_ROW, handover_requested_at=time.time())
    click.echo(f"handover requested: the agent steps down within a few seconds; the other member of group "
               f"{cfg.ha.group} takes over within about {cfg.ha.lease + 3:.0f}s (outpost status shows the role)")
