"""Secret references in the config: ``${ENV_VAR}``, ``${file:/path}``, ``${credential:NAME}``.

Resolved once, when the config is parsed. Every resolved value (and its percent-encoded
forms) is remembered so the log filter, and every problem reported, can redact it. A
reference inside the userinfo or a query value of a URL is percent-encoded where it lands
(a password ``p@ss/w#rd`` must not end the host).

``${credential:NAME}`` reads ``$CREDENTIALS_DIRECTORY/NAME``: systemd's ``LoadCredential=``
(docs/operations.md) puts a secret there, readable by the service alone, so it never sits
in an environment that ``/proc/PID/environ`` or a crash dump would show.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["resolve_references"]

_REFERENCE = re.compile(r"\$\{(file:|credential:)?([^}]+)\}")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,255}$")


def resolve_references(value: Any, path: str, problems: list[str], secrets: set[str]) -> Any:
    """Replace ${ENV}, ${file:/path} and ${credential:NAME} in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: resolve_references(v, f"{path}.{k}" if path else str(k), problems, secrets)
                for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, f"{path}[{i}]", problems, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    encoded = _url_encoded_spans(value)

    def substitute(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2).strip()
        if kind == "file:":
            try:
                found = Path(name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(f"{path}: expected a readable secret file, found {name!r} ({exc.strerror})")
                return ""
        elif kind == "credential:":
            found = _credential(name, path, problems)
            if found is None:
                return ""
        elif name in os.environ:
            found = os.environ[name]
        else:
            problems.append(f"{path}: expected environment variable {name} to be set, found it unset")
            return ""
        if found:
            secrets.update(_encoded_forms(found))
        if any(start <= match.start() < end for start, end in encoded):
            return quote(found, safe="")
        return found

    return _REFERENCE.sub(substitute, value)


def _encoded_forms(secret: str) -> set[str]:
    """A secret as it may be written out: raw, percent-encoded (as substituted into URLs,
    and as form-encoded query values), and as SQLAlchemy renders a URL's password."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret, safe=" +")}


def _url_encoded_spans(template: str) -> list[tuple[int, int]]:
    """Where, in a string written as a URL, a substituted value must be percent-encoded:
    the userinfo (``user:password@``) and query values. The URL's shape is read from
    the text as written, with the references masked, since their values are data."""
    masked = _REFERENCE.sub(lambda m: "x" * len(m.group(0)), template)
    scheme = _URL_SCHEME.match(masked)
    if not scheme:
        return []
    spans = []
    authority_end = min((i for i in (masked.find(c, scheme.end()) for c in "/?#") if i != -1), default=len(masked))
    userinfo_end = masked.rfind("@", scheme.end(), authority_end)
    if userinfo_end != -1:
        spans.append((scheme.end(), userinfo_end))
    query_start = masked.find("?", scheme.end())
    if query_start != -1:
        query_end = masked.find("#", query_start)
        query_end = len(masked) if query_end == -1 else query_end
        for pair in re.finditer(r"[^&]+", masked[query_start + 1:query_end]):
            if "=" in pair.group(0):
                value_start = query_start + 1 + pair.start() + pair.group(0).index("=") + 1
                spans.append((value_start, query_start + 1 + pair.end()))
    return spans




def _credential(name: str, path: str, problems: list[str]):
    """A systemd credential's value, or None with the problem recorded."""
    if not _CREDENTIAL_NAME.match(name):
        problems.append(f"{path}: expected a credential name (letters, digits, _ . @ -), found {name!r}")
        return None
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        problems.append(f"{path}: expected the systemd credential {name}, found no $CREDENTIALS_DIRECTORY (the "
                        f"service gets one from LoadCredential={name}:/etc/outpost/{name} in its unit; an "
                        f"operator command run by hand needs it set, or use ${{file:/etc/outpost/{name}}})")
        return None
    try:
        return (Path(directory) / name).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f"{path}: expected the systemd credential {name} in {directory}, found none "
                        f"({exc.strerror}); add LoadCredential={name}:/etc/outpost/{name} to the unit")
        return None
