"""The sandboxed languages of rule files: ``when:`` expressions and summary/description templates.

Both are Jinja2 (``SandboxedEnvironment``), never ``eval``. On top of Jinja's sandbox:

- names starting with ``_`` (``__class__``, ``_private``) are rejected when the rule is loaded, in
  attribute form (``x.__class__``) and in item form (``x['__class__']``);
- attribute access at run time is limited to a short allow-list of read-only methods
  (``labels.get``, ``name.lower`` ...); any other real attribute raises a ``SecurityError``.
  ``labels.site_name`` still works: on a mapping Jinja falls back to the item ``site_name``;
- the Jinja globals (``range``, ``cycler``, ``joiner``, ``lipsum``, ``namespace``, ``dict``) are
  removed; templates see only the variables the evaluator gives them;
- templates use ``StrictUndefined``: a misspelt variable is an error (found by ``rules check``),
  not an empty string.

And against exhaustion (a rule file is code someone wrote, possibly by mistake): integers are capped
at :data:`MAX_INT_BITS` before a power or product is computed, every text or list a rule builds at
:data:`MAX_SIZE` (checked *before* ``replace``, ``join``, ``%``, ``center``, ``indent`` allocate),
loops at :data:`MAX_ITERATIONS` per render, recursion by Python's own limit, and time by
:func:`time_limit` (the evaluator gives each rule a deadline). Hitting a bound raises
:class:`LimitExceeded`; the evaluator then skips the rule for the cycle and names its file and key.
"""

from __future__ import annotations

import contextlib
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from mistwatch.durations import format_duration

#: The only attributes (methods) an expression or template may touch, by type.
_ALLOWED_ATTRIBUTES: dict[type, frozenset[str]] = {
    Mapping: frozenset({"get", "keys", "values", "items"}),  # dicts and FrozenMap labels/metrics
    str: frozenset({"lower", "upper", "title", "capitalize", "strip", "lstrip", "rstrip",
                    "startswith", "endswith", "replace", "split", "join"}),
}
_MAX_POWER = 1000
_MAX_REPEAT = 100_000  # 'a' * 10**10 would take gigabytes: as Jinja's sandbox caps range()
#: The largest integer a rule may build (about 3,000 digits): ((9**1000)**1000)**1000 ran for minutes.
MAX_INT_BITS = 10_000
#: The largest text (characters) or collection (items, nested ones counted whole) a rule may build.
MAX_SIZE = 1_000_000
#: Loop iterations per template render: nested loops over [1]*100000 would run 10**10 times.
MAX_ITERATIONS = 100_000


class ExpressionError(ValueError):
    """A ``when:`` expression or a template that cannot be compiled or is not allowed."""


class LimitExceeded(ExpressionError):
    """An expression or template hit a resource bound (size, loop count, recursion, time)."""


# -- bounds ---------------------------------------------------------------------------------------

_DEADLINE: ContextVar[float | None] = ContextVar("mistwatch_rule_deadline", default=None)
_ITERATIONS: ContextVar[list[int] | None] = ContextVar("mistwatch_render_iterations", default=None)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Expressions and templates evaluated inside raise :class:`LimitExceeded` once ``seconds`` have
    passed (checked at each evaluation, render, call and loop iteration: cooperative, so the size
    bounds are what keep any single step short)."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_time() -> None:
    """Raise :class:`LimitExceeded` when the deadline of :func:`time_limit` has passed."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise LimitExceeded("took too long (the time limit of a rule's evaluation)")


def _weight(value: Any, memo: dict[int, int] | None = None) -> int:
    """About how many characters ``str(value)`` would take: collections counted with their items
    (a list repeated inside a list counts each time), integers by their digits."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return 1
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if isinstance(value, (list, tuple, set, frozenset, Mapping)):
        memo = {} if memo is None else memo
        known = memo.get(id(value))
        if known is not None:
            return known
        memo[id(value)] = 1  # a cycle counts once
        items = value.items() if isinstance(value, Mapping) else ((v, None) for v in value)
        total = len(value) + 1
        for first, second in items:
            total += _weight(first, memo) + (_weight(second, memo) if second is not None else 0)
            if total > MAX_SIZE:
                break
        memo[id(value)] = total
        return total
    return 1


def _checked(value: Any) -> Any:
    """``value`` if it is within the bounds, else :class:`LimitExceeded`."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise LimitExceeded(f"an integer over {MAX_INT_BITS} bits is too large")
    elif isinstance(value, (str, list, tuple, set, Mapping)) and _weight(value) > MAX_SIZE:
        raise LimitExceeded(f"a {type(value).__name__} over {MAX_SIZE:,} characters or items is too large")
    return value


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_SIZE:
        raise LimitExceeded(f"{what} would build over {MAX_SIZE:,} characters: too large")


def _replace(text: str, old: str, new: str, count: int = -1) -> str:
    occurrences = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    _refuse_size(len(text) + occurrences * max(len(new) - len(old), 0), "replace")
    return text.replace(old, new, count)


def _join_with(separator: str, value: Iterable[Any]) -> str:
    parts, total = [], 0
    for item in value:
        part = item if isinstance(item, str) else str(_checked(item))
        total += len(part) + len(separator)
        _refuse_size(total, "join")
        parts.append(part)
    return separator.join(parts)


_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _format(template: str, args: Any) -> str:
    """``template % args`` with its widths and precisions bounded first ("%*d" % (10**9, 1))."""
    widths = 0
    for match in _FORMAT_SPEC.finditer(template):
        if "*" in match.group(0):
            raise LimitExceeded("'*' widths in % formatting are not supported")
        widths += int(match.group(1) or 0) + int(match.group(2) or 0)
    _refuse_size(len(template) + widths + _weight(args), "% formatting")
    return _checked(template % args)


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        return _format(left, right)
    return left % right


def _bounded_iter(value: Any) -> Iterator[Any]:
    """What a template's ``{% for %}`` iterates: counts iterations against the render's budget."""
    counter = _ITERATIONS.get()
    for item in value:
        if counter is not None:
            counter[0] += 1
            if counter[0] > MAX_ITERATIONS:
                raise LimitExceeded(f"loops ran over {MAX_ITERATIONS:,} iterations: too many")
            if counter[0] % 1000 == 0:
                check_time()
        yield item


def _safe_method(method: Any) -> Any:
    """Allowed str methods that can allocate a lot, replaced by bounded versions."""
    owner = getattr(method, "__self__", None)
    if isinstance(owner, str):
        if method.__name__ == "replace":
            return lambda old, new, count=-1: _replace(owner, old, new, count)
        if method.__name__ == "join":
            return lambda value: _join_with(owner, value)
    return method


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
        # the operators that can burn unbounded CPU or memory in one step
        operation = {"**": _power, "*": _multiply, "%": _modulo, "+": _add}.get(operator_name)
        if operation is not None:
            return operation(left, right)
        return super().call_binop(context, operator_name, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # every call (methods, macros) checks the time, its arguments (a macro doubling a text at
        # each level of recursion) and its result
        check_time()
        for value in (*args, *kwargs.values()):
            _checked(value)
        return _checked(super().call(__context, _safe_method(__obj), *args, **kwargs))


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` of a template passes here before it becomes text."""
    return _checked(value)


def _bounded_filter(original: Callable[..., Any], precheck: Callable[..., None] | None = None) -> Callable[..., Any]:
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        _checked(value)
        if precheck is not None:
            precheck(value, *args, **kwargs)
        return _checked(original(value, *args, **kwargs))
    return bounded


def _indent_size(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    text = str(value)
    pad = len(width) if isinstance(width, str) else int(width)
    _refuse_size(len(text) + (text.count("\n") + 1) * pad, "indent")


def _wrap_size(value: Any, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None,
               *args: Any, **kwargs: Any) -> None:
    text, wrap = str(value), kwargs.get("wrapstring", wrapstring) or "\n"
    _refuse_size(len(text) + (len(text) // max(int(kwargs.get("width", width)), 1) + 1) * len(wrap), "wordwrap")


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise ExpressionError("format takes positional or keyword arguments, not both")
    return _format(str(value), kwargs or args)


def _join_filter(value: Any, separator: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        raise ExpressionError("join(attribute=...) is not supported")
    return _join_with(str(separator), value)


def _replace_filter(value: Any, old: str, new: str, count: int | None = None) -> str:
    return _replace(str(value), str(old), str(new), -1 if count is None else count)


def _make_env() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False, finalize=_finalize)
    env.intercepted_binops = frozenset({"**", "*", "%", "+"})
    env.globals.clear()
    env.globals.update({"abs": abs, "min": min, "max": max, "round": round})
    filters = env.filters
    for name in ("pprint", "tojson", "urlize", "xmlattr", "random"):  # unbounded or not deterministic
        filters.pop(name, None)
    filters.update({
        "center": _bounded_filter(filters["center"],
                                  lambda value, width=80: _refuse_size(max(len(str(value)), int(width)), "center")),
        "indent": _bounded_filter(filters["indent"], _indent_size),
        "wordwrap": _bounded_filter(filters["wordwrap"], _wrap_size),
        "format": _format_filter, "join": _join_filter, "replace": _replace_filter,
    })
    for name in ("string", "list", "sum", "batch", "slice", "truncate", "trim", "title", "upper", "lower",
                 "capitalize", "reverse", "sort", "unique", "dictsort"):
        filters[name] = _bounded_filter(filters[name])
    filters.update({"pct": _fmt_pct, "num": _fmt_num, "duration": _fmt_duration, _LOOP_FILTER: _bounded_iter,
                    _CONCAT_FILTER: lambda parts: _join_with("", parts)})
    return env


#: The filter wrapped around every ``{% for %}`` iterable of a template (loops are counted).
_LOOP_FILTER = "mistwatch_loop"
#: The filter every ``~`` of a template becomes (the concatenation is size-checked).
_CONCAT_FILTER = "mistwatch_concat"


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
        if attr in _ALLOWED_ATTRIBUTES[Mapping]:
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
        raise LimitExceeded(f"exponent {right} is too large")
    if isinstance(left, int) and isinstance(right, int) and right > 0 and \
            max(abs(left).bit_length() - 1, 0) * right > MAX_INT_BITS:
        raise LimitExceeded(f"an integer over {MAX_INT_BITS} bits is too large")
    return _checked(left**right)


def _multiply(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and not isinstance(times, bool):
            if len(seq) * times > _MAX_REPEAT:
                raise LimitExceeded(f"repeating a {type(seq).__name__} {times} times is too large")
            _refuse_size(_weight(seq) * times, f"repeating a {type(seq).__name__}")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise LimitExceeded(f"an integer over {MAX_INT_BITS} bits is too large")
    return left * right


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        _refuse_size(_weight(left) + _weight(right), "concatenation")
    return left + right


def _join(value: Any, separator: str = "") -> str:
    return _join_with(separator, value)


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    nodes.Add: _add, nodes.Sub: operator.sub, nodes.Mul: _multiply, nodes.Div: operator.truediv,
    nodes.FloorDiv: operator.floordiv, nodes.Mod: _modulo, nodes.Pow: _power,
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
        return lambda v: _checked([item(v) for item in items])
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
        return lambda v: _join_with("", (p(v) for p in parts))
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
            return lambda v: _checked(_safe_method(method(v))(*(a(v) for a in args)))
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
        """The value; raises ExpressionError on an undefined name or a disallowed access, and
        LimitExceeded (an ExpressionError) on a resource bound."""
        check_time()
        try:
            return self._fn(variables)
        except LimitExceeded:
            raise
        except RecursionError:
            raise LimitExceeded("nested too deep") from None
        except MemoryError:
            raise LimitExceeded("out of memory") from None
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


class _Bounded(NodeTransformer):
    """Route what Jinja would run unchecked through the bounds: every ``{% for %}`` iterable through
    the loop counter, every ``~`` concatenation through the size check."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(list(node.nodes), lineno=node.lineno), _CONCAT_FILTER, [], [], None, None,
                            lineno=node.lineno)


def _bounded_tree(tree: nodes.Template) -> nodes.Template:
    return _Bounded().visit(tree)


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
            self._template = _ENV.from_string(_bounded_tree(tree))
        except ExpressionError:
            raise
        except Exception as exc:
            raise ExpressionError(_error_text(exc)) from None
        try:
            self._fast: Callable[[Mapping[str, Any], list[str]], None] | None = _compile_body(tree.body)
        except _Unsupported:
            self._fast = None

    def render(self, variables: Mapping[str, Any]) -> str:
        check_time()
        token = _ITERATIONS.set([0])
        try:
            if self._fast is not None:
                out: list[str] = []
                self._fast(variables, out)
                return _join_with("", out).strip()
            size, parts = 0, []
            for part in self._template.generate(variables):  # output counted as it is made
                size += len(part)
                _refuse_size(size, "the template")
                parts.append(part)
            return "".join(parts).strip()
        except LimitExceeded:
            raise
        except RecursionError:
            raise LimitExceeded("recursion too deep (a macro calling itself?)") from None
        except MemoryError:
            raise LimitExceeded("out of memory") from None
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(_error_text(exc)) from None
        finally:
            _ITERATIONS.reset(token)
