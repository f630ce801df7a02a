"""``outpost reconcile ROUTE [--window YYYY-MM-DD|yesterday|all]``: tie a route out, print the
table, publish the Reconciliation event; exit 1 while an unexplained difference remains."""
from __future__ import annotations

import json
import sys

import click

from .cli_common import CONFIG_OPTION, load_config, open_queue
from .logs import escape_controls

__all__ = ["reconcile"]


@click.command()
@CONFIG_OPTION
@click.argument("route")
@click.option("--window", default=None, metavar="YYYY-MM-DD|yesterday|all",
              help="A business day, or everything (default: the route's reconcile.window).")
@click.option("--deletes", type=click.Choice(["off", "report", "publish"]), default=None,
              help="Look for hard deletes (default: the route's reconcile.deletes).")
@click.option("--no-publish", is_flag=True, help="Print only; queue no Reconciliation event.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def reconcile(config_path, route, window, deletes, no_publish, as_json):
    """Compare a route's source with what the fabric acknowledged (counts, control sums)."""
    from .contracts import OutpostError, TransientError
    from .reconcile import Window, render
    from .reconcile_run import reconcile_route
    from .schemas import SchemaCatalog
    cfg = load_config(config_path)
    if window is not None:
        try:
            Window.parse(window)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--window") from None
    store = open_queue(cfg)
    try:
        outcome = reconcile_route(cfg, SchemaCatalog.load(cfg.schema_dir), store, route, window,
                                  publish=not no_publish, deletes=deletes)
    except (OutpostError, TransientError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    search = outcome.pop("delete_search", None)
    if as_json:
        click.echo(json.dumps({**outcome, "hard_deletes": None if search is None else {
            "found": [k.key for k in search.deleted][:100], "count": len(search.deleted),
            "ranges": search.ranges, "differing_ranges": search.differing_ranges,
            "source_queries": search.source_queries}}, indent=2, default=str))
    else:
        for line in render(outcome).split("\n"):
            click.echo(escape_controls(line))
        if search is not None:
            click.echo(f"  hard deletes: {len(search.deleted)} found ({search.ranges} key ranges hashed, "
                       f"{search.differing_ranges} differed, {search.source_queries} source queries)")
    sys.exit(0 if outcome["unexplained_key_count"] == 0 else 1)
