"""The reference walk of a compiled mapping's steps: what ``EntityMapping.apply`` did before
it was generated per mapping (``agent.mapping_plan``), kept as the oracle its tests compare
the generated function with. Slow on purpose: one generic loop, every step tested."""
from __future__ import annotations

from agent.expressions import MissingReference
from agent.mapping import Problem, gate_problems


def walk(mapping, row) -> tuple:
    if row is None:
        return None, []
    payload, problems = {}, []
    for step in mapping.steps:
        spec, column, expression = step.spec, step.column, step.expression
        if column is not None:
            value = row.get(column)
        elif expression is None:
            value = step.const                  # a constant, or None for a field without a rule
        else:
            try:
                value = expression(row)
            except MissingReference as reference:
                problems.append(Problem(spec.name, reference.lookup, f"{reference} (in {expression.text!r})",
                                        None, reference.code))
                continue
            except (ValueError, TypeError) as exc:
                problems.append(Problem(spec.name, "expr", f"{exc} (in {expression.text!r})"))
                continue
        try:
            for convert in step.converters:
                value = convert(value)
            if step.missing is not None and value is not None and str(value) in step.missing:
                value = None
            if step.lookup is not None and value is not None and value != "":
                name, table = step.lookup
                codes = table.codes
                code = str(value)
                if code not in codes:
                    problems.append(Problem(spec.name, name, f"unknown {name} code {value!r}", column, value))
                    continue
                value = codes[code]
            if step.default is not None and (value is None or value == ""):
                value = step.default
            if value is None or (step.blank_is_missing and isinstance(value, str) and not value.strip()):
                if not spec.nullable:
                    problems.append(Problem(spec.name, "required", "is required but missing", column, value))
                payload[spec.name] = None
                continue
            value = step.coerced(value)
        except (ValueError, TypeError, OverflowError) as exc:
            problems.append(Problem(spec.name, "type", f"{exc}", column, value))
            continue
        if spec.rules:
            broken = gate_problems(spec, value, mapping._known_codes)
            problems.extend(Problem(spec.name, rule, message, column, value) for rule, message in broken)
        payload[spec.name] = value
    return payload, problems
