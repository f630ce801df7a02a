"""The schema registry, asked by a short-lived helper process.

The kafka adapters need the registry once per schema and process lifetime (the sink: the
id of each schema it publishes; the source: each writer schema it meets), but
confluent-kafka's registry client brings an HTTP, OAuth and JOSE stack with it (about
20 MB resident, a fifth of the delivery process) that would then stay for the life of
the service. So they run this file as a script (``python -I .../registry_helper.py``: not
as a module, which would import the adapter packages first); it imports the client,
answers every question of one batch and exits. The settings, secrets included, go to it
through a pipe, never its command line. A frozen build has no interpreter to start and
asks in process (as does a Python without an executable, or this file inside a zip).

An answer is the schema id (``ids``) or the schema's text (``schemas``), or a ``Refusal``:
what the registry answered (its HTTP status) or, with ``status`` None, why it could not be
asked. Once the registry cannot be reached, the rest of the batch is not asked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = ["RegistryHelper", "Refusal", "answer"]

_IN_PROCESS = getattr(sys, "frozen", False) or not sys.executable or not os.path.isfile(__file__)


@dataclass(frozen=True)
class Refusal:
    message: str
    status: Optional[int] = None      # None: the registry was not reached


Answer = Union[int, str, Refusal]


def answer(conf: Mapping[str, Any], register: bool, asks: Sequence[Sequence]) -> list[Answer]:
    """Each ask is ``("id", subject, schema JSON)``, registered if ``register`` else looked
    up, or ``("schema", id)``."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        client = SchemaRegistryClient(dict(conf))
    except (ValueError, TypeError) as exc:
        return [Refusal(f"fabric.schema_registry is refused by the client: {exc}")] * len(asks)
    answers: list[Answer] = []
    try:
        for kind, *what in asks:
            if answers and isinstance(answers[-1], Refusal) and answers[-1].status is None:
                answers.append(answers[-1])
                continue
            try:
                if kind == "schema":
                    answers.append(client.get_schema(what[0]).schema_str)
                elif register:
                    answers.append(client.register_schema(what[0], Schema(what[1], "AVRO")))
                else:
                    answers.append(client.lookup_schema(what[0], Schema(what[1], "AVRO")).schema_id)
            except SchemaRegistryError as exc:
                answers.append(Refusal(f"{exc.error_message} (HTTP {exc.http_status_code})", exc.http_status_code))
            except Exception as exc:      # transport errors
                answers.append(Refusal(f"{type(exc).__name__}: {exc}"))
    finally:
        if hasattr(client, "close"):
            client.close()
    return answers


class RegistryHelper:
    """``answer`` in a helper process (in process in a frozen build). A helper that fails
    or outlives ``timeout_s`` refuses every ask with status None; so does each request the
    registry does not answer within ``timeout_s`` (unless ``timeout`` is set)."""

    def __init__(self, conf: Mapping[str, Any], register: bool, timeout_s: float):
        # The client waits forever by default. Its own request timeout also bounds a helper
        # whose parent died, and the in-process asking of a frozen build.
        self.conf, self.register, self.timeout_s = {"timeout": timeout_s, **conf}, register, timeout_s

    def ids(self, asks: Sequence[tuple[str, str]]) -> list[Answer]:
        """Schema id of each (subject, schema JSON)."""
        return self._answers([("id", subject, schema_json) for subject, schema_json in asks])

    def schemas(self, schema_ids: Sequence[int]) -> list[Answer]:
        """Text of the schema of each id."""
        return self._answers([("schema", schema_id) for schema_id in schema_ids])

    def _answers(self, asks: list[tuple]) -> list[Answer]:
        if not asks:
            return []
        if _IN_PROCESS:
            return answer(self.conf, self.register, asks)
        # the helper finds what this process can (its sys.path)
        request = json.dumps({"conf": self.conf, "register": self.register, "asks": asks, "path": sys.path})
        try:
            done = subprocess.run([sys.executable, "-I", os.path.abspath(__file__)], input=request.encode(),
                                  capture_output=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return [Refusal(f"no answer within {self.timeout_s:.0f}s")] * len(asks)
        except OSError as exc:
            return [Refusal(f"cannot start the registry helper: {exc}")] * len(asks)
        try:
            answers = [a if isinstance(a, (int, str)) else Refusal(**a) for a in json.loads(done.stdout)]
        except (ValueError, TypeError):
            why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            return [Refusal(f"the registry helper failed: {why[0]}")] * len(asks)
        if len(answers) != len(asks):
            return [Refusal("the registry helper answered out of turn")] * len(asks)
        return answers


def main() -> None:
    request = json.load(sys.stdin)
    sys.path[:] = request["path"]
    answers = answer(request["conf"], request["register"], request["asks"])
    json.dump([a if isinstance(a, (int, str)) else {"message": a.message, "status": a.status} for a in answers],
              sys.stdout)


if __name__ == "__main__":
    main()
