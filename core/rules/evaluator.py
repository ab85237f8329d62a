"""Evaluation: a pure function of (rules, snapshot, history, now) -> findings and notes.

Each rule's kind (``RuleKind.compile``) returned a ``check(ctx)`` function; here it is called once per
rule with a :class:`RuleContext`, and yields :class:`Result` objects, one per entity (or event group,
or joined group) whose condition holds, plus inactive or unknown ones for entities that already have
an alert (so the lifecycle can resolve or freeze them). The context batches history: one
``values_at`` per (metric, time, tolerance) for the whole evaluation, never one query per entity.

Nothing here writes anything; ``mistwatch.rules.lifecycle`` turns findings into alert states.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol

from mistwatch.memory import release_free_memory
from mistwatch.model import Alert, Entity, Result, Snapshot, identity_of
from mistwatch.rules.expr import ExpressionError, LimitExceeded, time_limit
from mistwatch.rules.loader import Matcher
from mistwatch.rules.variables import template_variables
from mistwatch.store.records import HOURLY_STATS, EntityRecord, HourlyRollups, hourly_columns

if TYPE_CHECKING:
    from mistwatch.rules.loader import Rule, RuleSet


class History(Protocol):
    """The history queries evaluation needs; ``mistwatch.store.database.Store`` satisfies it."""

    def values_at(self, metric: str, at: datetime, *, tolerance: timedelta = ...,
                  keys: Iterable[str] | None = None) -> dict[str, float]: ...

    def window_mean(self, metric: str, start: datetime, end: datetime,
                    keys: Iterable[str] | None = None) -> dict[str, tuple[float, int]]: ...

    def history_start(self, metric: str | None = None) -> datetime | None: ...

    def entities(self, kind: str | None = None, *,
                 seen_before: datetime | None = None) -> list[EntityRecord]: ...

    def hourly(self, metric: str, start: datetime, end: datetime,
               stats: Collection[str] = HOURLY_STATS) -> HourlyRollups: ...

    def state_changes(self, metric: str, start: datetime, end: datetime) -> dict[str, int]: ...


@dataclass(slots=True)
class Finding:
    """A rule applied to one subject this cycle, ready for the lifecycle.

    ``severity`` None: the condition is false (the finding is there because an alert exists for it).
    ``unknown``: the data could not be collected: the alert state must freeze.
    """

    key: str
    rule_id: str
    labels: dict[str, str]
    severity: str | None
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    summary: str = ""
    description: str = ""
    recommendation: str = ""
    unknown: bool = False
    recovered: bool = True
    causes: tuple[str, ...] = ()
    subject: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.severity is not None and not self.unknown


@dataclass(frozen=True, slots=True)
class Note:
    """Something the user should know that is not an alert: insufficient history, unknown data,
    a rule that failed. ``kind`` is ``insufficient_history``, ``unknown``, ``error`` or ``info``."""

    rule_id: str
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.text}"


@dataclass
class Evaluation:
    at: datetime
    findings: list[Finding] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    #: rules whose subjects may be missing this cycle (collection failed): their alerts without a
    #: finding freeze instead of resolving
    frozen_rules: set[str] = field(default_factory=set)
    duration_s: float = 0.0

    @property
    def active(self) -> list[Finding]:
        return [f for f in self.findings if f.active]


def alert_key(rule_id: str, identity: Mapping[str, str]) -> str:
    """Rule id plus identity labels, never values: ``rule{site_id=...,device_id=...}``."""
    inner = ",".join(f"{k}={identity[k]}" for k in sorted(identity))
    return f"{rule_id}{{{inner}}}"


class _Shared:
    """Per-evaluation caches shared by all rules: entities by kind and matcher, history queries."""

    def __init__(self, snapshot: Snapshot, history: History, now: datetime,
                 alerts: Mapping[str, Alert] | None) -> None:
        self.snapshot, self.history, self.now = snapshot, history, now
        self.complete = alerts is None
        self.by_kind: dict[str, list[Entity]] = {}
        for entity in snapshot.entities:
            self.by_kind.setdefault(entity.kind, []).append(entity)
        self.matched: dict[tuple[str, str], list[Entity]] = {}
        self._indexes: dict[tuple[str, str], dict[str | None, list[Entity]]] = {}
        self.scope_keys: dict[tuple[str, str], dict[str, Entity]] = {}
        self.values: dict[tuple[str, datetime, timedelta], dict[str, float]] = {}
        self.means: dict[tuple[str, datetime, datetime], dict[str, tuple[float, int]]] = {}
        self.starts: dict[str | None, datetime | None] = {}
        self.records: dict[tuple[str, datetime | None], list[EntityRecord]] = {}
        #: the window of hourly roll-ups the rule being evaluated read last (at most one: at 10,000
        #: sites one window is tens of MB)
        self.hourly: dict[tuple[str, datetime, datetime, frozenset[str]], HourlyRollups] = {}
        self.changes: dict[tuple[str, datetime, datetime], dict[str, int]] = {}
        self.alerts_by_rule: dict[str, dict[str, Alert]] = {}
        for alert in (alerts or {}).values():
            subject = alert.annotations.get("subject") or alert.key
            self.alerts_by_rule.setdefault(alert.rule_id, {})[subject] = alert
        self.findings: dict[str, list[Finding]] = {}
        self.unknown_rules: set[str] = set()
        self.queries = 0


    def label_index(self, kind: str, label: str) -> dict[str | None, list[Entity]]:
        index = self._indexes.get((kind, label))
        if index is None:
            index = self._indexes[(kind, label)] = {}
            for entity in self.by_kind.get(kind, []):
                index.setdefault(entity.labels.get(label), []).append(entity)
        return index


class RuleContext:
    """What a kind's ``check(ctx)`` may use. Everything is read-only and cached per evaluation."""

    def __init__(self, rule: Rule, shared: _Shared, evaluation: Evaluation) -> None:
        self.rule = rule
        self._shared = shared
        self._evaluation = evaluation
        self._previous = shared.alerts_by_rule.get(rule.id, {})
        self.unknown_count = 0

    # the cycle -----------------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self._shared.snapshot

    @property
    def now(self) -> datetime:
        return self._shared.now

    def entities(self, kind: str | None = None) -> list[Entity]:
        """Entities of the rule's scope (or ``kind``) in the snapshot that pass the rule's matchers."""
        kind = kind or self.rule.scope
        cache_key = (kind, self.rule.match.signature)
        found = self._shared.matched.get(cache_key)
        if found is None:
            candidates = self._shared.by_kind.get(kind, [])
            tests = self.rule.match.tests
            if tests and tests[0][1] == "eq":  # e.g. device_type: ap -> an index, not a scan
                label, _, wanted = tests[0]
                candidates = self._shared.label_index(kind, label).get(wanted, [])
                tests = tests[1:]
            if tests:
                match = Matcher(tests)
                candidates = [e for e in candidates if match(e.labels)]
            found = self._shared.matched[cache_key] = candidates
        return found

    def in_scope(self, key: str) -> Entity | None:
        """The entity with ``key`` if it is in this rule's scope and matches (else None)."""
        cache_key = (self.rule.scope, self.rule.match.signature)
        index = self._shared.scope_keys.get(cache_key)
        if index is None:
            index = self._shared.scope_keys[cache_key] = {e.key: e for e in self.entities()}
        return index.get(key)

    def partly_unknown(self) -> list[Entity]:
        """The entities in scope that carry unknown-metric patterns (usually none)."""
        return [e for e in self.entities() if e.unknown]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.rule.match(labels)

    def metric_unknown(self, kind: str, metric: str) -> bool:
        """True when a collector error leaves ``metric`` unknown for every entity of ``kind``."""
        return any(err.covers(kind, metric) for err in self._shared.snapshot.errors)

    def count_unknown(self, metric: str) -> bool:
        """Count the entities in scope whose ``metric`` is unknown this cycle (for the rule's
        "unknown data" note); True when it is unknown for all of them."""
        all_unknown = self.metric_unknown(self.rule.scope, metric)
        if all_unknown:
            self.unknown_count += len(self.entities())
        else:
            self.unknown_count += sum(1 for e in self.partly_unknown() if e.is_unknown(metric))
        return all_unknown

    def kind_unknown(self, kind: str | None = None) -> bool:
        """True when entities of ``kind`` (default: the rule's scope) may be missing altogether."""
        return self._shared.snapshot.kind_unknown(kind or self.rule.scope)

    # alerts that already exist ---------------------------------------------------------------------
    def wants(self, subject: str) -> bool:
        """Whether to yield an inactive or unknown result for ``subject``: only when an alert exists
        for it (or when evaluating without alert state, everything)."""
        return self._shared.complete or subject in self._previous

    @property
    def complete(self) -> bool:
        """True when evaluating without alert state: every subject gets a result."""
        return self._shared.complete

    @property
    def tracked_subjects(self) -> Mapping[str, Alert]:
        """This rule's previous alerts by subject (read-only; for fast ``in`` tests in loops)."""
        return self._previous

    def tracked(self) -> dict[str, Alert]:
        """This rule's alerts from the previous cycle, by subject."""
        return dict(self._previous)

    def previous(self, subject: str) -> Alert | None:
        """This rule's alert for ``subject`` as of the previous cycle (pending, firing or resolved)."""
        return self._previous.get(subject)

    def alerts(self, rule_id: str) -> list[Alert]:
        """Another rule's alerts as of the previous cycle."""
        return list(self._shared.alerts_by_rule.get(rule_id, {}).values())

    def findings(self, rule_id: str) -> list[Finding]:
        """Another rule's active findings this cycle (it was evaluated before this one)."""
        return self._shared.findings.get(rule_id, [])

    def rule_unknown(self, rule_id: str) -> bool:
        """True when another rule could not be evaluated fully this cycle."""
        return rule_id in self._shared.unknown_rules

    # history ---------------------------------------------------------------------------------------
    def values_at(self, metric: str, at: datetime, tolerance: timedelta) -> dict[str, float]:
        """Every entity's sample of ``metric`` nearest to ``at``: one batched query, cached."""
        key = (metric, at, tolerance)
        cached = self._shared.values.get(key)
        if cached is None:
            self._shared.queries += 1
            cached = self._shared.history.values_at(metric, at, tolerance=tolerance)
            self._shared.values[key] = cached
        return cached

    def window_mean(self, metric: str, start: datetime, end: datetime) -> dict[str, tuple[float, int]]:
        key = (metric, start, end)
        cached = self._shared.means.get(key)
        if cached is None:
            self._shared.queries += 1
            cached = self._shared.history.window_mean(metric, start, end)
            self._shared.means[key] = cached
        return cached

    def history_start(self, metric: str | None = None) -> datetime | None:
        if metric not in self._shared.starts:
            self._shared.queries += 1
            self._shared.starts[metric] = self._shared.history.history_start(metric)
        return self._shared.starts[metric]

    def entity_records(self, kind: str, seen_before: datetime | None = None) -> list[EntityRecord]:
        """Entities of ``kind`` the store has seen (first_seen, last_seen, labels); with
        ``seen_before``, only those last seen earlier than that."""
        key = (kind, seen_before)
        if key not in self._shared.records:
            self._shared.queries += 1
            self._shared.records[key] = self._shared.history.entities(kind, seen_before=seen_before)
        return self._shared.records[key]

    def hourly(self, metric: str, start: datetime, end: datetime,
               stats: Collection[str] = HOURLY_STATS) -> HourlyRollups:
        """Hourly roll-ups of ``metric`` for every entity, for the hours starting in [start, end): the
        columns named in ``stats`` (``mins``, ``maxs``, ``means``, ``counts``; all by default, ask
        for fewer: at 10,000 sites each column of a day is ~12 MB). One batched query, kept while
        this rule asks for the same window, dropped when it asks for another or when it is done.
        Only complete hours are rolled up, so end the window at the current hour's start."""
        key = (metric, start, end, frozenset(stats))
        cached = self._shared.hourly.get(key)
        if cached is None:
            self._shared.queries += 1
            self._shared.hourly.clear()  # before reading: never two windows held at once
            cached = self._shared.hourly[key] = self._shared.history.hourly(metric, start, end, stats)
        return cached

    def state_changes(self, metric: str, start: datetime, end: datetime) -> dict[str, int]:
        """How often each entity's ``metric`` changed between consecutive samples in [start, end]
        (raw samples: windows up to the store's ``raw_hours``). One batched query, cached."""
        key = (metric, start, end)
        cached = self._shared.changes.get(key)
        if cached is None:
            self._shared.queries += 1
            cached = self._shared.changes[key] = self._shared.history.state_changes(metric, start, end)
        return cached

    # reporting -------------------------------------------------------------------------------------
    def note(self, text: str, kind: str = "info") -> None:
        self._evaluation.notes.append(Note(self.rule.id, kind, text))


#: Seconds one rule may take to evaluate over every entity in its scope (templates and expressions
#: check it as they run); past it the rule is skipped for the cycle, the others still run.
RULE_TIME_LIMIT = 10.0


class RuleLimitError(Exception):
    """A rule's expression or template hit a resource bound: the rule is skipped for this cycle."""


def _limit(rule: Rule, key: str, exc: Exception) -> RuleLimitError:
    return RuleLimitError(f"{rule.where} {key}: {exc}")


def _render(rule: Rule, variables: Mapping[str, Any], notes: list[Note], errors: set[str]) -> tuple[str, str, str]:
    texts = []
    for name, tpl in (("summary", rule.summary), ("description", rule.description_template),
                      ("recommendation", rule.recommendation)):
        if tpl is None:
            texts.append(rule.description if name == "description" else "")
            continue
        try:
            texts.append(tpl.render(variables))
        except LimitExceeded as exc:
            raise _limit(rule, name, exc) from None
        except ExpressionError as exc:
            if name not in errors:  # one note per template, not one per entity
                errors.add(name)
                notes.append(Note(rule.id, "error", f"{name} template failed: {exc}"))
            texts.append(f"{rule.id} ({name} template error)" if name == "summary" else "")
    return texts[0], texts[1], texts[2]


def _expression_variables(rule: Rule, r: Result, names: set[str], now_text: str) -> dict[str, Any]:
    """What a when:/recover_when: expression sees: the few names expressions usually read, or the
    full template set when it reads more (``name``, ``site``, ``extra``...)."""
    variables = {"labels": r.labels, "metrics": r.metrics if r.metrics is not None else {},
                 "value": r.value, "threshold": r.threshold, "baseline": r.baseline,
                 "score": r.score, "change": r.score, "severity": r.severity}
    if names <= variables.keys():
        return variables
    return template_variables(rule, r.labels, severity=r.severity, value=r.value, threshold=r.threshold,
                              baseline=r.baseline, score=r.score, metrics=r.metrics, causes=r.causes,
                              extra=r.extra, now=now_text)


def _metric_unknown(ctx: RuleContext, key: str, metric: str) -> bool:
    """Could this cycle not tell ``metric`` for the subject ``key`` (its collection failed)?"""
    if ctx.metric_unknown(ctx.rule.scope, metric):
        return True
    entity = ctx.in_scope(key)
    return entity is not None and bool(entity.unknown) and entity.is_unknown(metric)


def _findings_for(rule: Rule, ctx: RuleContext, results: Iterable[Result], evaluation: Evaluation,
                  now: datetime) -> list[Finding]:
    found: list[Finding] = []
    template_errors: set[str] = set()
    expression_failed = False
    metric_extra = {"metric": rule.spec["metric"]} if isinstance(rule.spec.get("metric"), str) else {}
    when_names = rule.when.names() if rule.when is not None else set()
    when_metrics = rule.when.metric_names() if rule.when is not None else set()
    recover_names = rule.recover_expr.names() if rule.recover_expr is not None else set()
    now_text = now.isoformat()
    for r in results:
        active = r.severity is not None and not r.unknown
        labels = r.labels
        if active and rule.when is not None:
            variables = _expression_variables(rule, r, when_names, now_text)
            try:
                if not rule.when.test(variables):
                    active, r.severity = False, None
            except LimitExceeded as exc:
                raise _limit(rule, "when", exc) from None
            except ExpressionError as exc:
                missing = when_metrics - r.metrics.keys() if r.metrics is not None else set()
                if any(_metric_unknown(ctx, r.key, metric) for metric in missing):
                    ctx.unknown_count += 1  # it reads a metric whose collection failed: freeze
                    active, r.unknown = False, True
                elif missing:
                    # it reads a metric this entity does not report (a site without switches): not
                    # true, as a threshold on a missing metric is not a breach; not a rule error
                    active, r.severity = False, None
                else:
                    if not expression_failed:
                        expression_failed = True
                        evaluation.notes.append(Note(rule.id, "error", f"when: expression failed: {exc}"))
                    active, r.unknown = False, True
        if not active and not ctx.wants(r.key):
            continue
        recovered = True
        if not active and not r.unknown:
            if r.recovered is not None:
                recovered = r.recovered
            elif rule.recover_expr is not None:
                try:
                    recovered = rule.recover_expr.test(_expression_variables(rule, r, recover_names, now_text))
                except LimitExceeded as exc:
                    raise _limit(rule, "recover_when", exc) from None
                except ExpressionError as exc:
                    evaluation.notes.append(Note(rule.id, "error", f"recover_when failed: {exc}"))
                    recovered = False
        if not active:
            prev = ctx.previous(r.key)
            if prev is not None:  # keep what the alert knew (e.g. a correlation's causes)
                r.extra = {**prev.annotations, **r.extra}
        all_labels = {**labels, **rule.labels}
        identity = dict(r.identity) if r.identity is not None else identity_of(labels)
        if r.unknown or not active:
            # frozen, or the condition no longer holds: the alert keeps the texts of when it held
            # (a resolved mail must not say "SLE 97% (below 90%)"), so nothing to render
            summary = description = recommendation = ""
        else:
            variables = template_variables(rule, all_labels, severity=r.severity, value=r.value,
                                           threshold=r.threshold, baseline=r.baseline, score=r.score,
                                           metrics=r.metrics, causes=r.causes, extra=r.extra, now=now_text)
            summary, description, recommendation = _render(rule, variables, evaluation.notes, template_errors)
        found.append(Finding(
            key=alert_key(rule.id, identity), rule_id=rule.id, labels=all_labels, severity=r.severity,
            value=r.value, threshold=r.threshold, baseline=r.baseline, summary=summary,
            description=description, recommendation=recommendation, unknown=r.unknown,
            recovered=recovered, causes=r.causes, subject=r.key, extra={**r.extra, **metric_extra}))
    if ctx.unknown_count:
        evaluation.notes.append(Note(rule.id, "unknown",
                                 f"{ctx.unknown_count} {rule.scope}(s) with unknown data (collection "
                                 "failed): not evaluated; their alerts, if any, keep their state"))
    return found


def evaluate(ruleset: RuleSet, snapshot: Snapshot, history: History, now: datetime, *,
             alerts: Mapping[str, Alert] | None = None, rule_time_limit: float | None = RULE_TIME_LIMIT) -> Evaluation:
    """Evaluate every enabled rule. Pure: reads the snapshot and history, writes nothing.

    ``alerts`` (the alert states of the previous cycle, by key) lets change rules recover against
    the baseline stored when they fired, lets correlations look back over a window, and limits
    inactive findings to subjects that have an alert. Without it every subject in scope gets a
    finding (slower, same states).

    A rule whose expressions or templates hit a bound (size, loops, recursion, ``rule_time_limit``
    seconds) is skipped for the cycle like a rule that fails: its alerts keep their state, and a
    note names its file, line and key.
    """
    started = time.perf_counter()
    evaluation = Evaluation(at=now)
    shared = _Shared(snapshot, history, now, alerts)
    for rule in ruleset.rules:
        if not rule.enabled:
            continue
        ctx = RuleContext(rule, shared, evaluation)
        try:
            with time_limit(rule_time_limit):
                results = list(rule.check(ctx))
                findings = _findings_for(rule, ctx, results, evaluation, now)
        except Exception as exc:  # one broken rule (or plugin kind) must not stop the others
            if isinstance(exc, RuleLimitError):
                text = f"skipped this cycle: {exc}"
            elif isinstance(exc, LimitExceeded):
                text = f"skipped this cycle: {rule.where}: {exc}"
            else:
                text = f"rule failed: {type(exc).__name__}: {exc}"
            evaluation.notes.append(Note(rule.id, "error", text))
            evaluation.frozen_rules.add(rule.id)
            shared.unknown_rules.add(rule.id)
            shared.findings[rule.id] = []
            continue
        if ctx.kind_unknown():
            evaluation.frozen_rules.add(rule.id)
            shared.unknown_rules.add(rule.id)
        if ctx.unknown_count:
            shared.unknown_rules.add(rule.id)
        evaluation.findings.extend(findings)
        shared.findings[rule.id] = [f for f in findings if f.active]
        del results, findings
        shared.hourly.clear()  # a window of roll-ups is tens of MB at 10,000 sites: one rule's, not the next's
        release_free_memory()  # an analytics rule's matrices, before the next rule builds its own
    evaluation.duration_s = time.perf_counter() - started
    return evaluation


# --- an in-memory history, for rule tests and unit tests --------------------------------------------

class MemoryHistory:
    """A :class:`History` held in memory: ``add(at, {metric: {entity_key: value}})``."""

    def __init__(self) -> None:
        self._samples: dict[str, list[tuple[datetime, dict[str, float]]]] = {}
        self._entities: dict[str, EntityRecord] = {}
        #: {metric: {hour start (epoch s): {key: [min, max, sum, count]}}}, updated as samples arrive
        self._rollups: dict[str, dict[int, dict[str, list[float]]]] = {}
        self._positions: dict[str, dict[str, int]] = {}  # metric -> key -> row in hourly()
        self._columns: dict[str, dict[int, tuple[array, ...]]] = {}  # hourly() columns, built once

    def add(self, at: datetime, metric_values: Mapping[str, Mapping[str, float]]) -> None:
        hour = int(at.timestamp()) // 3600 * 3600
        for metric, values in metric_values.items():
            series = self._samples.setdefault(metric, [])
            series.append((at, dict(values)))
            series.sort(key=lambda item: item[0])
            bucket = self._rollups.setdefault(metric, {}).setdefault(hour, {})
            self._columns.get(metric, {}).pop(hour, None)
            positions = self._positions.setdefault(metric, {})
            for key, value in values.items():
                if key not in positions:
                    positions[key] = len(positions)
                stats = bucket.get(key)
                if stats is None:
                    bucket[key] = [value, value, value, 1]
                else:
                    stats[0], stats[1] = min(stats[0], value), max(stats[1], value)
                    stats[2] += value
                    stats[3] += 1

    def add_snapshot(self, snapshot: Snapshot) -> None:
        """Record entities (last_seen) and every known metric, as ``Store.write_snapshot`` does."""
        by_metric: dict[str, dict[str, float]] = {}
        for entity in snapshot.entities:
            record = self._entities.get(entity.key)
            if record is None:
                self._entities[entity.key] = EntityRecord(entity.key, entity.kind, dict(entity.labels),
                                                          snapshot.taken_at, snapshot.taken_at)
            else:
                record.labels, record.last_seen = dict(entity.labels), snapshot.taken_at
            for metric, value in entity.metrics.items():
                if not snapshot.is_unknown(entity, metric):
                    by_metric.setdefault(metric, {})[entity.key] = value
        self.add(snapshot.taken_at, by_metric)

    def values_at(self, metric: str, at: datetime, *, tolerance: timedelta = timedelta(minutes=90),
                  keys: Iterable[str] | None = None) -> dict[str, float]:
        best: dict[str, tuple[float, float]] = {}
        for sample_at, values in self._samples.get(metric, []):
            distance = abs((sample_at - at).total_seconds())
            if distance > tolerance.total_seconds():
                continue
            for key, value in values.items():
                if key not in best or distance < best[key][0]:
                    best[key] = (distance, value)
        wanted = set(keys) if keys is not None else None
        return {k: v for k, (_, v) in best.items() if wanted is None or k in wanted}

    def window(self, metric: str, start: datetime, end: datetime,
               keys: Iterable[str] | None = None) -> dict[str, list[tuple[datetime, float]]]:
        out: dict[str, list[tuple[datetime, float]]] = {}
        wanted = set(keys) if keys is not None else None
        for sample_at, values in self._samples.get(metric, []):
            if start <= sample_at <= end:
                for key, value in values.items():
                    if wanted is None or key in wanted:
                        out.setdefault(key, []).append((sample_at, value))
        return out

    def window_mean(self, metric: str, start: datetime, end: datetime,
                    keys: Iterable[str] | None = None) -> dict[str, tuple[float, int]]:
        return {k: (sum(v for _, v in s) / len(s), len(s))
                for k, s in self.window(metric, start, end, keys).items()}

    def hourly(self, metric: str, start: datetime, end: datetime,
               stats: Collection[str] = HOURLY_STATS) -> HourlyRollups:
        """Roll-ups of the samples, as the store keeps them (complete hours only when ``end`` is the
        current hour's start); kept up to date by ``add``. Rows are every key ever seen for the metric."""
        wanted = hourly_columns(stats)
        lo, hi = start.timestamp(), end.timestamp()
        buckets = self._rollups.get(metric, {})
        positions = self._positions.setdefault(metric, {})
        columns = self._columns.setdefault(metric, {})
        result = HourlyRollups(metric, list(positions))
        for hour in sorted(h for h in buckets if lo <= h < hi):
            built = columns.get(hour)
            if built is None:  # new or changed since last built
                bucket = buckets[hour]
                built = columns[hour] = (
                    array("i", (positions[k] for k in bucket)), array("d", (s[0] for s in bucket.values())),
                    array("d", (s[1] for s in bucket.values())),
                    array("d", (s[2] / s[3] for s in bucket.values())),
                    array("i", (int(s[3]) for s in bucket.values())))
            result.hours.append(hour)
            result.rows.append(built[0])
            for name, column in zip(HOURLY_STATS, built[1:], strict=True):
                if name in wanted:
                    getattr(result, name).append(column)
        return result

    def state_changes(self, metric: str, start: datetime, end: datetime) -> dict[str, int]:
        changes: dict[str, int] = {}
        for key, series in self.window(metric, start, end).items():
            count = sum(1 for (_, a), (_, b) in pairwise(series) if a != b)
            if count:
                changes[key] = count
        return changes

    def history_start(self, metric: str | None = None) -> datetime | None:
        series = self._samples.get(metric, []) if metric else [s[0] for s in self._samples.values() if s]
        return series[0][0] if series else None

    def entities(self, kind: str | None = None, *, seen_before: datetime | None = None) -> list[EntityRecord]:
        return sorted((r for r in self._entities.values() if (kind is None or r.kind == kind)
                       and (seen_before is None or r.last_seen < seen_before)), key=lambda r: r.key)
