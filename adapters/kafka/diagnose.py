"""``outpost check`` for the fabric: why the brokers or the registry did not answer, in
the words an operator acts on.

librdkafka reports a SASL refusal only in its log lines; the error a caller gets is
"Broker transport failure", which reads as "unreachable". The check listens to those
lines while it asks for metadata and names authentication when that is what failed. A
registry that answers 401/403 is reachable: it refused the credentials.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Optional, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agent.client_logs import advice

__all__ = ["broker_problem", "registry_problems"]

_AUTH_WORDS = ("sasl", "authentication", "authenticat")


class _Heard(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def broker_problem(conf: dict[str, Any], bootstrap: str, timeout: float, scrub: Callable[[Any], str]
                   ) -> Optional[str]:
    """None when the brokers answered a metadata request within ``timeout`` seconds."""
    heard = _Heard()
    logger = logging.getLogger("outpost.check.librdkafka")
    logger.propagate = False                 # heard here, said once below
    logger.addHandler(heard)
    errors: list[str] = []
    admin = AdminClient({**conf, "logger": logger, "error_cb": lambda err: errors.append(err.str())})
    try:
        admin.list_topics(timeout=timeout)
        return None
    except KafkaException as exc:
        admin.poll(0.1)          # the client's log lines wait in its queue until polled
        said = [scrub(line) for line in heard.lines + errors]
        refused = next((line for line in said if any(w in line.lower() for w in _AUTH_WORDS)), None)
        if refused:
            return (f"Kafka brokers {bootstrap} refused the authentication ({_tail(refused)}); check "
                    "sasl.mechanism, sasl.username and sasl.password in fabric.kafka, and that "
                    "security.protocol matches the broker's listener")
        last = said[-1] if said else ""
        hint = advice(last) or advice(str(exc.args[0].str()))
        return (f"Kafka brokers {bootstrap} unreachable: {scrub(exc.args[0].str())}"
                + (f" ({_tail(last)})" if last else "") + (f"; hint: {hint}" if hint else ""))
    finally:
        logger.removeHandler(heard)


def registry_problems(conf: dict[str, Any], scrub: Callable[[Any], str], subjects: Sequence[tuple] = (),
                      registered: bool = False, timeout_s: float = 10.0) -> list[str]:
    """What the registry says: reachable, and each ``(name, subject, schema JSON)``
    compatible with its latest version there (and already registered, if ``registered``).
    Each request is given ``timeout_s`` unless the settings say otherwise (the client's
    default is to wait forever)."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient   # heavy: only here (registry_helper)
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    try:
        registry = SchemaRegistryClient({"timeout": timeout_s, **conf})
    except (ValueError, TypeError) as exc:
        return [f"fabric.schema_registry: {scrub(exc)}"]
    try:
        registry.get_subjects()
    except Exception as exc:
        return [_unreachable(exc, re.sub(r"//[^/@,]*@", "//", str(conf["url"])), scrub)]   # no user:pass@
    problems = []
    try:
        for name, subject, schema_json in subjects:
            schema = Schema(schema_json, "AVRO")
            try:
                if not registry.test_compatibility(subject, schema):
                    problems.append(f"schema of {name} is not compatible with the latest version "
                                    f"under subject {subject} (registry's compatibility level)")
                elif registered:
                    registry.lookup_schema(subject, schema)
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    problems.append(f"cannot check subject {subject}: {scrub(exc)}")
                elif registered:
                    problems.append(f"schema of {name} is not registered under subject {subject} "
                                    f"and auto_register is off; register it (outpost schemas export DIR "
                                    f"--subject -c CONFIG writes the file) or set fabric.auto_register: true")
    finally:
        if hasattr(registry, "close"):   # close() is recent in 2.x
            registry.close()
    return problems


def _unreachable(exc: Exception, url: str, scrub: Callable[[Any], str]) -> str:
    status = getattr(exc, "http_status_code", None)
    if status in (401, 403):
        return (f"schema registry {url} refused the credentials (HTTP {status}: {scrub(exc)}); check "
                "fabric.schema_registry basic.auth.user.info (user:password, e.g. ${credential:registry}) "
                "and that this user may read subjects")
    return f"schema registry {url} unreachable: {scrub(exc)}"


def _tail(line: str) -> str:
    """A client log line without its facility and thread prefix."""
    return line.split("]: ", 1)[-1].strip()
