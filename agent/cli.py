"""The ``outpost`` command: a thin shell around ``Agent``."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from .cli_common import CONFIG_OPTION, add_log_level, load_config as _load, open_queue
from .version import version_text
from .logs import escape_controls
from .registry import adapter_commands

def _setup_logging(cfg, level=None):
    from .logs import setup
    setup(level or cfg.log.level, cfg.log.format, str(cfg.log.file) if cfg.log.file else None, cfg.secrets)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version_text(), "-V", "--version", message="outpost %(version)s")
def main():
    """Outpost: capture legacy ERP/PSA changes as canonical Avro events for the fabric."""
    # Every command may create files in the state directory (the queue's -wal, offsets):
    # they hold customer data and must never be readable by other local users.
    os.umask(0o077)


@main.command()
@CONFIG_OPTION
@click.option("--once", is_flag=True, help="Capture every route once, deliver, and exit.")
def run(config_path, once):
    """Run the agent in the foreground until SIGTERM/SIGINT."""
    from .runtime import Agent
    from .statedir import StateDirInUse
    cfg = _load(config_path)
    _setup_logging(cfg)
    agent = Agent(cfg, separate_delivery=cfg.delivery_process and not once, config_path=config_path)
    try:
        agent.build()
    except StateDirInUse as exc:
        if cfg.log.file:     # the service's journal or log file must say why it did not start
            logging.getLogger("outpost.agent").error("not starting: %s", exc)
        click.echo(f"outpost: not starting: {exc}", err=True)
        sys.exit(3)
    if once:
        agent.start(capture=False)
        agent.run_pass()
        delivered = agent.deliver_all()
        agent.stop()
        sys.exit(0 if delivered else 1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    if hasattr(signal, "SIGHUP"):      # systemd's ExecReload, or kill -HUP
        signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
    from .notify import host
    if not host(agent):     # shutdown bound reached: abandoned threads must not delay the exit
        logging.shutdown()
        os._exit(0)


@main.command()
@CONFIG_OPTION
def check(config_path):
    """Validate the config, connect to every source, the broker and the registry."""
    from .checks import run_checks
    cfg = _load(config_path)
    _setup_logging(cfg, "CRITICAL")   # the problems are printed below; client retry chatter is noise here
    click.echo(f"config: ok ({len(cfg.routes)} route(s))")
    failed = False
    for subject, problems in run_checks(cfg):
        errors = [p for p in problems if not p.startswith("warning:")]
        failed |= bool(errors)
        click.echo(f"{subject}: " + ("PROBLEMS" if errors else "ok"))
        for problem in problems:
            click.echo(f"  - {problem}")
    sys.exit(1 if failed else 0)


@main.command()
@CONFIG_OPTION
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the agent's answer.")
def reload(config_path, timeout):
    """Make the running agent re-read its config (mappings, lookups, filters, schedules)."""
    from . import reload as reloading
    from .statedir import holder
    cfg = _load(config_path)     # refused here first, with every problem, if the file is invalid
    running = holder(cfg.state_dir)
    if not running:
        raise click.ClickException(f"no agent is running on {cfg.state_dir}")
    request_id = reloading.request(cfg.state_dir)
    found = reloading.wait(cfg.state_dir, request_id, timeout)
    if found is None:
        raise click.ClickException(f"the agent (PID {running.get('pid')}) did not answer within {timeout:.0f}s; "
                                   "the request stays pending and is served when it looks again")
    state, text = found
    first, *rest = text.split("\n")
    click.echo(f"reload {state}: {escape_controls(first)}")
    for line in rest:
        click.echo(escape_controls(line))
    sys.exit(0 if state == "done" else 1)


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(config_path, as_json):
    """Per route: last capture, queue depth, oldest queued age, last publish, errors."""
    from .metrics import objectives, render_objectives
    from .status import collect, render
    cfg = _load(config_path, needs_secrets=False)     # reads the state directory only
    report = collect(cfg)
    report["objectives"] = objectives(cfg, report["routes"])
    click.echo(json.dumps(report, indent=2, default=str) if as_json else
               "\n".join(map(escape_controls, (render(report) + render_objectives(report["objectives"])).split("\n"))))


@main.group()
def queue():
    """The exception queue: records and events that could not be published."""


@queue.command("show")
@CONFIG_OPTION
@click.argument("exception_id", type=int)
def queue_show(config_path, exception_id):
    """Show one entry with its full context (source row, mapping, every failed rule)."""
    cfg = _load(config_path, needs_secrets=False)
    item = open_queue(cfg).exception(exception_id)
    if item is None:
        raise click.ClickException(f"no exception {exception_id}")
    if item.get("body") is not None:
        item["body"] = f"<{len(item['body'])} bytes of Avro>"
    click.echo(json.dumps(item, indent=2, default=str))
    conflict = (item.get("context") or {}).get("conflict") if isinstance(item.get("context"), dict) else None
    if conflict and conflict.get("side_by_side"):
        click.echo("")
        click.echo(escape_controls(f"conflict on {conflict.get('table')}: {conflict.get('reason')}"))
        for line in side_by_side_table(conflict["side_by_side"]).splitlines():
            click.echo(escape_controls(line))     # values come from outside: no control characters


def side_by_side_table(lines: list) -> str:
    """The local row next to the event's images, one column per line; a looked-up code is
    shown as the local value with the canonical one in brackets. '!' marks a column where
    the local row is not what the event was based on."""
    def cell(local, canonical=None):
        text = "-" if local is None else str(local)
        return text if canonical is None or str(canonical) == text else f"{text} ({canonical})"
    table = [("", "column", "field", "local row", "event before", "event after")]
    for line in lines:
        differs = line.get("before") is not None and str(line.get("local")) != str(line.get("before"))
        table.append(("!" if differs else "", line["column"], line.get("field") or "-", cell(line.get("local")),
                      cell(line.get("before"), line.get("before_canonical")),
                      cell(line.get("after"), line.get("after_canonical"))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in table)


@queue.command("retry")
@CONFIG_OPTION
@click.argument("exception_ids", type=int, nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Retry every open entry.")
def queue_retry(config_path, exception_ids, retry_all):
    """Map again (after master data was fixed) and re-queue; the running agent sends them."""
    from .retry import retry_exception
    from .build import make_lookups, make_translator
    from .schemas import SchemaCatalog
    from .contracts import TransientError
    cfg = _load(config_path)
    store = open_queue(cfg)
    catalog = SchemaCatalog.load(cfg.schema_dir)
    lookups = make_lookups(cfg)
    translators: dict = {}
    ids = [i["id"] for i in store.exceptions("open", limit=10**9)] if retry_all else list(exception_ids)
    failed = 0
    for exception_id in ids:
        item = store.exception(exception_id)
        if item is None or item["status"] != "open":
            click.echo(f"{exception_id}: not an open exception")
            failed += 1
            continue
        route = item["route"]
        if route in cfg.routes and route not in translators:
            translators[route] = make_translator(cfg, catalog, route, lookups)
        try:
            ok, what = retry_exception(store, item, translators.get(route))
        except TransientError as exc:      # a SQL lookup cannot be read: the entry stays as it is
            ok, what = False, f"not retried: {exc}"
        failed += not ok
        click.echo(f"{exception_id}: {what}")
    sys.exit(1 if failed else 0)


@queue.command("discard")
@CONFIG_OPTION
@click.argument("exception_ids", type=int, nargs=-1, required=True)
def queue_discard(config_path, exception_ids):
    """Mark entries as discarded (kept for audit, never sent)."""
    cfg = _load(config_path, needs_secrets=False)
    store = open_queue(cfg)
    failed = 0
    for exception_id in exception_ids:
        if store.discard_exception(exception_id):
            click.echo(f"{exception_id}: discarded")
            continue
        failed += 1     # a script must learn that an id was wrong, not read "not open" and carry on
        item = store.exception(exception_id)
        click.echo(f"{exception_id}: " + (f"not open (it is {item['status']})" if item else "no such exception"),
                   err=True)
    sys.exit(1 if failed else 0)


@queue.command("purge")
@CONFIG_OPTION
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Resolved (retried or discarded) longer ago than this, e.g. 30d.")
def queue_purge(config_path, older_than):
    """Delete retried and discarded entries (they may hold personal data); open entries stay,
    and discarded events stay refused."""
    from .units import parse_duration
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    cfg = _load(config_path, needs_secrets=False)
    click.echo(f"purged {open_queue(cfg).purge_exceptions(seconds)} resolved exception(s)")


@main.group()
def schemas():
    """The canonical Avro schemas."""


@schemas.command("list")
@click.option("--schema-dir", type=click.Path(path_type=Path), default=None)
def schemas_list(schema_dir):
    """List entities with their version, key and fingerprint."""
    from .schemas import SchemaCatalog
    catalog = SchemaCatalog.load(schema_dir)
    for name in catalog.names():
        entity = catalog.entity(name)
        click.echo(f"{name:<18} v{entity.version}  key={entity.key_field:<18} {entity.fingerprint[:16]}")


@schemas.command("check")
@click.option("--schema-dir", type=click.Path(path_type=Path), default=None)
def schemas_check(schema_dir):
    """Check every schema is BACKWARD compatible with its last released version."""
    from .schemas import SchemaCatalog
    catalog = SchemaCatalog.load(schema_dir)
    failed = False
    for name in catalog.names():
        problems = catalog.check_backward(name)
        failed |= bool(problems)
        click.echo(f"{name}: " + ("compatible" if not problems else "INCOMPATIBLE"))
        for problem in problems:
            click.echo(f"  - {problem}")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("outpost-demo"),
              show_default=True, help="Where the demo keeps its database, state and outbox.")
def demo(directory):
    """Seed a demo SQLite 'legacy ERP', capture it into Avro files, show the events."""
    from .demo import run_demo
    from .logs import setup
    setup("WARNING")        # the agent's own line format, as every other command
    run_demo(directory)


def _register_commands() -> None:
    from .cli_queue import queue_list
    from .cli_schemas import schemas_export, schemas_show
    queue.add_command(queue_list)
    schemas.add_command(schemas_show)
    schemas.add_command(schemas_export)
    from .cli_ha import ha
    from .cli_reconcile import reconcile
    from .service_windows import service     # pywin32 is imported only when a command runs
    from .snapshot_cmd import snapshot
    for command in (ha, reconcile, service, snapshot, *adapter_commands()):
        main.add_command(command)
    add_log_level(main)


_register_commands()


if __name__ == "__main__":
    main()
