"""Mapping expressions and route filters: a safe subset of Python over a row's columns.

``{expr: "coalesce(multicurrency_code, fk_currency)"}``, ``filter: "client in (1, 3)"``.
Evaluated by ``simpleeval`` (a sandboxed AST walker, never ``eval``), with three rules of
our own that make it fit for money:

- numbers are exact: a literal such as ``0.1`` is ``Decimal('0.1')`` (taken from the
  expression's text, never through a float), ``/`` and ``**`` give Decimals, a float
  column value is taken as the decimal it stands for; a float result is refused;
- no attribute access, no subscripts but slices, no comprehensions, and only the
  functions below (``FUNCTIONS``), checked once when the expression is compiled;
- NULL flows like SQL's where that is what a mapping wants (``coalesce``, ``nullif``);
  an operator given None fails the row with the expression named.

An expression is parsed and checked once (``compile_expression``); per row only the tree
walk runs, on an evaluator kept per thread.
"""
from __future__ import annotations

import ast
import datetime as dt
import threading
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal
from typing import Any, Callable, Mapping, Optional

from simpleeval import FeatureNotAvailable, SimpleEval

from .contracts import AMOUNTS
from .textforms import INTEGER_TEXT, plain_decimal, strict_date, strict_timestamp

__all__ = ["Expression", "ExpressionError", "MissingReference", "compile_expression", "FUNCTIONS"]


class ExpressionError(ValueError):
    """The expression itself is wrong (syntax, unknown function, forbidden construct)."""


class MissingReference(ValueError):
    """``lookup(name, code)`` found no such code: the row waits for the reference data."""

    def __init__(self, lookup: str, code: Any):
        self.lookup, self.code = lookup, code
        super().__init__(f"unknown {lookup} code {code!r}")


def _exact(value: Any) -> Any:
    if type(value) is float:
        from .contracts import approximate
        return approximate(value)
    return value


def _number(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TypeError(f"expected a number, found {value!r}")
    return value if isinstance(value, Decimal) else Decimal(value)


# Decimal arithmetic runs in contracts.AMOUNTS: Python's default context rounds every sum
# and product to 28 digits, and a DECIMAL(38,4) amount has more. A quotient is rarely exact:
# it keeps 40 digits (any decimal(38, s) amount and two more), as the rounding functions need.
_QUOTIENTS = Context(prec=40, rounding=ROUND_HALF_EVEN)


def _divide(a, b):
    return _QUOTIENTS.divide(_number(a), _number(b))


def _power(a, b):
    if isinstance(b, bool) or not isinstance(b, int) or abs(b) > 100:
        raise TypeError(f"expected a whole exponent between -100 and 100, found {b!r}")
    return AMOUNTS.power(_number(a), b)


def _arith(operator, exact):
    """``operator``, or ``exact`` (in AMOUNTS) when a Decimal takes part: ints, dates and
    texts keep Python's own operators."""
    def apply(a, b):
        if isinstance(a, str) or isinstance(b, str):
            if operator is _ADD and isinstance(a, str) and isinstance(b, str):
                return a + b
            raise TypeError(f"cannot combine {a!r} and {b!r} (use concat() or text())")
        if isinstance(a, Decimal) or isinstance(b, Decimal):
            return exact(a, b)
        return operator(a, b)
    return apply


def _ADD(a, b):
    return a + b


def _unary(operator, exact):
    return lambda a: exact(a) if isinstance(a, Decimal) else operator(a)


_OPERATORS = {
    ast.Add: _arith(_ADD, AMOUNTS.add), ast.Sub: _arith(lambda a, b: a - b, AMOUNTS.subtract),
    ast.Mult: _arith(lambda a, b: a * b, AMOUNTS.multiply), ast.Div: _divide,
    ast.FloorDiv: _arith(lambda a, b: a // b, AMOUNTS.divide_int), ast.Mod: _arith(lambda a, b: a % b, AMOUNTS.remainder),
    ast.Pow: _power, ast.USub: _unary(lambda a: -a, AMOUNTS.minus), ast.UAdd: _unary(lambda a: +a, AMOUNTS.plus),
    ast.Not: lambda a: not a,
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b,
}


# ---- the functions an expression may call ---------------------------------------------

def _coalesce(*values):
    return next((v for v in values if v is not None), None)


def _nullif(value, other):
    return None if value == other else value


def _rounded(mode):
    def rounding(value, places=0):
        if value is None:
            return None
        return _number(value).quantize(Decimal(1).scaleb(-int(places)), rounding=mode, context=AMOUNTS)
    return rounding


def _decimal(value):
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        return plain_decimal(value)
    return _number(value)


def _integer(value):
    if value is None:
        return None
    if isinstance(value, str):
        if not INTEGER_TEXT.fullmatch(value.strip()):
            raise ValueError(f"expected a whole number, found {value!r}")
        return int(value)
    number = _number(value)
    if number != number.to_integral_value():
        raise ValueError(f"expected a whole number, found {value!r}")
    return int(number)


def _text(value):
    return None if value is None else value if isinstance(value, str) else str(value)


def _strings(function):
    def apply(value, *args):
        return None if value is None else function(_text(value), *args)
    return apply


def _concat(*values):
    return "".join(_text(v) for v in values if v is not None)


def _join(separator, *values):
    return separator.join(_text(v) for v in values if v is not None and _text(v) != "")


def _substr(value, start, length=None):
    """SQL's: 1-based start."""
    if value is None:
        return None
    text = _text(value)
    begin = max(int(start) - 1, 0)
    return text[begin:] if length is None else text[begin:begin + int(length)]


def _date(value, fmt="%Y-%m-%d"):
    if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    return strict_date(_text(value), fmt)


def _timestamp(value, fmt="%Y-%m-%dT%H:%M:%S"):
    if value is None or isinstance(value, dt.datetime):
        return value
    return strict_timestamp(_text(value), fmt)


def _add_days(value, days):
    return None if value is None else value + dt.timedelta(days=_integer(days))


def _days_between(start, end):
    if start is None or end is None:
        return None
    return (_date(end) - _date(start)).days


def _part(name):
    return lambda value: None if value is None else getattr(value, name)


def _is_blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


FUNCTIONS: dict[str, Callable] = {
    "coalesce": _coalesce, "nullif": _nullif, "is_blank": _is_blank,
    "round_half_even": _rounded(ROUND_HALF_EVEN), "round_half_up": _rounded(ROUND_HALF_UP),
    "abs": lambda v: None if v is None else AMOUNTS.abs(_number(v)), "min": min, "max": max,
    "decimal": _decimal, "int": _integer, "text": _text, "len": lambda v: None if v is None else len(_text(v)),
    "upper": _strings(str.upper), "lower": _strings(str.lower), "strip": _strings(str.strip),
    "replace": _strings(str.replace), "left": _strings(lambda s, n: s[:int(n)]),
    "right": _strings(lambda s, n: s[len(s) - int(n):] if int(n) else ""),
    "zfill": _strings(lambda s, n: s.zfill(int(n))), "startswith": _strings(str.startswith),
    "concat": _concat, "join": _join, "substr": _substr,
    "date": _date, "timestamp": _timestamp, "add_days": _add_days, "days_between": _days_between,
    "year": _part("year"), "month": _part("month"), "day": _part("day"),
}
# lookup(name, code) and col(name) are bound per expression (they need the row / the tables)
_BOUND = ("lookup", "col")
_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Compare, ast.Call, ast.Constant,
                  ast.Name, ast.Load, ast.Tuple, ast.List, ast.Subscript, ast.Slice, ast.keyword,
                  ast.boolop, ast.operator, ast.unaryop, ast.cmpop)


def _literal(node):
    return node.value


class _Evaluator(SimpleEval):
    """simpleeval with exact numbers; the row is set per evaluation."""

    def __init__(self, functions: dict):
        super().__init__(operators=_OPERATORS, functions=functions, names={})
        self.row: Mapping[str, Any] = {}
        self.nodes[ast.Tuple] = lambda node: tuple([self._eval(e) for e in node.elts])
        self.nodes[ast.List] = lambda node: [self._eval(e) for e in node.elts]
        self.nodes[ast.Call] = self._eval_call
        self.nodes[ast.Name] = self._eval_name
        self.nodes[ast.Constant] = _literal

    # Every node type, every called name and every literal was checked when the expression
    # was compiled (``compile_expression``), and no function here can return a module or a
    # forbidden callable: the per-row walk skips simpleeval's re-checks (a third of its cost).

    def _eval(self, node):
        return self.nodes[type(node)](node)

    def _eval_call(self, node):
        function = self.functions[node.func.id]
        args = [self._eval(a) for a in node.args]
        if node.keywords:
            return function(*args, **{k.arg: self._eval(k.value) for k in node.keywords})
        return function(*args)

    def _eval_name(self, node):
        try:
            value = self.row[node.id]
        except KeyError:
            raise ValueError(f"the row has no column {node.id!r}") from None
        return _exact(value) if type(value) is float else value


class Expression:
    """A compiled expression: ``expression(row)`` returns its value (raises ValueError or
    TypeError, MissingReference for a missing lookup code). ``columns``: what it reads."""

    def __init__(self, text: str, tree: ast.AST, columns: frozenset, lookups: Mapping[str, Any],
                 lookup_names: frozenset):
        self.text, self._tree, self.columns, self._lookups = text, tree, columns, lookups
        self.lookup_names = lookup_names          # the tables it reads through lookup()
        self._local = threading.local()

    def _evaluator(self) -> _Evaluator:
        evaluator = getattr(self._local, "evaluator", None)
        if evaluator is None:
            evaluator = _Evaluator({**FUNCTIONS, "lookup": self._lookup, "col": self._column})
            evaluator.expr = self.text
            self._local.evaluator = evaluator
        return evaluator

    def __call__(self, row: Mapping[str, Any]) -> Any:
        evaluator = self._evaluator()
        evaluator.row = row
        try:
            result = evaluator._eval(self._tree)
        except ArithmeticError as exc:      # division by zero, an invalid decimal operation
            raise ValueError(f"{type(exc).__name__} in {self.text!r}") from None
        except FeatureNotAvailable as exc:
            raise ValueError(str(exc)) from None
        if type(result) is float:           # cannot happen by construction; never let one out
            raise TypeError(f"{self.text!r} gave a float ({result!r}); amounts are never floats")
        return result

    def _lookup(self, name, code, *default):
        if code is None:
            return None
        table = self._lookups[name]
        codes = getattr(table, "codes", table)
        key = str(code)
        if key in codes:
            return codes[key]
        if default:
            return default[0]
        raise MissingReference(name, code)

    def _column(self, name):
        return _exact(self._evaluator().row.get(name))


def compile_expression(text: str, lookups: Optional[Mapping[str, Any]] = None) -> Expression:
    """Parse and check once; raises ExpressionError saying what is not allowed."""
    lookups = lookups if lookups is not None else {}
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("expected an expression, found nothing")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg} at column {exc.offset}") from None
    columns = set()
    source = text.strip()
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{type(node).__name__} is not allowed in an expression ({_shown(source, node)})")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, float):
                # the literal's own text: 0.1 is exactly one tenth, never the double near it
                node.value = Decimal(ast.get_source_segment(source, node).replace("_", ""))
            elif isinstance(node.value, (complex, bytes)):
                raise ExpressionError(f"{_shown(source, node)} is not allowed in an expression")
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            raise ExpressionError(f"only slices such as name[0:3] are allowed, found {_shown(source, node)}")
        elif isinstance(node, ast.Call):
            _check_call(node, source, lookups, columns)
        elif isinstance(node, ast.Name) and id(node) not in called:
            columns.add(node.id)
        elif isinstance(node, (ast.operator, ast.unaryop, ast.cmpop)) and type(node) not in _OPERATORS:
            raise ExpressionError(f"operator {type(node).__name__} is not allowed in an expression")
    used = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func.id == "lookup"}
    return Expression(source, tree.body, frozenset(columns), lookups, frozenset(used))


def _check_call(node: ast.Call, source: str, lookups, columns: set) -> None:
    if not isinstance(node.func, ast.Name):
        raise ExpressionError(f"only functions may be called, found {_shown(source, node)}")
    name = node.func.id
    if name not in FUNCTIONS and name not in _BOUND:
        raise ExpressionError(f"unknown function {name}() (known: {', '.join(sorted([*FUNCTIONS, *_BOUND]))})")
    first = node.args[0] if node.args else None
    literal = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
    if name == "lookup":
        if literal is None:
            raise ExpressionError("lookup() takes the lookup's name as a quoted text first: lookup('name', code)")
        if literal not in lookups:
            raise ExpressionError(f"lookup({literal!r}, ...): expected one of "
                                  f"{', '.join(sorted(lookups)) or 'no lookups defined'}")
    elif name == "col":
        if literal is None:
            raise ExpressionError("col() takes a column name as a quoted text: col('Amount EUR')")
        columns.add(literal)


def _shown(source: str, node: ast.AST) -> str:
    return ast.get_source_segment(source, node) or type(node).__name__
