"""The sandboxed languages of rule files: ``when:`` expressions and summary/description templates.

Both are Jinja2 (``SandboxedEnvironment``), never ``eval``. On top of Jinja's sandbox:

- names starting with ``_`` (``__class__``, ``_private``) are rejected when the rule is loaded, in
  attribute form (``x.__class__``) and in item form (``x['__class__']``);
- attribute access at run time is limited to a short allow-list of read-only methods
  (``labels.get``, ``name.lower`` ...); any other real attribute raises a ``SecurityError``.
  ``labels.site_name`` still works: on a dict Jinja falls back to the item ``site_name``;
- the Jinja globals (``range``, ``cycler``, ``joiner``, ``lipsum``, ``namespace``, ``dict``) are
  removed; templates see only the variables the evaluator gives them;
- templates use ``StrictUndefined``: a misspelt variable is an error (found by ``rules check``),
  not an empty string.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from mistwatch.durations import format_duration

#: The only attributes (methods) an expression or template may touch, by type.
_ALLOWED_ATTRIBUTES: dict[type, frozenset[str]] = {
    dict: frozenset({"get", "keys", "values", "items"}),
    str: frozenset({"lower", "upper", "title", "capitalize", "strip", "lstrip", "rstrip",
                    "startswith", "endswith", "replace", "split", "join"}),
}
_MAX_POWER = 1000
_MAX_REPEAT = 100_000  # 'a' * 10**10 would take gigabytes: as Jinja's sandbox caps range()


class ExpressionError(ValueError):
    """A ``when:`` expression or a template that cannot be compiled or is not allowed."""


def _fmt_pct(value: Any, digits: int = 0) -> str:
    """0.873 -> '87%' (ratios are 0..1 in mistwatch)."""
    if value is None:
        return "n/a"
    return f"{float(value) * 100:.{digits}f}%"


def _fmt_num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    number = float(value)
    if math.isfinite(number) and number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.{digits}f}"


def _fmt_duration(seconds: Any) -> str:
    return "n/a" if seconds is None else format_duration(float(seconds))


class _Sandbox(SandboxedEnvironment):
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        return any(isinstance(obj, kind) and attr in allowed for kind, allowed in _ALLOWED_ATTRIBUTES.items())

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        # '**' is the one operator that can burn unbounded CPU and memory in one step
        if operator_name == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_POWER:
            raise SecurityError(f"exponent {right} is too large")
        if operator_name == "*":
            return _multiply(left, right)
        return super().call_binop(context, operator_name, left, right)


def _make_env() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.intercepted_binops = frozenset({"**", "*"})
    env.globals.clear()
    env.globals.update({"abs": abs, "min": min, "max": max, "round": round})
    env.filters.update({"pct": _fmt_pct, "num": _fmt_num, "duration": _fmt_duration})
    return env


_ENV = _make_env()


def _check_ast(tree: nodes.Node) -> None:
    """Reject private and dunder names before anything runs."""
    every = [tree, *tree.find_all(nodes.Node)]  # find_all skips the root itself
    for node in every:
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        if isinstance(name, str) and name.startswith("_"):
            raise ExpressionError(f"access to '{name}' is not allowed (names starting with '_' are private)")
    for node in every:
        if isinstance(node, nodes.Getattr) and node.attr not in _ALL_ALLOWED and isinstance(node.node, nodes.Const):
            raise ExpressionError(f"attribute access '.{node.attr}' is not allowed")


_ALL_ALLOWED = frozenset().union(*_ALLOWED_ATTRIBUTES.values())


def _error_text(exc: Exception) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    return str(exc) or type(exc).__name__


Fn = Callable[[Mapping[str, Any]], Any]


class _Missing(LookupError):
    """An undefined name or key: ``default`` and ``is defined`` catch it, anything else fails."""


def _get_attr(obj: Any, attr: str) -> Any:
    if isinstance(obj, Mapping):  # like Jinja: an allowed method first, then the item
        if attr in _ALLOWED_ATTRIBUTES[dict]:
            return getattr(obj, attr)
        try:
            return obj[attr]
        except KeyError:
            raise _Missing(f"'{attr}' is undefined") from None
    if isinstance(obj, str) and attr in _ALLOWED_ATTRIBUTES[str]:
        return getattr(obj, attr)
    raise SecurityError(f"access to attribute {attr!r} of {type(obj).__name__!r} object is not allowed")


def _get_item(obj: Any, key: Any) -> Any:
    if isinstance(key, str) and key.startswith("_"):
        raise SecurityError(f"access to '{key}' is not allowed")
    if isinstance(obj, Mapping):
        try:
            return obj[key]
        except KeyError:
            raise _Missing(f"{key!r} is undefined") from None
    if isinstance(obj, (list, tuple, str)) and isinstance(key, int):
        try:
            return obj[key]
        except IndexError:
            raise _Missing(f"index {key} is out of range") from None
    raise SecurityError(f"cannot index a {type(obj).__name__}")


def _power(left: Any, right: Any) -> Any:
    if isinstance(right, (int, float)) and abs(right) > _MAX_POWER:
        raise SecurityError(f"exponent {right} is too large")
    return left**right


def _multiply(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > _MAX_REPEAT:
            raise SecurityError(f"repeating a {type(seq).__name__} {times} times is too large")
    return left * right


def _join(value: Any, separator: str = "") -> str:
    return separator.join(str(v) for v in value)


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    nodes.Add: operator.add, nodes.Sub: operator.sub, nodes.Mul: _multiply, nodes.Div: operator.truediv,
    nodes.FloorDiv: operator.floordiv, nodes.Mod: operator.mod, nodes.Pow: _power,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
    "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max, "round": round}
_EXPR_FILTERS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": lambda v, precision=0: round(v, precision), "int": int, "float": float,
    "string": str, "length": len,
    "lower": lambda v: str(v).lower(), "upper": lambda v: str(v).upper(), "join": _join,
    "pct": _fmt_pct, "num": _fmt_num, "duration": _fmt_duration,
}
_TESTS: dict[str, Callable[[Any], bool]] = {
    "none": lambda v: v is None, "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str), "true": lambda v: v is True, "false": lambda v: v is False,
}


def _compile(node: nodes.Node) -> Fn:
    """Jinja's expression AST -> a tree of closures. No eval, no exec, no Python attribute access
    beyond the allow-list: this is the whole language of ``when:``."""
    if isinstance(node, nodes.Const):
        const = node.value
        return lambda v: const
    if isinstance(node, nodes.Name):
        name = node.name

        def lookup(v: Mapping[str, Any]) -> Any:
            try:
                return v[name]
            except KeyError:
                raise _Missing(f"'{name}' is undefined") from None
        return lookup
    if isinstance(node, (nodes.List, nodes.Tuple)):
        items = [_compile(item) for item in node.items]
        return lambda v: [item(v) for item in items]
    if isinstance(node, nodes.Getattr):
        obj, attr = _compile(node.node), node.attr
        return lambda v: _get_attr(obj(v), attr)
    if isinstance(node, nodes.Getitem):
        if isinstance(node.arg, nodes.Slice):
            raise ExpressionError("slices are not supported")
        obj, key = _compile(node.node), _compile(node.arg)
        return lambda v: _get_item(obj(v), key(v))
    if isinstance(node, nodes.And):
        left, right = _compile(node.left), _compile(node.right)
        return lambda v: left(v) and right(v)
    if isinstance(node, nodes.Or):
        left, right = _compile(node.left), _compile(node.right)
        return lambda v: left(v) or right(v)
    if isinstance(node, nodes.Not):
        inner = _compile(node.node)
        return lambda v: not inner(v)
    if isinstance(node, nodes.Neg):
        inner = _compile(node.node)
        return lambda v: -inner(v)
    if isinstance(node, nodes.Pos):
        inner = _compile(node.node)
        return lambda v: +inner(v)
    if type(node) in _BINARY:
        op, left, right = _BINARY[type(node)], _compile(node.left), _compile(node.right)
        return lambda v: op(left(v), right(v))
    if isinstance(node, nodes.Concat):
        parts = [_compile(n) for n in node.nodes]
        return lambda v: "".join(str(p(v)) for p in parts)
    if isinstance(node, nodes.Compare):
        first = _compile(node.expr)
        ops = [(_COMPARE[o.op], _compile(o.expr)) for o in node.ops]

        def compare(v: Mapping[str, Any]) -> bool:
            left = first(v)
            for op, operand in ops:
                right = operand(v)
                if not op(left, right):
                    return False
                left = right
            return True
        return compare
    if isinstance(node, nodes.CondExpr):
        test, yes = _compile(node.test), _compile(node.expr1)
        no = _compile(node.expr2) if node.expr2 is not None else (lambda v: None)
        return lambda v: yes(v) if test(v) else no(v)
    if isinstance(node, nodes.Call):
        if node.kwargs or node.dyn_args or node.dyn_kwargs:
            raise ExpressionError("only positional arguments are supported in calls")
        args = [_compile(a) for a in node.args]
        if isinstance(node.node, nodes.Name):
            if node.node.name not in _FUNCTIONS:
                raise ExpressionError(f"unknown function '{node.node.name}' (functions: "
                                      f"{', '.join(sorted(_FUNCTIONS))})")
            function = _FUNCTIONS[node.node.name]
            return lambda v: function(*(a(v) for a in args))
        if isinstance(node.node, nodes.Getattr):
            method = _compile(node.node)  # _get_attr hands out allow-listed methods only
            return lambda v: method(v)(*(a(v) for a in args))
        raise ExpressionError("only functions and allowed methods can be called")
    if isinstance(node, nodes.Filter):
        if node.kwargs or node.dyn_args or node.dyn_kwargs or node.node is None:
            raise ExpressionError("only positional filter arguments are supported")
        inner = _compile(node.node)
        args = [_compile(a) for a in node.args]
        if node.name == "default":
            fallback = args[0] if args else (lambda v: "")

            def default(v: Mapping[str, Any]) -> Any:
                try:
                    return inner(v)
                except _Missing:
                    return fallback(v)
            return default
        if node.name not in _EXPR_FILTERS:
            raise ExpressionError(f"unknown filter '{node.name}' (filters: default, "
                                  f"{', '.join(sorted(_EXPR_FILTERS))})")
        function = _EXPR_FILTERS[node.name]
        return lambda v: function(inner(v), *(a(v) for a in args))
    if isinstance(node, nodes.Test):
        inner = _compile(node.node)
        if node.name in ("defined", "undefined"):
            want = node.name == "defined"

            def defined(v: Mapping[str, Any]) -> bool:
                try:
                    inner(v)
                    return want
                except _Missing:
                    return not want
            return defined
        if node.name not in _TESTS:
            raise ExpressionError(f"unknown test '{node.name}'")
        check = _TESTS[node.name]
        return lambda v: check(inner(v))
    raise ExpressionError(f"{type(node).__name__} is not supported in expressions")


class Expression:
    """A compiled ``when:`` expression (Jinja expression syntax). ``evaluate(variables)``.

    Parsed by Jinja's parser, then compiled to plain closures over the AST: no ``eval``, no
    Python attribute access beyond the allow-list, names starting with ``_`` rejected. About ten
    times cheaper per call than a Jinja template, which matters at 60,000 devices.
    """

    __slots__ = ("_fn", "_tree", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            parser = Parser(_ENV, source, state="variable")
            tree = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno)
            _check_ast(tree)
            self._tree = tree
            self._fn: Fn = _compile(tree)
        except ExpressionError:
            raise
        except Exception as exc:
            raise ExpressionError(_error_text(exc)) from None

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The value; raises ExpressionError on an undefined name or a disallowed access."""
        try:
            return self._fn(variables)
        except (SecurityError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(_error_text(exc)) from None

    def test(self, variables: Mapping[str, Any]) -> bool:
        return bool(self.evaluate(variables))

    def names(self) -> set[str]:
        """The top-level variable names the expression reads."""
        return {n.name for n in self._tree.find_all(nodes.Name) if n.ctx == "load"}

    def metric_names(self) -> set[str]:
        """Metric names read as ``metrics['name']`` (so ``rules check`` can verify them)."""
        found = set()
        for node in self._tree.find_all(nodes.Getitem):
            if (isinstance(node.node, nodes.Name) and node.node.name == "metrics"
                    and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
                found.add(node.arg.value)
        return found


class _Unsupported(Exception):
    """A template construct the closure compiler does not handle: Jinja's sandbox renders it."""


def _compile_body(body: list[nodes.Node]) -> Callable[[Mapping[str, Any], list[str]], None]:
    parts: list[Callable[[Mapping[str, Any], list[str]], None]] = []
    for node in body:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    text = child.data
                    parts.append(lambda v, out, t=text: out.append(t))
                else:
                    try:
                        fn = _compile(child)
                    except ExpressionError as exc:
                        raise _Unsupported(str(exc)) from None
                    parts.append(lambda v, out, f=fn: out.append(str(f(v))))
        elif isinstance(node, nodes.If):
            branches = [(node.test, node.body), *((b.test, b.body) for b in node.elif_)]
            try:
                compiled = [(_compile(test), _compile_body(body)) for test, body in branches]
            except ExpressionError as exc:
                raise _Unsupported(str(exc)) from None
            otherwise = _compile_body(node.else_)

            def branch(v: Mapping[str, Any], out: list[str], compiled: Any = compiled,
                       otherwise: Any = otherwise) -> None:
                for test, body in compiled:
                    if test(v):
                        body(v, out)
                        return
                otherwise(v, out)
            parts.append(branch)
        else:
            raise _Unsupported(type(node).__name__)

    def run(v: Mapping[str, Any], out: list[str]) -> None:
        for part in parts:
            part(v, out)
    return run


class Template:
    """A compiled summary/description/recommendation template (Jinja syntax, sandboxed, strict).

    Text, ``{{ expressions }}`` with filters, and ``{% if %}`` compile to closures like ``when:``
    (no Jinja context per render: a few microseconds at thousands of findings); anything else
    (loops, macros, other filters) renders through Jinja's ``SandboxedEnvironment`` with
    ``StrictUndefined``. Both refuse the same names and attributes.
    """

    __slots__ = ("_fast", "_template", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            tree = _ENV.parse(source)
            _check_ast(tree)
            self._template = _ENV.from_string(source)
        except ExpressionError:
            raise
        except Exception as exc:
            raise ExpressionError(_error_text(exc)) from None
        try:
            self._fast: Callable[[Mapping[str, Any], list[str]], None] | None = _compile_body(tree.body)
        except _Unsupported:
            self._fast = None

    def render(self, variables: Mapping[str, Any]) -> str:
        try:
            if self._fast is not None:
                out: list[str] = []
                self._fast(variables, out)
                return "".join(out).strip()
            return self._template.render(variables).strip()
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(_error_text(exc)) from None
