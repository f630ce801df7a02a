"""Reading the config file: YAML made safe for a hand-written, possibly hostile file.

- The file is capped at ``MAX_BYTES`` before anything is parsed.
- Aliases are expanded within ``ALIAS_BUDGET`` nodes. PyYAML shares an aliased node, so
  parsing a "billion laughs" is cheap; the blow-up comes from every later walk of the
  tree (reference resolution, validation). The node graph is walked once here, counting
  what aliases would expand to, and refused as soon as the budget is spent.
- Nesting is capped at ``MAX_DEPTH`` (the parser and the validators recurse).
- Duplicate keys are reported with their lines: PyYAML silently keeps the last one, so
  a second ``customers:`` route would replace the first.
- Plain scalars that YAML 1.1 turns into something other than their text (``01`` -> 1,
  ``NO`` -> False) are remembered by key path, so that a problem about one of them can
  tell the user to quote it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .contracts import ConfigError

MAX_BYTES = 1 << 20
ALIAS_BUDGET = 10_000
MAX_DEPTH = 64

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT, _BOOL, _MERGE = "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Retyped:
    """A plain scalar YAML 1.1 read as a number or a boolean although it looks like text."""

    text: str
    kind: str          # "a number" or "a boolean"
    is_key: bool

    def hint(self) -> str:
        return f'YAML reads the unquoted {self.text} as {self.kind}: write "{self.text}" in quotes if you mean the text'


@dataclass(frozen=True)
class Document:
    data: Any
    problems: list[str] = field(default_factory=list)          # duplicate keys
    retyped: dict[str, Retyped] = field(default_factory=dict)  # by dotted key path

    def with_hints(self, problems: list[str]) -> list[str]:
        """``problems`` ("key.path: message"), each one about a retyped scalar with its hint."""
        def hinted(problem: str) -> str:
            scalar = self.retyped.get(problem.split(": ", 1)[0])
            return f"{problem}; {scalar.hint()}" if scalar else problem
        return [hinted(p) for p in problems]


def read(path: Path) -> Document:
    """The parsed file, or ConfigError naming why it cannot be read (prefixed with the path)."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file ({exc.strerror})"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{path}: the config file is larger than {MAX_BYTES >> 20} MiB; "
                           f"is it the right file?"])
    try:
        return parse_text(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    except ConfigError as exc:
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None


def parse_text(text: str) -> Document:
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None)
        problems, retyped = _walk(loader, node)
        return Document(loader.construct_document(node), problems, retyped)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"not valid YAML: nested deeper than {MAX_DEPTH} levels"]) from None
    except (ValueError, TypeError, OverflowError, IndexError) as exc:
        # The constructor could not build a scalar it recognised (a 2021-02-30 date, an
        # integer of 5000 digits, an empty "!!int"): a bad document, not a crash.
        raise ConfigError([f"not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()


def _walk(loader, root) -> tuple[list[str], dict[str, Retyped]]:
    """Duplicate keys and retyped scalars, walking what aliases expand to within the budget.

    Iterative, in document order, so an anchor is seen before its aliases: a node seen a
    second time is an alias expansion and counts against the budget, with what lies under it.
    """
    duplicates: list[str] = []
    retyped: dict[str, Retyped] = {}
    seen: set[int] = set()
    expanded = 0
    stack = [(root, (), False)]
    while stack:
        node, path, via_alias = stack.pop()
        if len(path) > MAX_DEPTH:
            raise ConfigError([f"{_dotted(path[:3])}...: nested deeper than {MAX_DEPTH} levels"])
        via_alias = via_alias or id(node) in seen
        if via_alias:
            expanded += 1
            if expanded > ALIAS_BUDGET:
                raise ConfigError([f"{_dotted(path) or '(top level)'}: YAML aliases expand to more than "
                                   f"{ALIAS_BUDGET} nodes; write the values out or use fewer aliases"])
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            _note_retyped(node, path, False, retyped)
        elif isinstance(node, SequenceNode):
            stack.extend((child, path + (i,), via_alias) for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            marks: dict[Any, list] = {}
            children = []
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:          # "<<: *base": its keys are checked where written
                    children.append((value_node, path, via_alias))
                    continue
                key = _key(loader, key_node)
                _note_retyped(key_node, path + (key,), True, retyped)
                marks.setdefault(key, []).append(key_node.start_mark)
                children.append((value_node, path + (key,), via_alias))
            if not via_alias:
                duplicates += [f"{_dotted(path + (key,))}: duplicate key at {_positions(at)} "
                               f"(YAML would keep only the last one); merge them or rename one"
                               for key, at in marks.items() if len(at) > 1]
            stack.extend(reversed(children))
    return duplicates, retyped


def _key(loader, node) -> Any:
    """The key as the constructed dict will hold it (01 and 1 are the same key)."""
    if not isinstance(node, ScalarNode):
        return node                 # a complex key: never equal to another; construction refuses it
    try:
        key = loader.construct_object(node)
        hash(key)
        return key
    except Exception:               # construction reports this scalar properly, right after the walk
        return node.value


def _note_retyped(node: ScalarNode, path: tuple, is_key: bool, retyped: dict[str, Retyped]) -> None:
    if not isinstance(node, ScalarNode) or node.style:     # quoted or block: text as written (plain: None or '')
        return
    text = node.value
    digits = text.lstrip("+-")
    if node.tag == _BOOL and text.lower() not in ("true", "false"):
        retyped.setdefault(_dotted(path), Retyped(text, "a boolean", is_key))
    elif node.tag == _INT and digits != "0" and (digits.startswith("0") or ":" in digits):   # 01, 0x1F, 1:20
        retyped.setdefault(_dotted(path), Retyped(text, "a number", is_key))


def _positions(marks) -> str:
    lines = [mark.line + 1 for mark in marks]
    if len(set(lines)) < len(lines):            # several on one line: a flow mapping
        return ", ".join(f"line {mark.line + 1} column {mark.column + 1}" for mark in marks)
    return "lines " + ", ".join(map(str, lines))


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)
