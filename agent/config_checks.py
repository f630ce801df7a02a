"""Checks of single config values that must fail at ``check`` time, not at run time.

Pure: a value in, a message out (or the value back). Each message says what was found
and how to fix it; the caller adds the key path.
"""
from __future__ import annotations

import difflib
import re
import string

__all__ = ["TOPIC_PLACEHOLDERS", "topic_template_problem", "checked_topic_template", "close_matches", "snake_case",
           "topic_name"]

# What the kafka sink formats a topic template with (adapters/kafka/sink.py).
TOPIC_PLACEHOLDERS = {"entity": "snake_case, as in billing_milestone", "Entity": "CamelCase, as in BillingMilestone"}


def close_matches(word: str, known, n: int = 3) -> str:
    """', did you mean 'x'?' (or 'x' or 'y'), or ''."""
    found = difflib.get_close_matches(str(word), [str(k) for k in known], n=n, cutoff=0.6)
    if not found:
        return ""
    return ", did you mean " + " or ".join(repr(f) for f in found) + "?"


def topic_template_problem(template: str) -> str | None:
    """Why ``template`` cannot name a topic (None: it can). A placeholder the sink does not
    fill would otherwise be a bare ``KeyError: 'entty'`` at the first publish."""
    try:
        fields = [name for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:         # a lone '{' or '}'
        return (f"found {template!r}, which is not a valid template ({exc}); write a literal brace as "
                "'{{' or '}}'")
    allowed = " and ".join(f"{{{name}}} ({what})" for name, what in TOPIC_PLACEHOLDERS.items())
    for name in fields:
        if name not in TOPIC_PLACEHOLDERS:
            shown = "{}" if name == "" else f"{{{name}}}"
            guess = difflib.get_close_matches(name, list(TOPIC_PLACEHOLDERS), n=1, cutoff=0.6)
            return (f"found the placeholder {shown} in {template!r}"
                    + (f"; did you mean {{{guess[0]}}}?" if guess else "")
                    + f" The template may use only {allowed}")
    if not template.format(entity="x", Entity="X"):
        return "found an empty template; write e.g. 'outpost.{entity}'"
    return None


def checked_topic_template(template: str) -> str:
    """A pydantic validator: the template, or ValueError with the problem."""
    problem = topic_template_problem(template)
    if problem:
        raise ValueError(problem)
    return template


def snake_case(name: str) -> str:
    """BillingMilestone -> billing_milestone (the {entity} of a topic template)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def topic_name(template: str, entity: str) -> str:
    """The topic the kafka sink publishes ``entity`` to; its value subject adds '-value'."""
    return template.format(entity=snake_case(entity), Entity=entity)
