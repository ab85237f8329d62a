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
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

#: The only attributes (methods) an expression or template may touch, by type.
_ALLOWED_ATTRIBUTES: dict[type, frozenset[str]] = {
    dict: frozenset({"get", "keys", "values", "items"}),
    str: frozenset({"lower", "upper", "title", "capitalize", "strip", "lstrip", "rstrip",
                    "startswith", "endswith", "replace", "split", "join"}),
}
_MAX_POWER = 1000


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
    from mistwatch.durations import format_duration

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
        return super().call_binop(context, operator_name, left, right)


def _make_env() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.intercepted_binops = frozenset({"**"})
    env.globals.clear()
    env.globals.update({"abs": abs, "min": min, "max": max, "round": round})
    env.filters.update({"pct": _fmt_pct, "num": _fmt_num, "duration": _fmt_duration})
    return env


_ENV = _make_env()


def _check_ast(tree: nodes.Node) -> None:
    """Reject private and dunder names before anything runs."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        if isinstance(name, str) and name.startswith("_"):
            raise ExpressionError(f"access to '{name}' is not allowed (names starting with '_' are private)")
    for node in tree.find_all(nodes.Getattr):
        if node.attr not in _ALL_ALLOWED and isinstance(node.node, nodes.Const):
            raise ExpressionError(f"attribute access '.{node.attr}' is not allowed")


_ALL_ALLOWED = frozenset().union(*_ALLOWED_ATTRIBUTES.values())


def _error_text(exc: Exception) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    return str(exc) or type(exc).__name__


class Expression:
    """A compiled ``when:`` expression. ``evaluate(variables)`` returns its value."""

    __slots__ = ("_fn", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            tree = _ENV.parse("{{ (" + source + ") }}")
            _check_ast(tree)
            self._fn: Callable[..., Any] = _ENV.compile_expression(source, undefined_to_none=False)
        except ExpressionError:
            raise
        except Exception as exc:
            raise ExpressionError(_error_text(exc)) from None

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The value; raises ExpressionError on an undefined name or a sandbox violation."""
        try:
            value = self._fn(**variables)
            if isinstance(value, Undefined):
                str(value)  # StrictUndefined raises here, with the sandbox's reason
            return value
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(_error_text(exc)) from None

    def test(self, variables: Mapping[str, Any]) -> bool:
        return bool(self.evaluate(variables))

    def names(self) -> set[str]:
        """The top-level variable names the expression reads."""
        tree = _ENV.parse("{{ (" + self.source + ") }}")
        return {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}

    def metric_names(self) -> set[str]:
        """Metric names read as ``metrics['name']`` (so ``rules check`` can verify them)."""
        tree = _ENV.parse("{{ (" + self.source + ") }}")
        found = set()
        for node in tree.find_all(nodes.Getitem):
            if (isinstance(node.node, nodes.Name) and node.node.name == "metrics"
                    and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
                found.add(node.arg.value)
        return found


class Template:
    """A compiled summary/description/recommendation template."""

    __slots__ = ("_template", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            _check_ast(_ENV.parse(source))
            self._template = _ENV.from_string(source)
        except ExpressionError:
            raise
        except Exception as exc:
            raise ExpressionError(_error_text(exc)) from None

    def render(self, variables: Mapping[str, Any]) -> str:
        try:
            return self._template.render(variables).strip()
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(_error_text(exc)) from None

