"""The fabric connection settings both kafka adapters read, and scrubbing their secrets
out of every message they produce (librdkafka and the registry client echo settings)."""
from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import urlsplit

from agent.contracts import AdapterContext, ConfigError

SECRET_KEY = re.compile(r"password|secret|user\.info|credentials|token|sasl\.oauthbearer\.config")


def connection(context: AdapterContext, role: str) -> tuple[dict, dict, Callable[[Any], str]]:
    """(librdkafka config, registry config, scrub) from the config's fabric section."""
    fabric = dict(context.fabric or {})
    kafka_conf = dict(fabric.get("kafka") or {})
    registry_conf = dict(fabric.get("schema_registry") or {})
    problems = []
    if not kafka_conf.get("bootstrap.servers"):
        problems.append(f"fabric.kafka.bootstrap.servers is required by the kafka {role}")
    if not registry_conf.get("url"):
        problems.append(f"fabric.schema_registry.url is required by the kafka {role}")
    if problems:
        raise ConfigError(problems)
    secrets = [str(v) for k, v in {**kafka_conf, **registry_conf}.items() if SECRET_KEY.search(k) and v]
    secrets += [p for p in (urlsplit(u.strip()).password for u in str(registry_conf["url"]).split(",")) if p]

    def scrub(text: Any) -> str:
        text = str(text)
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return kafka_conf, registry_conf, scrub
