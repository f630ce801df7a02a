"""What every ``outpost`` subcommand shares, wherever it is defined (core or adapter)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import config as config_module
from .contracts import ConfigError

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), show_default=True,
    default=lambda: os.environ.get("OUTPOST_CONFIG", "outpost.yaml"),
    help="The YAML config file (default: $OUTPOST_CONFIG or ./outpost.yaml).")


def load_config(config_path: Path):
    """The validated config, or every problem on stderr and exit code 2."""
    try:
        return config_module.load(config_path)
    except ConfigError as exc:
        click.echo(f"{config_path}: {len(exc.problems)} problem(s) in the configuration:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(2)
