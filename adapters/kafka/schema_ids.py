"""Schema ids from the registry, asked by a short-lived helper process.

The kafka sink needs the registry once per (subject, schema) and process lifetime, but
confluent-kafka's registry client brings an HTTP, OAuth and JOSE stack with it (about
20 MB resident, more than a fifth of the delivery process) that would then stay for the
life of the service. So the sink runs this file as a script (``python -I .../schema_ids.py``:
not as a module, which would import the adapter packages first), and it imports the
client, answers every lookup of one batch and exits. The settings, secrets
included, go to it through a pipe, never its command line. A frozen build has no
interpreter to start and asks in process.

An answer is the schema id, or a ``Refusal``: what the registry answered (its HTTP status)
or, with ``status`` None, why it could not be asked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = ["Refusal", "SchemaIds", "ask"]

_IN_PROCESS = getattr(sys, "frozen", False)


@dataclass(frozen=True)
class Refusal:
    message: str
    status: Optional[int] = None      # None: the registry was not reached


Answer = Union[int, Refusal]


def ask(conf: Mapping[str, Any], register: bool, asks: Sequence[tuple[str, str]]) -> list[Answer]:
    """The id of each (subject, Avro schema JSON): registered if ``register``, else looked
    up. Once the registry cannot be reached, the rest are not asked."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        client = SchemaRegistryClient(dict(conf))
    except (ValueError, TypeError) as exc:
        return [Refusal(f"fabric.schema_registry is refused by the client: {exc}")] * len(asks)
    answers: list[Answer] = []
    try:
        for subject, schema_json in asks:
            if answers and isinstance(answers[-1], Refusal) and answers[-1].status is None:
                answers.append(answers[-1])
                continue
            schema = Schema(schema_json, "AVRO")
            try:
                answers.append(client.register_schema(subject, schema) if register
                               else client.lookup_schema(subject, schema).schema_id)
            except SchemaRegistryError as exc:
                answers.append(Refusal(f"{exc.error_message} (HTTP {exc.http_status_code})", exc.http_status_code))
            except Exception as exc:      # transport errors
                answers.append(Refusal(f"{type(exc).__name__}: {exc}"))
    finally:
        if hasattr(client, "close"):
            client.close()
    return answers


class SchemaIds:
    """``ids(asks)``: ``ask`` in a helper process (in process in a frozen build). A helper
    that fails or outlives ``timeout_s`` refuses every ask with status None."""

    def __init__(self, conf: Mapping[str, Any], register: bool, timeout_s: float):
        self.conf, self.register, self.timeout_s = dict(conf), register, timeout_s

    def ids(self, asks: Sequence[tuple[str, str]]) -> list[Answer]:
        if not asks:
            return []
        if _IN_PROCESS:
            return ask(self.conf, self.register, asks)
        # the helper finds what this process can (its sys.path)
        request = json.dumps({"conf": self.conf, "register": self.register, "asks": list(asks), "path": sys.path})
        try:
            done = subprocess.run([sys.executable, "-I", os.path.abspath(__file__)], input=request.encode(),
                                  capture_output=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return [Refusal(f"no answer within {self.timeout_s:.0f}s")] * len(asks)
        except OSError as exc:
            return [Refusal(f"cannot start the lookup helper: {exc}")] * len(asks)
        try:
            answers = [a if isinstance(a, int) else Refusal(**a) for a in json.loads(done.stdout)]
        except (ValueError, TypeError):
            why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            return [Refusal(f"the lookup helper failed: {why[0]}")] * len(asks)
        if len(answers) != len(asks):
            return [Refusal("the lookup helper answered out of turn")] * len(asks)
        return answers


def main() -> None:
    request = json.load(sys.stdin)
    sys.path[:] = request["path"]
    answers = ask(request["conf"], request["register"], [tuple(a) for a in request["asks"]])
    json.dump([a if isinstance(a, int) else {"message": a.message, "status": a.status} for a in answers],
              sys.stdout)


if __name__ == "__main__":
    main()
