"""``outpost schemas show|export``: the schema text to register by hand.

With ``auto_register: false`` a person (or a pipeline) registers the schemas before the
agent publishes; these commands give the exact text the agent would send, and with
``--subject`` the names the registry will see (TopicNameStrategy: ``<topic>-value``, the
topic from ``fabric.topic_template``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from .config_checks import close_matches, topic_name

__all__ = ["schemas_show", "schemas_export"]

_DEFAULT_TEMPLATE = "outpost.{entity}"


def _catalog(schema_dir):
    from .schemas import SchemaCatalog
    return SchemaCatalog.load(schema_dir)


def _template(config_path: Optional[Path]) -> str:
    if config_path is None:
        return _DEFAULT_TEMPLATE
    from .cli_common import load_config
    return load_config(config_path, needs_secrets=False).fabric.topic_template


@click.command("show")
@click.argument("entity")
@click.option("--schema-dir", type=click.Path(path_type=Path), default=None)
def schemas_show(entity, schema_dir):
    """Print ENTITY's schema exactly as the agent registers it."""
    catalog = _catalog(schema_dir)
    if entity not in catalog.names():
        raise click.ClickException(f"no entity {entity!r}{close_matches(entity, catalog.names())} "
                                   f"(entities: {', '.join(catalog.names())})")
    click.echo(json.dumps(json.loads(catalog.entity(entity).schema_json), indent=2))


@click.command("export")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--subject", "by_subject", is_flag=True,
              help="Name the files by registry subject (<topic>-value.avsc) instead of by entity.")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="Take the topic template from this config (default: outpost.{entity}).")
@click.option("--schema-dir", type=click.Path(path_type=Path), default=None)
def schemas_export(directory, by_subject, config_path, schema_dir):
    """Write every schema to DIRECTORY, one file each, and list the subjects they go under."""
    catalog, template = _catalog(schema_dir), _template(config_path)
    directory.mkdir(parents=True, exist_ok=True)
    for name in catalog.names():
        subject = topic_name(template, name) + "-value"
        path = directory / f"{subject if by_subject else name}.avsc"
        path.write_text(json.dumps(json.loads(catalog.entity(name).schema_json), indent=2) + "\n", encoding="utf-8")
        click.echo(f"{name:<18} subject {subject:<40} {path}")
