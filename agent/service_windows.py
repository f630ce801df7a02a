"""``outpost service install|remove|start|stop``: the Windows service (pywin32, extra
``outpost[windows]``).

Thin on purpose. What the service does is ``ServiceCore`` (platform-neutral: load the
config, log to a file and the Event Log, run the ``Agent`` through ``notify.host``, stop
it on the service stop); the pywin32 parts below only translate the Service Control
Manager's calls (``SvcDoRun``/``SvcStop``) and the four commands into pywin32 calls.

The service runs ``<exe> service host -c <config>``: ``outpost.exe`` from the
PyInstaller folder (no Python on the server), or ``python.exe -m agent.cli`` from a
virtualenv. The config and state default to ``%ProgramData%\\Outpost``.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Protocol

import click

SERVICE_NAME = "Outpost"
DISPLAY_NAME = "Outpost change-data-capture agent"
DESCRIPTION = "Captures legacy ERP/PSA changes as canonical Avro events for the integration fabric."
DEFAULT_ACCOUNT = r"NT AUTHORITY\LocalService"
STARTUP = ("auto", "delayed", "manual")


def program_data(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("ProgramData") or r"C:\ProgramData") / "Outpost"


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``%ProgramData%\\Outpost\\outpost.yaml``; its ``state_dir: ./state`` then lands there too."""
    return program_data(environ) / "outpost.yaml"


@dataclass(frozen=True)
class InstallSpec:
    """Everything the Service Control Manager needs to know about the service."""

    name: str
    display_name: str
    exe: str
    args: list[str]
    account: Optional[str]           # None: LocalSystem
    password: Optional[str] = field(default=None, repr=False)
    startup: str = "auto"
    description: str = DESCRIPTION

    def command_line(self) -> str:
        import subprocess
        return subprocess.list2cmdline([self.exe, *self.args])


def install_spec(config_path: Path, account: Optional[str], password: Optional[str], startup: str,
                 frozen: Optional[bool] = None, executable: str = sys.executable) -> InstallSpec:
    frozen = getattr(sys, "frozen", False) if frozen is None else frozen
    launcher = [] if frozen else ["-m", "agent.cli"]
    if startup not in STARTUP:
        raise click.BadParameter(f"expected one of {', '.join(STARTUP)}, found {startup!r}")
    builtin = account is None or account.upper().startswith("NT AUTHORITY\\") or account.endswith("$")
    if not builtin and not password:
        raise click.UsageError(f"account {account} needs --password (or OUTPOST_SERVICE_PASSWORD); "
                               "built-in accounts and gMSAs (DOMAIN\\name$) need none")
    return InstallSpec(SERVICE_NAME, DISPLAY_NAME, executable, [*launcher, "service", "host", "-c", str(config_path)],
                       account, password if not builtin else None, startup)


class ServiceManager(Protocol):
    def install(self, spec: InstallSpec) -> None: ...
    def remove(self, name: str) -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str, timeout: float) -> None: ...


class EventLog(Protocol):
    def info(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...


RELOAD_CONTROL = 128      # a user-defined service control code (128-255)


class ServiceCore:
    """What runs between the SCM's ``SvcDoRun`` and ``SvcStop`` (no pywin32 here)."""

    def __init__(self, config_path: Path, event_log: EventLog, agent_factory=None, event_source: Optional[str] = None):
        self.config_path, self.event_log = Path(config_path), event_log
        self.agent_factory, self.event_source = agent_factory, event_source
        self.agent = None
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> int:
        """Blocks until stopped; returns the service's exit code (0 = clean or bounded stop)."""
        from . import config as config_module
        from .contracts import ConfigError
        from .logs import setup
        from .notify import host
        try:
            cfg = config_module.load(self.config_path)
        except ConfigError as exc:
            self.event_log.error(f"Outpost cannot start: {exc}")
            return 2
        log_file = cfg.log.file or cfg.state_dir.parent / "logs" / "outpost.log"
        setup(cfg.log.level, cfg.log.format, str(log_file), cfg.secrets, event_log=self.event_source)
        if self.agent_factory is None:
            from .runtime import Agent
            self.agent_factory = lambda config: Agent(config, separate_delivery=config.delivery_process,
                                                      config_path=self.config_path)
        with self._lock:
            self.agent = self.agent_factory(cfg)
            if self._stop_requested.is_set():       # stopped while we were loading
                self.agent.stop_event.set()
        self.event_log.info(f"Outpost started: {len(cfg.routes)} route(s), state in {cfg.state_dir}")
        try:
            clean = host(self.agent)
        except Exception as exc:
            self.event_log.error(f"Outpost failed: {type(exc).__name__}: {exc}")
            return 1
        self.event_log.info("Outpost stopped" + ("" if clean else "; the shutdown bound was reached, "
                                                 "unfinished batches stay queued"))
        return 0

    def stop(self) -> None:
        """Called from the SCM's thread: ask the agent to stop; ``run`` then returns."""
        with self._lock:
            self._stop_requested.set()
            if self.agent is not None:
                self.agent.stop_event.set()

    def reload(self) -> None:
        """The custom control RELOAD_CONTROL (``sc control Outpost 128``): what SIGHUP is on POSIX."""
        with self._lock:
            if self.agent is not None:
                self.agent.request_reload()

    def stop_wait_hint_ms(self) -> int:
        agent = self.agent
        return int(((agent.config.shutdown_timeout if agent else 30) + 15) * 1000)


def _manager(ctx: click.Context) -> ServiceManager:
    injected = (ctx.obj or {}).get("service_manager")
    if injected is not None:
        return injected
    try:
        return WindowsServiceManager()
    except ImportError:
        raise click.ClickException("outpost service needs Windows with pywin32: pip install 'outpost[windows]'. "
                                   "On Linux install packaging/systemd/outpost.service instead.") from None


@click.group("service")
def service():
    """The Windows service: install, remove, start, stop."""


@service.command()
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="The YAML config (default %ProgramData%\\Outpost\\outpost.yaml).")
@click.option("--account", default=DEFAULT_ACCOUNT, show_default=True,
              help="Run as this account: .\\outpost, DOMAIN\\svc-outpost, a gMSA DOMAIN\\name$, or LocalSystem.")
@click.option("--password", envvar="OUTPOST_SERVICE_PASSWORD", default=None,
              help="Password of --account (or $OUTPOST_SERVICE_PASSWORD); never needed for built-ins and gMSAs.")
@click.option("--startup", type=click.Choice(STARTUP), default="delayed", show_default=True)
@click.pass_context
def install(ctx, config_path, account, password, startup):
    """Register the service (run as Administrator)."""
    config_path = (config_path or default_config_path()).resolve()
    if not config_path.is_file():
        raise click.ClickException(f"{config_path}: no config there; write it first (see conf/outpost.example.yaml)")
    spec = install_spec(config_path, None if account.lower() == "localsystem" else account, password, startup)
    _manager(ctx).install(spec)
    click.echo(f"installed service {spec.name} as {spec.account or 'LocalSystem'}: {spec.command_line()}")


@service.command()
@click.pass_context
def remove(ctx):
    """Unregister the service (the state directory and its queue are kept)."""
    _manager(ctx).remove(SERVICE_NAME)
    click.echo(f"removed service {SERVICE_NAME}")


@service.command()
@click.pass_context
def start(ctx):
    """Start the installed service."""
    _manager(ctx).start(SERVICE_NAME)
    click.echo(f"started service {SERVICE_NAME}")


@service.command()
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for it to stop.")
@click.pass_context
def stop(ctx, timeout):
    """Stop the service gracefully (in-flight batches finish or stay queued)."""
    _manager(ctx).stop(SERVICE_NAME, timeout)
    click.echo(f"stopped service {SERVICE_NAME}")


@service.command(hidden=True)
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), default=None)
def host(config_path):
    """Entry point the Service Control Manager launches (not for interactive use)."""
    dispatch(config_path or default_config_path())


# ---------------------------------------------------------------- the pywin32 shell
# Everything below needs Windows; it is exercised on Windows only (no SCM runs here).

class WindowsServiceManager:
    """``ServiceManager`` on the real Service Control Manager."""

    def __init__(self):
        import win32service
        import win32serviceutil
        self.win32service, self.util = win32service, win32serviceutil

    def install(self, spec: InstallSpec) -> None:
        import win32evtlogutil
        start = {"auto": self.win32service.SERVICE_AUTO_START, "delayed": self.win32service.SERVICE_AUTO_START,
                 "manual": self.win32service.SERVICE_DEMAND_START}[spec.startup]
        self.util.InstallService(
            None, spec.name, spec.display_name, startType=start,
            userName=spec.account, password=spec.password, exeName=spec.exe,
            exeArgs=" ".join(_quote(a) for a in spec.args), description=spec.description,
            delayedstart=spec.startup == "delayed")
        # the Application log's source "Outpost"; message id 1 of win32service.pyd is "%1"
        # (registered here, as Administrator: the service account cannot)
        win32evtlogutil.AddSourceToRegistry(spec.name, self.win32service.__file__)
        program_data().mkdir(parents=True, exist_ok=True)

    def remove(self, name: str) -> None:
        import win32evtlogutil
        self.util.RemoveService(name)
        win32evtlogutil.RemoveSourceFromRegistry(name)

    def start(self, name: str) -> None:
        self.util.StartService(name)
        self.util.WaitForServiceStatus(name, self.win32service.SERVICE_RUNNING, 120)

    def stop(self, name: str, timeout: float) -> None:
        self.util.StopService(name)
        self.util.WaitForServiceStatus(name, self.win32service.SERVICE_STOPPED, timeout)


def _quote(arg: str) -> str:
    import subprocess
    return subprocess.list2cmdline([arg])


class _WindowsEventLog:
    """``EventLog`` on the Application log, source ``Outpost`` (registered by install)."""

    def _report(self, kind: str, message: str) -> None:
        import win32evtlog
        import win32evtlogutil
        win32evtlogutil.ReportEvent(SERVICE_NAME, 1, eventType=getattr(win32evtlog, kind), strings=[message])

    def info(self, message: str) -> None:
        self._report("EVENTLOG_INFORMATION_TYPE", message)

    def error(self, message: str) -> None:
        self._report("EVENTLOG_ERROR_TYPE", message)


def _service_class(config_path: Path):
    import win32service
    import win32serviceutil

    class OutpostService(win32serviceutil.ServiceFramework):
        _svc_name_, _svc_display_name_, _svc_description_ = SERVICE_NAME, DISPLAY_NAME, DESCRIPTION

        def __init__(self, args):
            super().__init__(args)
            self.core = ServiceCore(config_path, _WindowsEventLog(), event_source=SERVICE_NAME)

        def SvcStop(self):
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=self.core.stop_wait_hint_ms())
            self.core.stop()

        def SvcOther(self, control):
            if control == RELOAD_CONTROL:
                self.core.reload()

        def SvcDoRun(self):
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            code = self.core.run()
            if code:
                sys.exit(code)     # non-zero: the SCM's recovery actions restart the service

    return OutpostService


def dispatch(config_path: Path) -> None:
    import servicemanager
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(_service_class(Path(config_path)))
    servicemanager.StartServiceCtrlDispatcher()
