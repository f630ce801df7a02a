"""One Python function per mapping, written when the mapping is compiled.

``EntityMapping.apply`` runs for every captured row, and file_drop runs it twice. Walking
a per-field plan, half of its cost was the loop itself (unpacking each field's plan,
testing for steps the field does not have) and a quarter the generic rule gates. A
function written for one mapping does only the steps each field has, in the same order,
with the same problems: about 40 % less CPU per Customer row (docs/benchmarks.md).

Why it is safe to generate at run time: the source text holds only identifiers made here
(``n3``, ``c3``, ...) and this module's own literals. Every value that comes from the
config or a schema (names, columns, constants, defaults, rules, expressions) is bound in
the function's namespace, never written into its text, so no config can change the code.
``tests/test_mapping_plan.py`` checks it against the reference walk over generated
mappings and rows.
"""
from __future__ import annotations

from typing import Any, Callable

from .coercion import is_iso4217

__all__ = ["FieldStep", "generate"]


class FieldStep:
    """What one canonical field's rule asks for, resolved at compile time."""

    __slots__ = ("spec", "column", "expression", "const", "converters", "missing", "lookup", "default",
                 "blank_is_missing", "coerced")

    def __init__(self, spec, column, expression, const, converters, missing, lookup, default, blank_is_missing,
                 coerced):
        self.spec, self.column, self.expression, self.const = spec, column, expression, const
        self.converters, self.missing, self.lookup, self.default = converters, missing, lookup, default
        self.blank_is_missing, self.coerced = blank_is_missing, coerced


def _coercion_lines(i: int, step: FieldStep, names: dict) -> list[str]:
    if step.spec.avro_type == "string":     # coercion._to_str, inline: most fields are text
        return ["if not isinstance(value, str): value = str(value)"]
    names[f"f{i}"] = step.coerced
    return [f"value = f{i}(value)"]


def _rule_lines(i: int, step: FieldStep, names: dict, known_codes) -> list[str]:
    """mapping.gate_problems for this field, unrolled: the same rules in the same order."""
    lines = []
    for j, rule in enumerate(step.spec.rules):
        names[f"r{i}_{j}"] = rule
        add = f"problems.append(Problem(n{i}, r{i}_{j}, {{message}}, c{i}, value))"
        if rule == "iso4217":
            lines += ["if not (isinstance(value, str) and is_iso4217(value)):",
                      "    " + add.format(message='f"{value!r} is not an ISO 4217 currency code"')]
        elif rule == "non_negative":
            lines += ["if value < 0:", "    " + add.format(message='"must not be negative"')]
        elif rule in known_codes and not _looked_up_in(step, rule):
            lines += [f"if str(value) not in known_codes[r{i}_{j}]:",
                      "    " + add.format(message=f'f"unknown {{r{i}_{j}}} code {{value!r}}"')]
    return lines


def _looked_up_in(step: FieldStep, rule: str) -> bool:
    """Whether a text field's value always comes from the lookup table its code rule names
    (no default, which is not looked up): then it is one of that table's canonical codes,
    and the rule cannot fail."""
    return step.lookup is not None and step.lookup[0] == rule and step.default is None \
        and step.spec.avro_type == "string"


def _field_lines(i: int, step: FieldStep, names: dict, known_codes) -> list[str]:
    spec = step.spec
    names[f"n{i}"], names[f"c{i}"] = spec.name, step.column
    if step.column is not None:
        head = [f"value = get(c{i})", "ok = True"]
    elif step.expression is None and step.const is None and step.default is None and not step.converters:
        # a field the mapping leaves empty (missing and lookup steps pass None by)
        return ([f"problems.append(Problem(n{i}, \"required\", \"is required but missing\", None, None))"]
                if not spec.nullable else []) + [f"payload[n{i}] = None"]
    elif step.expression is None:
        names[f"k{i}"] = step.const
        head = [f"value = k{i}", "ok = True"]
    else:
        names[f"x{i}"], names[f"xt{i}"] = step.expression, step.expression.text
        head = ["ok = True",
                "try:",
                f"    value = x{i}(row)",
                "except MissingReference as reference:",
                f"    problems.append(Problem(n{i}, reference.lookup, f\"{{reference}} (in {{xt{i}!r}})\", None,"
                " reference.code))",
                "    ok = False",
                "except (ValueError, TypeError) as exc:",
                f"    problems.append(Problem(n{i}, \"expr\", f\"{{exc}} (in {{xt{i}!r}})\"))",
                "    ok = False"]
    body = []
    for j, convert in enumerate(step.converters):
        names[f"v{i}_{j}"] = convert
        body.append(f"value = v{i}_{j}(value)")
    if step.missing is not None:
        names[f"m{i}"] = step.missing
        body += [f"if value is not None and str(value) in m{i}:", "    value = None"]
    tail = []
    if step.default is not None:
        names[f"d{i}"] = step.default
        tail += ["if value is None or value == \"\":", f"    value = d{i}"]
    blank = " or (isinstance(value, str) and not value.strip())" if step.blank_is_missing else ""
    tail += [f"if value is None{blank}:"]
    if not spec.nullable:
        tail += [f"    problems.append(Problem(n{i}, \"required\", \"is required but missing\", c{i}, value))"]
    tail += [f"    payload[n{i}] = None", "    ok = False", "else:"]
    tail += ["    " + line for line in _coercion_lines(i, step, names)]
    if step.lookup is not None:
        names[f"l{i}"], names[f"t{i}"] = step.lookup
        body += ["if value is not None and value != \"\":",
                 f"    codes = t{i}.codes",
                 "    code = str(value)",
                 "    if code not in codes:",
                 f"        problems.append(Problem(n{i}, l{i}, f\"unknown {{l{i}}} code {{value!r}}\", c{i}, value))",
                 "        ok = False",
                 "    else:",
                 "        value = codes[code]"]
        tail = ["if ok:"] + ["    " + line for line in tail]
    guarded = ["try:"] + ["    " + line for line in body + tail] + [
        "except (ValueError, TypeError, OverflowError) as exc:",
        f"    problems.append(Problem(n{i}, \"type\", f\"{{exc}}\", c{i}, value))",
        "    ok = False"]
    if step.expression is not None and step.column is None:
        guarded = ["if ok:"] + ["    " + line for line in guarded]
    done = ["if ok:"] + ["    " + line for line in _rule_lines(i, step, names, known_codes)] + \
        [f"    payload[n{i}] = value"]
    return head + guarded + done


def generate(mapping_name: str, steps: list[FieldStep], known_codes, problem_type, missing_reference) -> Callable:
    """``apply(row) -> (payload, problems)`` for these steps (``EntityMapping.apply``)."""
    names: dict[str, Any] = {"Problem": problem_type, "MissingReference": missing_reference,
                             "is_iso4217": is_iso4217, "known_codes": known_codes}
    lines = ["def apply(row):",
             "    if row is None:",
             "        return None, []",
             "    payload = {}",
             "    problems = []",
             "    get = row.get"]
    for i, step in enumerate(steps):
        lines += ["    " + line for line in _field_lines(i, step, names, known_codes)]
    lines.append("    return payload, problems")
    code = compile("\n".join(lines) + "\n", f"<mapping {mapping_name!r}>", "exec")
    exec(code, names)
    return names["apply"]

