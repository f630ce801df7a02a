"""The local status endpoint: /healthz, /readyz, /metrics, /status and a status page.

Stdlib ``ThreadingHTTPServer`` (a few requests a minute from Prometheus and a person;
no framework needed), bound to 127.0.0.1 unless ``http.bind`` says otherwise. With
``http.token`` set, every request needs ``Authorization: Bearer <token>`` (the page also
accepts ``?token=`` because a browser cannot add the header; its scripts then send the
header). Access lines are not logged, so a token in a URL never reaches a log.

- ``/healthz``: liveness. 200 while the process serves and the pipeline moves; the body
  says ``degraded`` (and why) while a source or the fabric is away, which is normal
  operation. 503 only when the pipeline is stuck (the systemd watchdog's verdict) or
  the agent stopped.
- ``/readyz``: 200 only when the agent runs and every route's source and sink are
  connected (no source/sink error, no backpressure, delivery threads alive).
- ``/metrics``: Prometheus text format (``agent.metrics``).
- ``/status``: JSON, the same report as ``outpost status --json`` plus the agent state,
  readiness and the business service objectives.
- ``/``: a read-only page rendering ``/status`` and ``/history`` (sparklines of
  throughput and queue depth, sampled every ``sample_every`` seconds, kept in memory).
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .health import route_problems
from .metrics import objectives, registry_for

log = logging.getLogger("outpost.http")


class History:
    """Pure: throughput (events/s confirmed by sinks) and queue depth over time."""

    def __init__(self, size: int = 180):
        self.points: deque = deque(maxlen=size)
        self._last: Optional[tuple[float, int]] = None

    def sample(self, now: float, published_total: int, depth: int) -> None:
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = max(0, published_total - self._last[1]) / (now - self._last[0])
        self._last = (now, published_total)
        self.points.append({"t": round(now, 3), "throughput": round(rate, 3), "depth": depth})

    def as_list(self) -> list[dict]:
        return list(self.points)


def readiness(agent, per_route: dict) -> list[str]:
    """Why the agent is not ready (empty = ready)."""
    from .runtime import State
    if agent.state != State.RUNNING:
        return [f"agent is {agent.state.value}"]
    problems = []
    for name in agent.config.routes:
        problems += [f"route {name}: {p}" for p in route_problems(per_route.get(name, {}))]
    observed = agent.queue.observed
    for name, delivery in agent.deliveries.items():
        if delivery.ident is not None and not delivery.is_alive():
            problems.append(f"sink {name}: delivery stopped")
        elif observed.settled_batches(name) and not delivery.connected:
            problems.append(f"sink {name}: not connected")
    return problems


def exposed_without_token(http) -> bool:
    """Bound beyond the loopback interface with no token: queue depths, route names and
    error texts for anyone on the network."""
    return not http.token and http.bind not in ("127.0.0.1", "localhost", "::1") \
        and not http.bind.startswith("127.")


class StatusServer:
    def __init__(self, agent, notifier=None, sample_every: float = 5.0):
        cfg = agent.config.http
        self.agent, self.notifier, self.sample_every = agent, notifier, sample_every
        self.token = cfg.token
        self.metrics = registry_for(agent)
        self.history = History()
        self._stop = threading.Event()
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer((cfg.bind, cfg.port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._threads = [threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True),
                         threading.Thread(target=self._sample, name="http-history", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        log.info("status endpoint on http://%s:%d/", self.httpd.server_address[0], self.port)
        if exposed_without_token(self.agent.config.http):
            log.warning("status endpoint on %s answers anyone who can reach this machine: set http.token "
                        "(then requests need 'Authorization: Bearer <token>') or bind to 127.0.0.1",
                        self.agent.config.http.bind)

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _sample(self) -> None:
        while True:
            try:
                per_route = self.agent.queue.status()
                self.history.sample(time.time(), sum(r.get("published_total", 0) for r in per_route.values()),
                                    sum(r.get("queue_depth", 0) for r in per_route.values()))
            except Exception:     # the queue closes during shutdown; the page is best effort
                log.debug("history sample failed", exc_info=True)
            if self._stop.wait(self.sample_every):
                return

    # -- the documents -------------------------------------------------------------------
    def status(self) -> dict:
        from .status import collect
        report = collect(self.agent.config)
        problems = readiness(self.agent, report["routes"])
        warnings = self._warnings()
        report["agent"] = {"state": self.agent.state.value, "ready": not problems, "problems": problems,
                           "health": "degraded" if problems or warnings else "ok", "warnings": warnings,
                           "stuck": list(self.notifier.stuck) if self.notifier else []}
        report["objectives"] = objectives(self.agent.config, report["routes"])
        return report

    def health(self) -> tuple[int, dict]:
        from .runtime import State
        stuck = list(self.notifier.stuck) if self.notifier else []
        if stuck or self.agent.state == State.STOPPED:
            return 503, {"status": "stuck" if stuck else "stopped", "problems": stuck}
        problems = []
        for name, s in self.agent.queue.status().items():
            problems += [f"route {name}: {p}" for p in route_problems(s)]
        problems += self._warnings()
        return 200, {"status": "degraded" if problems else "ok", "state": self.agent.state.value,
                     "problems": problems}

    def ready(self) -> tuple[int, dict]:
        """503 when not connected. Open exceptions keep it 200 (the pipeline moves; what it
        refused waits for a person) but the body says ``degraded`` and why."""
        problems = readiness(self.agent, self.agent.queue.status())
        warnings = self._warnings()
        status = "not ready" if problems else "degraded" if warnings else "ready"
        return (503 if problems else 200), {"ready": not problems, "status": status, "problems": problems,
                                            "warnings": warnings}

    def _warnings(self) -> list[str]:
        """What degrades health without stopping the pipeline: open exceptions."""
        from .exception_view import describe_summary, summary
        line = describe_summary(summary(self.agent.queue.reader(), time.time()))
        return [line] if line else []


class _Handler(BaseHTTPRequestHandler):
    app: StatusServer
    server_version = "outpost"

    def log_message(self, format, *args):     # no access log: URLs may carry the token
        pass

    def _authorized(self, query: dict) -> bool:
        token = self.app.token
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def do_HEAD(self):
        """What GET would answer, without the body (load balancers and monitors probe so)."""
        self._head = True
        try:
            self.do_GET()
        finally:
            self._head = False       # a kept-alive connection's next request may be a GET

    def do_GET(self):
        url = urlsplit(self.path)
        if not self._authorized(parse_qs(url.query)):
            return self._send(401, b'{"error": "bearer token required"}', "application/json",
                              {"WWW-Authenticate": "Bearer"})
        try:
            if url.path == "/healthz":
                return self._json(*self.app.health())
            if url.path == "/readyz":
                return self._json(*self.app.ready())
            if url.path == "/metrics":
                return self._send(200, generate_latest(self.app.metrics), CONTENT_TYPE_LATEST)
            if url.path == "/status":
                return self._json(200, self.app.status())
            if url.path == "/history":
                return self._json(200, {"every_s": self.app.sample_every, "points": self.app.history.as_list()})
            if url.path in ("/", "/index.html"):
                from .web.page import PAGE
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        except Exception as exc:
            log.warning("status endpoint %s failed: %s", url.path, exc, exc_info=True)
            return self._json(500, {"error": type(exc).__name__})
        return self._json(404, {"error": "not found"})

    def _json(self, code: int, body: dict) -> None:
        self._send(code, json.dumps(body, default=str, indent=1).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str, headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not getattr(self, "_head", False):
            self.wfile.write(body)
