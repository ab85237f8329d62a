"""Rule files: loading, the JSON Schema, and compilation into :class:`Rule` objects.

A rule file holds ``rules: [ ... ]`` or a single rule. Every problem is a ``ConfigError`` with the
file, line and key path (``rules/x.yaml:12 rules[0].for: ...``). Rules are compiled once; the
evaluator (``mistwatch.rules.evaluator``) then runs them every cycle.

Keys common to every rule (the kind adds its own, see ``mistwatch.plugins.rulekinds``)::

    id: wifi-coverage-low            # unique across all files
    description: ...                 # why it matters
    kind: threshold                  # a registered RuleKind
    scope: site                      # org | site | device | a kind a plugin adds
    match: {device_type: ap, site_name: {regex: "^Dublin"}, model: {not: AP12}}
    severity: major                  # or tiers: [{severity: critical, below: 0.75}, {severity: major, below: 0.9}]
    for: 10m                         # or {cycles: 3}; how long the condition must hold before firing
    keep_firing_for: 15m             # stay firing this long after the condition clears
    recover_when: {above: 0.93}      # hysteresis: kind keys, or an expression string
    when: "metrics['site.clients'] > 10"   # optional sandboxed expression, must also hold
    labels: {team: wifi}
    summary: "{{ labels.site_name }}: coverage {{ value | pct }}"
    # description is a template too: rendered into each alert (plain text renders as itself)
    recommendation: ...              # a template too
    enabled: true
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from mistwatch.durations import parse_duration
from mistwatch.errors import ConfigError
from mistwatch.hookspecs import RuleKind, RuleSpecError
from mistwatch.model import severity_rank
from mistwatch.rules.derived import DerivedMetric
from mistwatch.rules.expr import Expression, ExpressionError, Template
from mistwatch.rules.schema import METRICS_SCHEMA, kind_rule_schema
from mistwatch.rules.variables import template_variables
from mistwatch.yamlfile import format_key_path, load_yaml, validate

RULE_FILE_SUFFIXES = (".yaml", ".yml")
#: the entity kinds of the hierarchy every collector fills (org > site > device), and the events' scope
BASE_SCOPES = ("org", "site", "device", "event")


# --- matchers ----------------------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _test(op: str, arg: Any, value: str | None) -> bool:
    if op == "eq":
        return value == arg
    if op == "not":
        return value != arg
    if op == "in":
        return value in arg
    if op == "not_in":
        return value not in arg
    if op == "regex":
        return value is not None and arg.search(value) is not None
    if op == "not_regex":
        return value is None or arg.search(value) is None
    return (value is not None) == arg  # exists


@dataclass(frozen=True)
class Matcher:
    """Label matchers, all of which must hold. ``signature`` makes equal matchers share a cache.

    Regexes are searched, not anchored: write ``^Dublin`` for "starts with Dublin".
    """

    tests: tuple[tuple[str, str, Any], ...] = ()
    signature: str = ""

    def __call__(self, labels: Mapping[str, str]) -> bool:
        return all(_test(op, arg, labels.get(label)) for label, op, arg in self.tests)


def compile_matcher(spec: Mapping[str, Any] | None) -> Matcher:
    """Build a Matcher; raises RuleSpecError (with the label as key) on a bad regex."""
    if not spec:
        return Matcher()
    tests = []
    for label, want in spec.items():
        if isinstance(want, Mapping):
            (op, arg), = want.items()
        elif isinstance(want, list):
            op, arg = "in", want
        else:
            op, arg = "eq", want
        if op in ("regex", "not_regex"):
            try:
                arg = re.compile(str(arg))
            except re.error as exc:
                raise RuleSpecError(f"invalid regular expression {arg!r}: {exc}", key=f"match.{label}") from None
        elif op in ("in", "not_in"):
            arg = frozenset(_text(a) for a in arg)
        elif op == "exists":
            arg = bool(arg)
        else:
            arg = _text(arg)
        tests.append((str(label), op, arg))
    signature = repr(sorted((str(k), repr(v)) for k, v in spec.items()))
    return Matcher(tuple(tests), signature)


# --- compiled rules ----------------------------------------------------------------------------

@dataclass
class Rule:
    """One compiled rule. ``check`` is what the kind's ``compile`` returned."""

    id: str
    kind: str
    scope: str
    description: str
    severities: tuple[str, ...]  # of its tiers, highest first
    match: Matcher
    for_duration: timedelta
    for_cycles: int
    keep_firing_for: timedelta
    recover_expr: Expression | None
    when: Expression | None
    labels: dict[str, str]
    summary: Template
    description_template: Template | None
    recommendation: Template | None
    enabled: bool
    check: Callable[..., Iterable[Any]]
    spec: Mapping[str, Any]
    file: str = ""
    line: int | None = None
    refs: tuple[str, ...] = ()
    metrics: frozenset[str] = frozenset()
    #: where each reference is written: rule id -> (line, key path), for error messages
    ref_where: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    #: rule ids whose firing alerts this rule's firing alert supersedes (``supersedes:``)
    supersedes: tuple[str, ...] = ()

    @property
    def severity(self) -> str:
        """The highest severity the rule can raise."""
        return self.severities[0]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class RuleSet:
    """The compiled rules of all files, correlations after the rules they reference."""

    rules: list[Rule] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    #: derived metrics (``metrics:`` in rule files), computed into each snapshot before it is stored
    metrics: list[DerivedMetric] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rules]

    @property
    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}

    def get(self, rule_id: str) -> Rule | None:
        return self.by_id.get(rule_id)


def _default_summary(scope: str) -> str:
    name = {"site": "labels.site_name", "device": "labels.device_name", "org": "labels.org_name"}.get(scope)
    subject = f"{{{{ {name} | default(name) }}}}" if name else "{{ name }}"
    return "{{ rule_id }}: " + subject + "{% if value is not none %} value {{ value | num }}{% endif %}"


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and ``*.yaml``/``*.yml`` in folders (sorted; a ``tests`` subfolder is skipped)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix in RULE_FILE_SUFFIXES))
        else:
            files.append(path)
    return files


def _severity_tiers(spec: Mapping[str, Any], kind: RuleKind) -> list[dict[str, Any]]:
    """Normalise ``severity`` + top-level condition keys, or ``tiers``, into tiers, highest first."""
    condition_keys = tuple(getattr(kind, "condition_keys", ()) or ())
    if "tiers" in spec:
        tiers = [{**t, "_index": i} for i, t in enumerate(spec["tiers"])]
    else:
        tier = {"severity": spec.get("severity", "major")}
        tier.update({k: spec[k] for k in condition_keys if k in spec})
        tiers = [tier]
    tiers.sort(key=lambda t: -severity_rank(t["severity"]))
    return tiers


def _sample_labels(scope: str, rule_labels: Mapping[str, str]) -> dict[str, str]:
    """Plausible labels for a test render of the templates in ``rules check``."""
    labels = {"org_id": "org-1", "org_name": "Example Org"}
    if scope in ("site", "device", "event", "correlation"):
        labels.update(site_id="site-1", site_name="Example Site", timezone="UTC", country_code="US")
    if scope in ("device", "event"):
        labels.update(device_id="dev-1", device_name="ap-01", device_type="ap", mac="5c5b35000001",
                      model="AP45", version="0.14.1")
    return {**labels, **rule_labels}


def _compile_rule(raw: Mapping[str, Any], kinds: Mapping[str, RuleKind], file: str,
                  where: Callable[[Sequence[str | int]], int | None],
                  prefix: tuple[str | int, ...]) -> Rule:
    def fail(message: str, key: str | None) -> ConfigError:
        extra = [int(p) if p.isdigit() else p for p in key.split(".")] if key else []
        parts: tuple[str | int, ...] = (*prefix, *extra)
        return ConfigError(message, file=file, line=where(parts), key=format_key_path(parts))

    kind = kinds[raw["kind"]]
    spec = dict(raw)
    scope = str(spec.get("scope") or getattr(kind, "default_scope", "") or "site")
    spec["scope"] = scope
    spec["tiers"] = _severity_tiers(raw, kind)
    spec["_tiers_given"] = "tiers" in raw  # for error key paths (tiers[1].below vs below)
    if isinstance(raw.get("recover_when"), str):
        spec.pop("recover_when")
    try:
        check = kind.compile(spec)
    except RuleSpecError as exc:
        raise fail(str(exc), exc.key) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise fail(f"kind '{kind.name}' cannot compile this rule: {exc}", None) from None

    def parse(key: str) -> Any:
        value = raw.get(key)
        if value is None:
            return timedelta(0)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise fail(str(exc), key) from None

    for_value = raw.get("for")
    for_cycles = int(for_value["cycles"]) if isinstance(for_value, Mapping) else 0
    for_duration = timedelta(0) if isinstance(for_value, Mapping) else parse("for")

    def expression(key: str) -> Expression | None:
        source = raw.get(key)
        if not isinstance(source, str):
            return None
        try:
            return Expression(source)
        except ExpressionError as exc:
            raise fail(f"invalid expression: {exc}", key) from None

    def template(key: str, default: str | None = None) -> Template | None:
        source = raw.get(key, default)
        if source is None:
            return None
        try:
            return Template(str(source))
        except ExpressionError as exc:
            raise fail(f"invalid template: {exc}", key) from None

    try:
        match = compile_matcher(raw.get("match"))
    except RuleSpecError as exc:
        raise fail(str(exc), exc.key) from None
    labels = {str(k): _text(v) for k, v in (raw.get("labels") or {}).items()}
    metrics = set()
    if isinstance(raw.get("metric"), str):
        metrics.add(raw["metric"])
    when = expression("when")
    recover_expr = expression("recover_when")
    for expr in (when, recover_expr):
        if expr is not None:
            metrics |= expr.metric_names()
    refs_of = getattr(kind, "references", None)
    refs = tuple(refs_of(spec)) if refs_of else ()
    ref_where = {}
    for ref in refs:  # the key that names it (all_of[1]), so an unknown id is reported right there
        for key, value in raw.items():
            if key == "supersedes":
                continue
            items = value if isinstance(value, list) else [value]
            if ref in items:
                parts = (*prefix, key, items.index(ref)) if isinstance(value, list) else (*prefix, key)
                ref_where[ref] = (where(parts), format_key_path(parts))
                break
    # a superseded rule need not be loaded (a pack used without one of its files): nothing to check
    supersedes = tuple(str(r) for r in raw.get("supersedes") or ())
    if raw["id"] in supersedes:
        raise fail("a rule cannot supersede itself", f"supersedes.{supersedes.index(raw['id'])}")
    summary = template("summary", _default_summary(scope))
    assert summary is not None
    rule = Rule(
        id=raw["id"], kind=kind.name, scope=scope, description=str(raw.get("description", "")),
        severities=tuple(t["severity"] for t in spec["tiers"]), match=match,
        for_duration=for_duration, for_cycles=for_cycles, keep_firing_for=parse("keep_firing_for"),
        recover_expr=recover_expr, when=when, labels=labels, summary=summary,
        description_template=template("description"),
        recommendation=template("recommendation"), enabled=bool(raw.get("enabled", True)),
        check=check, spec=spec, file=file, line=where(prefix), refs=refs, metrics=frozenset(metrics),
        ref_where=ref_where, supersedes=supersedes)
    _test_render(rule, fail)
    return rule


def _test_render(rule: Rule, fail: Callable[[str, str | None], ConfigError]) -> None:
    """Render each template once with sample values, so ``rules check`` finds template errors."""
    labels = _sample_labels(rule.scope, rule.labels)
    variables = template_variables(rule, labels, severity=rule.severity, value=0.5, threshold=0.9,
                                   baseline=0.95, score=-0.05, extra={"sample": True})
    for key, tpl in (("summary", rule.summary), ("description", rule.description_template),
                     ("recommendation", rule.recommendation)):
        if tpl is None:
            continue
        try:
            tpl.render(variables)
        except ExpressionError as exc:
            raise fail(f"template error in a test render: {exc}", key) from None
    for key, expr in (("when", rule.when), ("recover_when", rule.recover_expr)):
        if expr is None:
            continue
        unknown = expr.names() - set(variables)
        if unknown:
            raise fail(f"unknown name '{sorted(unknown)[0]}' (expressions see: "
                       f"{', '.join(sorted(variables))})", key)


_RULES_LIST = {"type": "object", "additionalProperties": False,
               "properties": {"rules": {"type": ["array", "null"], "items": {"type": "object"}},
                              "metrics": METRICS_SCHEMA}}
_ID_AND_KIND = {"type": "object", "required": ["id", "kind"],
                "properties": {"kind": {"type": "string"}}}


def load_rules(paths: Sequence[str | Path], kinds: Mapping[str, RuleKind], *,
               known_metrics: Collection[str] | None = None, errors: list[ConfigError] | None = None) -> RuleSet:
    """Load, validate and compile rule files (or folders of them).

    Raises ``ConfigError(file=, line=, key=, message)`` for the first problem: YAML syntax, schema,
    compilation, a template that fails a test render, a duplicate id, an unknown metric (when
    ``known_metrics`` is given), an unknown or circular rule reference. With ``errors`` given
    (``rules check``), a problem in one rule or file is appended there and loading goes on with the
    next, so every problem of every file is reported at once; the rules that loaded are returned.
    """
    per_kind = {name: kind_rule_schema(kind) for name, kind in kinds.items()}
    scopes = None
    if known_metrics is not None:  # a scope is an entity kind: Mist's, a kind's default, or a metric prefix
        scopes = {*BASE_SCOPES, *(getattr(k, "default_scope", "") for k in kinds.values()),
                  *(m.split(".", 1)[0] for m in known_metrics)}
    ruleset = RuleSet()
    seen: dict[str, Rule] = {}
    files = expand_paths(paths)
    if not files:
        raise ConfigError("no rule files found", file=", ".join(str(p) for p in paths) or None)

    def load_item(file: str, lines: Any, prefix: tuple, raw: Any) -> None:
        validate(raw, _ID_AND_KIND, file=file, lines=lines, prefix=prefix)
        validate(raw, per_kind[raw["kind"]], file=file, lines=lines, prefix=prefix)
        if scopes is not None and "scope" in raw and raw["scope"] not in scopes:
            where = (*prefix, "scope")
            raise ConfigError(f"unknown scope '{raw['scope']}'{_close(raw['scope'], BASE_SCOPES)} (scopes: "
                              f"{', '.join(BASE_SCOPES)}, or an entity kind a plugin collects)",
                              file=file, line=lines.line(where), key=format_key_path(where))
        rule = _compile_rule(raw, kinds, file, lines.line, prefix)
        if rule.id in seen:
            first = seen[rule.id]
            raise ConfigError(f"duplicate rule id '{rule.id}' (first defined at {first.where})",
                              file=file, line=lines.line((*prefix, "id")),
                              key=format_key_path((*prefix, "id")))
        if known_metrics is not None:
            for metric in sorted(rule.metrics):
                if metric not in known_metrics:
                    close = _close(metric, known_metrics)
                    where = (*prefix, "metric" if raw.get("metric") == metric else "when")
                    raise ConfigError(
                        f"unknown metric '{metric}' (no collector declares it{close})",
                        file=file, line=lines.line(where), key=format_key_path(where))
        seen[rule.id] = rule

    def failed(exc: ConfigError) -> None:
        if errors is None:
            raise exc
        errors.append(exc)

    loaded = []
    for path in files:
        file = str(path)
        try:
            data, lines = load_yaml(path)
            ruleset.files.append(file)
            if data is None:
                continue  # an empty file is allowed: no rules
            if not isinstance(data, Mapping):
                raise ConfigError("a rule file holds 'rules: [...]' or a single rule mapping", file=file, line=1)
            if "rules" in data or "metrics" in data:
                validate(data, _RULES_LIST, file=file, lines=lines)
            loaded.append((file, data, lines))
        except ConfigError as exc:
            failed(exc)
    # derived metrics first: a rule in any file may read them
    for file, data, lines in loaded:
        try:
            ruleset.metrics.extend(_derived_metrics(data, file, lines, ruleset.metrics, known_metrics))
        except ConfigError as exc:
            failed(exc)
    if known_metrics is not None and ruleset.metrics:
        known_metrics = {*known_metrics, *(m.name for m in ruleset.metrics)}
    for file, data, lines in loaded:
        if "rules" in data or "metrics" in data:
            items = [(("rules", i), r) for i, r in enumerate(data.get("rules") or [])]
        else:
            items = [((), data)]
        for prefix, raw in items:
            try:
                _check_kind(raw, prefix, kinds, file, lines)
                load_item(file, lines, prefix, raw)
            except ConfigError as exc:
                failed(exc)
    try:
        ruleset.rules = _ordered(list(seen.values()))
    except ConfigError as exc:
        failed(exc)
    return ruleset


def _derived_metrics(data: Mapping[str, Any], file: str, lines: Any, earlier: Sequence[DerivedMetric],
                     known: Collection[str] | None) -> list[DerivedMetric]:
    """The ``metrics:`` of one file, compiled; a name defined twice or read before it is defined (or
    unknown to the collectors, when ``known`` is given) is an error naming the line."""
    out: list[DerivedMetric] = []
    names = {m.name for m in earlier}
    for index, spec in enumerate(data.get("metrics") or []):
        where = ("metrics", index)

        def fail(message: str, key: str, where: tuple[str | int, ...] = where) -> ConfigError:
            return ConfigError(message, file=file, line=lines.line((*where, key)), key=format_key_path((*where, key)))

        name = spec["name"]
        if name in names or (known is not None and name in known):
            raise fail(f"metric '{name}' is already defined" + ("" if name in names else " by a collector"), "name")
        try:
            expr = Expression(spec["expr"])
        except ExpressionError as exc:
            raise fail(f"invalid expression: {exc}", "expr") from None
        for read in sorted(expr.metric_names()):
            if known is not None and read not in names and read not in known:
                raise fail(f"unknown metric '{read}'{_close(read, [*known, *names])} (derived metrics may "
                           "read collected ones and those defined before them)", "expr")
        names.add(name)
        out.append(DerivedMetric(name, str(spec.get("scope") or "site"), expr, str(spec.get("description") or ""),
                                 file, lines.line(where)))
    return out


def _check_kind(rule: Any, prefix: tuple, kinds: Mapping[str, RuleKind], file: str, lines: Any) -> None:
    """An unknown kind first, with a suggestion: otherwise the schema would complain about every
    key that kind would have allowed."""
    if isinstance(rule, Mapping) and isinstance(rule.get("kind"), str) and rule["kind"] not in kinds:
        where = (*prefix, "kind")
        raise ConfigError(f"unknown rule kind '{rule['kind']}'{_close(rule['kind'], kinds)} "
                          f"(kinds: {', '.join(sorted(kinds))})",
                          file=file, line=lines.line(where), key=format_key_path(where))


def _close(name: str, known: Collection[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def _ordered(rules: list[Rule]) -> list[Rule]:
    """Rules in file order, except that a rule comes after every rule it references."""
    by_id = {r.id: r for r in rules}
    for rule in rules:
        for ref in rule.refs:
            line, key = rule.ref_where.get(ref, (rule.line, rule.id))
            if ref not in by_id:
                raise ConfigError(f"unknown rule '{ref}' referenced by '{rule.id}'{_close(ref, by_id)}",
                                  file=rule.file, line=line, key=key)
            if not by_id[ref].enabled and rule.enabled:
                raise ConfigError(f"rule '{rule.id}' references '{ref}', which is disabled",
                                  file=rule.file, line=line, key=key)
    ordered: list[Rule] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(rule: Rule, chain: tuple[str, ...]) -> None:
        if state.get(rule.id) == 2:
            return
        if state.get(rule.id) == 1:
            cycle = " -> ".join((*chain, rule.id))
            raise ConfigError(f"circular rule references: {cycle}", file=rule.file, line=rule.line,
                              key=rule.id)
        state[rule.id] = 1
        for ref in rule.refs:
            visit(by_id[ref], (*chain, rule.id))
        state[rule.id] = 2
        ordered.append(rule)

    for rule in rules:
        visit(rule, ())
    return ordered


def package_rules_dir() -> Path:
    """The default rule pack shipped with the package.

    Installed, the YAML files are the package data ``mistwatch.rulepack`` (``mistwatch/rulepack/``);
    in a source checkout they are in the top-level ``rules/`` folder.
    """
    from importlib.resources import files

    try:  # installed: the package data mistwatch.rulepack (pyproject.toml)
        candidates = [Path(str(files("mistwatch.rulepack")))]
    except ModuleNotFoundError:
        candidates = []
    here = Path(__file__).resolve().parent
    for candidate in (*candidates, here / "rules", here.parent / "rules"):
        if any(candidate.glob("*.yaml")):
            return candidate
    return here / "rules"
