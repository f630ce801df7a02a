"""A Confluent-compatible schema registry *test double* (an HTTP server, in-process).

Why a double: no schema registry server is installable on the development and CI
machines, and confluent-kafka's ``mock://`` client lives inside one process, so it cannot
be shared with an agent running as a separate process. The agent under test talks to
this server with the real ``confluent_kafka.schema_registry.SchemaRegistryClient`` over
HTTP, so the request/response shapes below follow the Confluent REST API as that client
uses it (register, lookup, schema by id, subjects, versions, compatibility).

Behaviour kept deliberately close to Confluent's defaults:

- ids are global: the same schema text registered under two subjects gets one id;
- registering a schema already in the subject returns its existing id;
- compatibility is BACKWARD against the latest version (reader = new, writer = latest),
  checked with the ``avro`` package;
- AVRO responses omit ``schemaType`` (as Confluent does), other types include it.

Tests control failures through ``reject_subjects`` (any register there answers HTTP 409);
``silent_registry`` is a registry that accepts connections and never answers.
"""
from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import avro.compatibility
import avro.schema

__all__ = ["RegistryDouble"]


def _canonical(schema_str: str, schema_type: str) -> str:
    # Whitespace and key order must not create a new id, as with a real registry.
    if schema_type == "AVRO":
        try:
            return json.dumps(json.loads(schema_str), sort_keys=True, separators=(",", ":"))
        except ValueError:
            return schema_str
    return schema_str


class _Error(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RegistryDouble:
    """The double's state plus its server. ``url`` is what clients are given."""

    def __init__(self) -> None:
        self.reject_subjects: set[str] = set()
        self.schemas_by_id: dict[int, dict[str, Any]] = {}   # id -> {"schema", "schemaType", "references"}
        self.subjects: dict[str, list[int]] = {}             # subject -> ids, index = version - 1
        self.requests: list[tuple[str, str]] = []            # (method, path), for assertions
        self._ids_by_canonical: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="registry-double",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ----------------------------------------------------------------- the API

    def _schema_body(self, body: Optional[dict]) -> tuple[str, str, list]:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise _Error(422, 42201, "Invalid schema: request needs a 'schema' string")
        return body["schema"], body.get("schemaType") or "AVRO", body.get("references") or []

    def _version_view(self, subject: str, version: int) -> dict:
        sid = self.subjects[subject][version - 1]
        return {"subject": subject, "version": version, "id": sid, **self._schema_view(sid)}

    def _schema_view(self, sid: int) -> dict:
        stored = self.schemas_by_id[sid]
        view: dict[str, Any] = {"schema": stored["schema"]}
        if stored["schemaType"] != "AVRO":
            view["schemaType"] = stored["schemaType"]
        if stored["references"]:
            view["references"] = stored["references"]
        return view

    def _versions(self, subject: str) -> list[int]:
        if subject not in self.subjects:
            raise _Error(404, 40401, f"Subject '{subject}' not found.")
        return self.subjects[subject]

    def _resolve_version(self, subject: str, version: str) -> int:
        ids = self._versions(subject)
        if version in ("latest", "-1"):
            return len(ids)
        if not version.isdigit() or not 1 <= int(version) <= len(ids):
            raise _Error(404, 40402, f"Version {version} not found.")
        return int(version)

    def _incompatibility(self, subject: str, schema_str: str, schema_type: str,
                         against: Optional[int] = None) -> Optional[str]:
        """None when compatible (BACKWARD: new reader reads data of the latest writer)."""
        if schema_type != "AVRO":
            return None
        ids = self.subjects.get(subject)
        if not ids:
            return None
        writer_id = ids[(against or len(ids)) - 1]
        reader = avro.schema.parse(schema_str)
        writer = avro.schema.parse(self.schemas_by_id[writer_id]["schema"])
        result = avro.compatibility.ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
        if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
            return None
        return "; ".join(sorted(str(m) for m in result.messages)) or "incompatible"

    def _register(self, subject: str, body: Optional[dict]) -> dict:
        schema_str, schema_type, refs = self._schema_body(body)
        if subject in self.reject_subjects:
            raise _Error(409, 409, f"Schema being registered is incompatible with an earlier schema "
                                   f"for subject \"{subject}\" (rejected by the test)")
        if schema_type == "AVRO":
            try:
                avro.schema.parse(schema_str)
            except Exception as exc:  # the avro package raises several types
                raise _Error(422, 42201, f"Invalid schema: {exc}") from None
        key = (schema_type, _canonical(schema_str, schema_type))
        sid = self._ids_by_canonical.get(key)
        if sid is not None and sid in self.subjects.get(subject, []):
            return {"id": sid}
        problem = self._incompatibility(subject, schema_str, schema_type)
        if problem:
            raise _Error(409, 409, f"Schema being registered is incompatible with an earlier schema "
                                   f"for subject \"{subject}\", details: {problem}")
        if sid is None:
            sid = len(self.schemas_by_id) + 1
            self._ids_by_canonical[key] = sid
            self.schemas_by_id[sid] = {"schema": schema_str, "schemaType": schema_type,
                                       "references": refs}
        self.subjects.setdefault(subject, []).append(sid)
        return {"id": sid}

    def _lookup(self, subject: str, body: Optional[dict]) -> dict:
        schema_str, schema_type, _ = self._schema_body(body)
        ids = self._versions(subject)
        sid = self._ids_by_canonical.get((schema_type, _canonical(schema_str, schema_type)))
        if sid is None or sid not in ids:
            raise _Error(404, 40403, "Schema not found")
        return self._version_view(subject, ids.index(sid) + 1)

    def dispatch(self, method: str, path: str, query: dict, body: Optional[dict]) -> Any:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with self._lock:
            if method == "GET" and parts == ["subjects"]:
                return sorted(self.subjects)
            if method == "GET" and parts == ["schemas", "types"]:
                return ["AVRO"]
            if method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
                sid = int(parts[2]) if parts[2].isdigit() else -1
                if sid not in self.schemas_by_id:
                    raise _Error(404, 40403, "Schema not found")
                return self._schema_view(sid)
            if len(parts) >= 2 and parts[0] == "subjects":
                subject = parts[1]
                if method == "POST" and len(parts) == 2:
                    return self._lookup(subject, body)
                if method == "POST" and parts[2:] == ["versions"]:
                    return self._register(subject, body)
                if method == "GET" and parts[2:] == ["versions"]:
                    return list(range(1, len(self._versions(subject)) + 1))
                if method == "GET" and len(parts) == 4 and parts[2] == "versions":
                    return self._version_view(subject, self._resolve_version(subject, parts[3]))
            if (method == "POST" and len(parts) == 5 and parts[:2] == ["compatibility", "subjects"]
                    and parts[3] == "versions"):
                version = self._resolve_version(parts[2], parts[4])
                schema_str, schema_type, _ = self._schema_body(body)
                problem = self._incompatibility(parts[2], schema_str, schema_type, version)
                verbose = query.get("verbose", ["false"])[0].lower() == "true"
                answer: dict[str, Any] = {"is_compatible": problem is None}
                if verbose:
                    answer["messages"] = [problem] if problem else []
                return answer
        raise _Error(404, 404, f"{method} {path} is not implemented by the test double")

    def _handler_class(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                double.requests.append((method, url.path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                    status, payload = 200, double.dispatch(method, url.path, parse_qs(url.query), body)
                except _Error as err:
                    status, payload = err.status, {"error_code": err.code, "message": err.message}
                except ValueError as err:
                    status, payload = 400, {"error_code": 400, "message": f"bad request: {err}"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server naming
                self._serve("GET")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

            def log_message(self, *args):  # keep pytest output readable
                pass

        return Handler


@contextmanager
def silent_registry() -> Iterator[str]:
    """The URL of a server that accepts every connection and never answers: a hung registry."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []         # the accepted connections stay open, unanswered

    def accept():
        try:
            while True:
                held.append(server.accept()[0])
        except OSError:       # closed
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


def returns_within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result, raised exception included, or AssertionError if it is still
    waiting after ``seconds`` (it runs on in a daemon thread)."""
    outcome: list = []

    def run():
        try:
            outcome.append((True, call()))
        except BaseException as exc:     # handed to the caller
            outcome.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still waiting after {seconds}s"
    returned, value = outcome[0]
    if not returned:
        raise value
    return value
