"""``outpost queue list``: the exception queue as an operator reads it.

A total, pages (``--limit``/``--offset``), filters (route, part of the reason, age),
near-identical entries grouped into one line ("2,999 x legal_entity: unknown code '07'"),
the business key when the mapping produced one, and ``--json`` for scripts. Reads only
the state directory: the source's secrets need not be in the operator's environment.
"""
from __future__ import annotations

import json
import time

import click

from .cli_common import CONFIG_OPTION, load_config, open_queue
from .exception_view import Filter, groups, page
from .logs import escape_controls

__all__ = ["queue_list"]


def _seconds(ctx, param, value):
    if value is None:
        return None
    from .units import parse_duration
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("list")
@CONFIG_OPTION
@click.option("--status", "state", default="open", show_default=True, type=click.Choice(["open", "retried", "discarded"]))
@click.option("--route", default=None, help="Only this route's entries.")
@click.option("--reason", default=None, metavar="TEXT", help="Only entries whose reason contains TEXT (any case).")
@click.option("--older-than", "older_than", default=None, metavar="DURATION", callback=_seconds,
              help="Only entries made longer ago than this, e.g. 2h or 7d.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="Entries per page.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0), help="Entries to skip.")
@click.option("--group", "grouped", is_flag=True, help="One line per route and reason, with how many entries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (total, entries or groups).")
def queue_list(config_path, state, route, reason, older_than, limit, offset, grouped, as_json):
    """List parked entries: the total, a page of them, or groups of the same reason."""
    cfg = load_config(config_path, needs_secrets=False)
    store = open_queue(cfg)
    where, now = Filter(status=state, route=route, reason=reason, older_than=older_than), time.time()
    try:
        total, items = page(store.reader(), where, now, limit, offset)
        found = groups(store.reader(), where, now) if grouped else None
    finally:
        store.close()
    if as_json:
        body = {"total": total, "status": state, **({"groups": found} if grouped else
                                                     {"offset": offset, "limit": limit, "entries": items})}
        click.echo(json.dumps(body, indent=2, default=str))
        return
    if not total:
        click.echo(f"no {state} exceptions" + (" matching the filters" if route or reason or older_than else ""))
        return
    if grouped:
        click.echo(f"{total:,} {state} exception(s) in {len(found)} group(s):")
        for g in found:
            ids = f"#{g['first_id']}" if g["count"] == 1 else f"#{g['first_id']}..#{g['last_id']}"
            click.echo(escape_controls(f"{g['count']:>7,} \u00d7 {g['route']:<16} {g['stage']:<8} {g['reason']}  "
                                       f"({ids})"))
        return
    for item in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created_at"]))
        click.echo(escape_controls(f"{item['id']:>6}  {when}  {item['route']:<16} {item['stage']:<8} "
                                   f"{item['entity'] or '-'} {item['key'] or '-'}: {item['reason']}"))
    shown_to = offset + len(items)
    click.echo(f"{offset + 1 if items else offset}-{shown_to} of {total:,} {state} exception(s)"
               + (f"; next page: --offset {shown_to}" if shown_to < total else "")
               + ("; --group counts them by reason" if total > len(items) else ""))
