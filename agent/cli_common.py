"""What every ``outpost`` subcommand shares, wherever it is defined (core or adapter)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import config as config_module
from .contracts import ConfigError
from .logs import escape_controls


CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), show_default=True,
    default=lambda: os.environ.get("OUTPOST_CONFIG", "outpost.yaml"),
    help="The YAML config file (default: $OUTPOST_CONFIG or ./outpost.yaml).")


def load_config(config_path: Path, needs_secrets: bool = True):
    """The validated config, or every problem on stderr and exit code 2.

    ``needs_secrets=False`` for commands that only read the state directory (status, queue
    list/show/discard/purge): the operator's shell need not hold the source's passwords.

    The problems come redacted from ``config.load``. Control characters (a key written
    with an ANSI escape) are shown escaped and a line break indents, so a value cannot
    forge a line of its own."""
    try:
        return config_module.load(config_path, needs_secrets=needs_secrets)
    except ConfigError as exc:
        click.echo(f"{config_path}: {len(exc.problems)} problem(s) in the configuration:", err=True)
        for problem in exc.problems:
            shown = "\n    ".join(escape_controls(line) for line in problem.split("\n"))
            click.echo(f"  - {shown}", err=True)
        sys.exit(2)


def open_queue(cfg, **options):
    """The state directory's queue for an operator command; what it writes about failures
    is redacted with the config's secrets, as the agent's own writes are."""
    from .logs import RedactingFilter
    from .queue import DurableQueue
    return DurableQueue(cfg.state_dir, redact=RedactingFilter(cfg.secrets).redact, **options)


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _remember_level(ctx, param, value):
    if value:
        from . import logs
        import logging
        logs.LEVEL_OVERRIDE = value.upper()
        logging.getLogger().setLevel(logs.LEVEL_OVERRIDE)   # commands that never call logs.setup
    return value


def add_log_level(group: click.Group) -> None:
    """``--log-level`` on every command of ``group`` and its subgroups (adapters' too),
    overriding the config's log.level for that run."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            add_log_level(command)
        elif not any(p.name == "log_level" for p in command.params):
            command.params.append(click.Option(
                ["--log-level"], type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
                expose_value=False, is_eager=True, callback=_remember_level,
                help="Log at this level for this run (overrides log.level in the config)."))
