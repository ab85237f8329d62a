"""The built-in rule kinds, registered through the same hook a plugin uses (``mistwatch_rule_kinds``).

- ``threshold``: a metric ``above``, ``below``, ``inside: [lo, hi]`` or ``outside: [lo, hi]``.
- ``change``: the metric now against the same entity's value at an ``offset`` (default 1d) or the
  mean over a ``baseline: {window: 7d}``; ``unit: absolute|percent``; ``drop:`` or ``rise:``;
  ``min_baseline`` guard. Missing history is a note, never an alert. Once pending or firing, the
  rule compares against the baseline stored in the alert, so it stays firing until the metric has
  come back to within ``recover_when: {within: X}`` (default: half the drop) of the level it dropped
  from, not merely because the offset moved past the drop.
- ``absence``: an entity not seen for ``absent_for`` (from the store's last_seen), or a metric an
  entity used to report and no longer does. A failed collection makes absence unknown, not true.
- ``event``: Mist alarms and events in the snapshot by ``source``, ``types`` and ``severities``
  (select an alarm ``group`` with ``match: {group: marvis}``); one alert per (site/device, event
  type) with the event's labels and severity. ``severity_by_type`` / ``severity_by_group`` override
  the severity per event type (globs) or alarm group before the severity filters apply; ``within``
  ignores events older than that (for Mist alarms: not seen again for that long), so an alarm Mist
  never closes resolves.
- ``correlation``: ``all_of`` / ``any_of`` / ``unless`` over other rules, joined on labels
  (``join: [site_id]``), over this cycle's conditions or alerts true ``within`` a window; one alert
  citing its causes.
- ``expression``: only the rule's ``when:`` expression, for what the other kinds do not cover.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from mistwatch import Result, RuleSpecError, duration_schema, identity_of
from mistwatch.durations import format_duration
from mistwatch.hookspecs import RuleKind, hookimpl, spec_duration
from mistwatch.model import SEVERITIES, Entity, severity_rank

if TYPE_CHECKING:  # the evaluator loads with the rules, not when `mistwatch --help` lists plugins
    from mistwatch import RuleContext

Check = Callable[["RuleContext"], Iterator[Result]]

_DURATION = duration_schema()
_NUMBER = {"type": "number"}
_RANGE = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
          "x-message": "must be a range [low, high]"}
_NAMES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
          "x-message": "must be a name or a list of names"}


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _unknown(entity: Entity, metric: str, all_unknown: bool) -> bool:
    return all_unknown or (bool(entity.unknown) and entity.is_unknown(metric))


# --- threshold ---------------------------------------------------------------------------------------

Predicate = Callable[[float], bool]


def _comparison(cond: Mapping[str, Any], key_prefix: str = "") -> tuple[Predicate, float | None] | None:
    """A predicate for the condition keys of one tier; None when the tier has none."""
    tests: list[Predicate] = []
    threshold: float | None = None
    if "above" in cond:
        limit = float(cond["above"])
        tests.append(lambda v, x=limit: v > x)
        threshold = limit
    if "below" in cond:
        limit = float(cond["below"])
        if "above" in cond and float(cond["above"]) >= limit:
            raise RuleSpecError(f"above {float(cond['above']):g} and below {limit:g} can never both hold "
                                "(for 'outside a range' use outside: [low, high])", key=f"{key_prefix}below")
        tests.append(lambda v, x=limit: v < x)
        threshold = limit if threshold is None else threshold
    for key, inside in (("inside", True), ("outside", False)):
        if key in cond:
            low, high = (float(x) for x in cond[key])
            if low > high:
                raise RuleSpecError(f"range [{low}, {high}] has low > high", key=f"{key_prefix}{key}")
            if inside:
                tests.append(lambda v, a=low, b=high: a <= v <= b)
            else:
                tests.append(lambda v, a=low, b=high: v < a or v > b)
            threshold = low if threshold is None else threshold
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0], threshold
    return (lambda v, ts=tuple(tests): all(t(v) for t in ts)), threshold


def _tiers(spec: Mapping[str, Any], build: Callable[[Mapping[str, Any], str], Any],
           what: str) -> list[tuple[str, Any]]:
    tiers = []
    has_tiers = bool(spec.get("_tiers_given"))
    for tier in spec["tiers"]:
        index = tier.get("_index", 0)
        prefix = f"tiers.{index}." if has_tiers else ""
        built = build(tier, prefix)
        if built is None:
            raise RuleSpecError(f"needs a condition: {what}", key=f"tiers.{index}" if has_tiers else None)
        tiers.append((tier["severity"], built))
    return tiers


def _check_tier_order(spec: Mapping[str, Any], key: str, severe_is_lower: bool) -> None:
    """With tiers all on one key (all ``below``, say), a more severe tier needs the further threshold:
    the most severe matching tier wins, so otherwise the less severe tier can never apply."""
    tiers = spec["tiers"]  # highest severity first
    for i, tier in enumerate(tiers):
        for higher in tiers[:i]:
            if severity_rank(higher["severity"]) <= severity_rank(tier["severity"]):
                continue
            mine, theirs = float(tier[key]), float(higher[key])
            if (theirs >= mine) if severe_is_lower else (theirs <= mine):
                where = f"tiers.{tier.get('_index', 0)}.{key}" if spec.get("_tiers_given") else key
                raise RuleSpecError(
                    f"tier {tier['severity']} ({key} {mine:g}) can never apply: {higher['severity']} "
                    f"({key} {theirs:g}) matches first; give the more severe tier the "
                    f"{'lower' if severe_is_lower else 'higher'} threshold", key=where)


def _check_recover_side(recover: Any, key: str, limit: float) -> None:
    """``recover_when`` of a rule on ``below`` (``above``) must be ``above`` (``below``) a value at
    least as healthy as the condition's limit: on the wrong side a firing alert never resolves."""
    if not isinstance(recover, Mapping):
        return
    other = "above" if key == "below" else "below"
    if key in recover:
        raise RuleSpecError(f"a rule on '{key}' recovers on the other side: use recover_when: "
                            f"{{{other}: X}} with X {'at least' if other == 'above' else 'at most'} {limit:g}",
                            key=f"recover_when.{key}")
    if other in recover:
        value = float(recover[other])
        if (value < limit) if other == "above" else (value > limit):
            raise RuleSpecError(f"must be {'at least' if other == 'above' else 'at most'} {limit:g} (the "
                                f"condition's {key}), or it adds no hysteresis", key=f"recover_when.{other}")


def compile_threshold(spec: Mapping[str, Any]) -> Check:
    metric = spec["metric"]
    tiers = [(sev, pred, thr) for sev, (pred, thr) in
             _tiers(spec, _comparison, "one of above, below, inside, outside")]
    lowest_threshold = tiers[-1][2]
    recover = spec.get("recover_when")
    recover_pred = _comparison(recover, "recover_when.")[0] if isinstance(recover, Mapping) else None

    # a cheap test that no tier can match (a healthy value), before calling any predicate:
    # below-only tiers cannot match at or above the highest "below", above-only at or under the lowest
    conditions = list(spec["tiers"])
    if all(set(t) & {"above", "below", "inside", "outside"} == {"below"} for t in conditions):
        floor, ceiling = max(float(t["below"]) for t in conditions), None
        _check_tier_order(spec, "below", severe_is_lower=True)
        _check_recover_side(recover, "below", floor)
    elif all(set(t) & {"above", "below", "inside", "outside"} == {"above"} for t in conditions):
        floor, ceiling = None, min(float(t["above"]) for t in conditions)
        _check_tier_order(spec, "above", severe_is_lower=False)
        _check_recover_side(recover, "above", ceiling)
    else:
        floor = ceiling = None

    def one(entity: Entity, all_unknown: bool, want_inactive: bool) -> Result | None:
        """The result for one entity: active, or (when wanted) inactive or unknown."""
        value = entity.metrics.get(metric)
        if all_unknown or (entity.unknown and entity.is_unknown(metric)):
            return Result(entity.key, entity.labels, unknown=True, value=value) if want_inactive else None
        if value is None:  # the entity does not report it (a site without APs): not true
            return Result(entity.key, entity.labels, threshold=lowest_threshold) if want_inactive else None
        matched = next((tier for tier in tiers if tier[1](value)), None)
        if matched is not None:
            return Result(entity.key, entity.labels, matched[0], value=value, threshold=matched[2],
                          score=value, metrics=entity.metrics)
        if not want_inactive:
            return None
        return Result(entity.key, entity.labels, None, value=value, threshold=lowest_threshold, score=value,
                      metrics=entity.metrics, recovered=recover_pred(value) if recover_pred else None)

    def check(ctx: RuleContext) -> Iterator[Result]:
        all_unknown = ctx.count_unknown(metric)
        entities = ctx.entities()
        if ctx.complete:
            for entity in entities:
                result = one(entity, all_unknown, True)
                if result is not None:
                    yield result
            return
        tracked = ctx.tracked_subjects
        # the common case, healthy values, is filtered out in one comprehension per rule
        if all_unknown:
            candidates: list[Entity] = []
        elif floor is not None:
            candidates = [e for e in entities if (v := e.metrics.get(metric)) is not None and v < floor]
        elif ceiling is not None:
            candidates = [e for e in entities if (v := e.metrics.get(metric)) is not None and v > ceiling]
        else:
            candidates = [e for e in entities if e.metrics.get(metric) is not None]
        for entity in candidates:
            if entity.key not in tracked:
                result = one(entity, False, False)
                if result is not None:
                    yield result
        for subject in tracked:  # existing alerts: active, inactive or unknown, always a result
            entity = ctx.in_scope(subject)
            if entity is not None:
                yield one(entity, all_unknown, True)  # type: ignore[misc]

    return check


THRESHOLD = RuleKind(
    name="threshold",
    compile=compile_threshold,
    description="a metric above, below, inside or outside a range, with severity tiers",
    condition_keys=("above", "below", "inside", "outside"),
    default_scope="site",
    schema={"required": ["metric"], "properties": {
        "metric": {"type": "string", "minLength": 1},
        "above": _NUMBER, "below": _NUMBER, "inside": _RANGE, "outside": _RANGE}},
)


# --- change --------------------------------------------------------------------------------------------

def _change_condition(cond: Mapping[str, Any], prefix: str = "") -> tuple[Predicate, float] | None:
    if "drop" in cond and "rise" in cond:
        raise RuleSpecError("use drop or rise, not both", key=f"{prefix}rise")
    if "drop" in cond:
        amount = float(cond["drop"])
        return (lambda score, x=amount: score <= -x), amount
    if "rise" in cond:
        amount = float(cond["rise"])
        return (lambda score, x=amount: score >= x), amount
    return None


def compile_change(spec: Mapping[str, Any]) -> Check:
    metric, scope = spec["metric"], spec["scope"]
    percent = spec.get("unit", "absolute") == "percent"
    baseline_spec = spec.get("baseline")
    if baseline_spec is not None and "offset" in spec:
        raise RuleSpecError("use offset or baseline, not both", key="baseline")
    offset = spec_duration(spec, "offset", "1d")
    assert offset is not None
    window = end_offset = None
    if baseline_spec is not None:
        window = spec_duration(baseline_spec, "window", None)
        end_offset = spec_duration(baseline_spec, "end_offset", "0s") or timedelta(0)
        if not window:
            raise RuleSpecError("baseline needs a window, e.g. {window: 7d}", key="baseline")
    tolerance = spec_duration(spec, "tolerance", None)
    if tolerance is None:
        tolerance = min(timedelta(minutes=90), offset / 2)
    if baseline_spec is None and tolerance >= offset:
        raise RuleSpecError("tolerance must be shorter than the offset", key="tolerance")
    min_baseline = spec.get("min_baseline")
    min_samples = int((baseline_spec or {}).get("min_samples", 3))
    tiers = [(sev, pred, amount) for sev, (pred, amount) in _tiers(spec, _change_condition, "drop or rise")]
    for key in ("drop", "rise"):
        if all(key in t for t in spec["tiers"]):
            _check_tier_order(spec, key, severe_is_lower=False)
    direction = -1 if "drop" in spec["tiers"][-1] else 1
    smallest = min(amount for _, _, amount in tiers)
    sticky = bool(spec.get("recover_to_baseline", True))
    recover = spec.get("recover_when") if isinstance(spec.get("recover_when"), Mapping) else {}
    within = float(next((recover[k] for k in ("within", "drop", "rise") if k in recover), smallest / 2))
    since = f"the {format_duration(window)} average" if window else f"{format_duration(offset)} ago"
    reference = f"the {format_duration(window)} average" if window else f"a sample from {format_duration(offset)} ago"

    guard = float(min_baseline) if min_baseline is not None else None
    only_drops = all("drop" in t for t in spec["tiers"])
    only_rises = all("rise" in t for t in spec["tiers"])
    extra = {"since": since, "unit": "percent" if percent else "absolute"}
    stale_extra = {**extra, "since": f"{since} before the drop" if window else "before the drop"}

    def one(ctx: RuleContext, entity: Entity, refs: Mapping[str, float], all_unknown: bool,
            want_inactive: bool) -> Result | None:
        """The result for one entity: active, or (when wanted) inactive or unknown."""
        key = entity.key
        value = entity.metrics.get(metric)
        if value is None or all_unknown or (entity.unknown and entity.is_unknown(metric)):
            # a missing value never resolves a change alert
            return Result(key, entity.labels, unknown=True, value=value) if want_inactive else None
        stored = None
        texts = extra
        if sticky:
            prev = ctx.previous(key)
            if prev is not None and prev.state in ("pending", "firing") and prev.baseline is not None:
                stored = prev.baseline
                if prev.pending_since is not None and ctx.now - prev.pending_since > tolerance:
                    # the offset has moved past the drop: "1d ago" would now name a degraded sample
                    texts = stale_extra
        base = stored if stored is not None else refs.get(key)
        if base is None:
            return Result(key, entity.labels, unknown=True, value=value) if want_inactive else None
        if stored is None and guard is not None and base < guard:
            return Result(key, entity.labels, None, value=value, baseline=base) if want_inactive else None
        if percent:
            if base == 0:
                return None
            score = (value - base) / abs(base) * 100.0
        else:
            score = value - base
        matched = next((tier for tier in tiers if tier[1](score)), None)
        if matched is not None:
            return Result(key, entity.labels, matched[0], value=value, threshold=matched[2], baseline=base,
                          score=score, metrics=entity.metrics, extra=texts)
        if not want_inactive:
            return None
        recovered = None
        if stored is not None:  # back toward the level it dropped (or rose) from?
            recovered = score >= -within if direction < 0 else score <= within
        return Result(key, entity.labels, None, value=value, threshold=smallest, baseline=base, score=score,
                      metrics=entity.metrics, recovered=recovered, extra=texts)

    def check(ctx: RuleContext) -> Iterator[Result]:
        now = ctx.now
        if not ctx.entities() and not ctx.tracked():
            return  # nothing in scope (no sites of this kind, say): nothing to say either
        start = ctx.history_start(metric)
        if window is not None:
            reference_at = now - end_offset - window
            sufficient = start is not None and start <= reference_at + tolerance
            # the window ends before the current sample (already stored by the time rules run)
            window_end = now - max(end_offset, timedelta(seconds=1))
            refs_raw = ctx.window_mean(metric, reference_at, window_end) if sufficient else {}
            refs = {k: mean for k, (mean, count) in refs_raw.items() if count >= min_samples}
        else:
            reference_at = now - offset
            sufficient = start is not None and start <= reference_at + tolerance
            refs = ctx.values_at(metric, reference_at, tolerance) if sufficient else {}
        if not sufficient:
            have = f"history starts {start.isoformat()}" if start else "no history yet"
            ctx.note(f"insufficient history for {metric}: needs {reference} ({have}); not evaluated",
                     "insufficient_history")
        all_unknown = ctx.count_unknown(metric)
        entities = ctx.entities()
        no_reference = 0
        if sufficient and len(refs) < len(entities):
            no_reference = sum(1 for e in entities if e.key not in refs and e.metrics.get(metric) is not None)
        if ctx.complete:
            for entity in entities:
                result = one(ctx, entity, refs, all_unknown, True)
                if result is not None:
                    yield result
        else:
            tracked = ctx.tracked_subjects
            # healthy entities are filtered out in one comprehension; the rest get the full logic
            if all_unknown or not refs:
                candidates: list[Entity] = []
            elif only_drops and not percent:
                candidates = [e for e in entities if (v := e.metrics.get(metric)) is not None
                              and (b := refs.get(e.key)) is not None and v - b <= -smallest]
            elif only_drops:
                candidates = [e for e in entities if (v := e.metrics.get(metric)) is not None
                              and (b := refs.get(e.key)) and (v - b) / abs(b) * 100.0 <= -smallest]
            elif only_rises and not percent:
                candidates = [e for e in entities if (v := e.metrics.get(metric)) is not None
                              and (b := refs.get(e.key)) is not None and v - b >= smallest]
            elif only_rises:
                candidates = [e for e in entities if (v := e.metrics.get(metric)) is not None
                              and (b := refs.get(e.key)) and (v - b) / abs(b) * 100.0 >= smallest]
            else:
                candidates = [e for e in entities if e.key in refs and e.metrics.get(metric) is not None]
            for entity in candidates:
                if entity.key not in tracked:
                    result = one(ctx, entity, refs, False, False)
                    if result is not None:
                        yield result
            for subject in tracked:  # existing alerts: always a result (active, inactive, unknown)
                entity = ctx.in_scope(subject)
                if entity is not None:
                    result = one(ctx, entity, refs, all_unknown, True)
                    if result is not None:
                        yield result
        if no_reference:
            ctx.note(f"{no_reference} {scope}(s) without {reference} for {metric} (new, or not collected "
                     "then): not evaluated", "insufficient_history")

    return check


CHANGE = RuleKind(
    name="change",
    compile=compile_change,
    description="the metric now against its value at an offset or a baseline mean; absolute or percent",
    condition_keys=("drop", "rise"),
    recover_schema={"within": {"type": "number", "minimum": 0}},
    default_scope="site",
    schema={"required": ["metric"], "properties": {
        "metric": {"type": "string", "minLength": 1},
        "offset": _DURATION,
        "baseline": {"type": "object", "additionalProperties": False, "required": ["window"],
                     "properties": {"window": _DURATION, "end_offset": _DURATION,
                                    "min_samples": {"type": "integer", "minimum": 1}}},
        "tolerance": _DURATION,
        "unit": {"enum": ["absolute", "percent"]},
        "drop": {"type": "number", "minimum": 0},
        "rise": {"type": "number", "minimum": 0},
        "min_baseline": _NUMBER,
        "recover_to_baseline": {"type": "boolean"}}},
)


# --- absence -------------------------------------------------------------------------------------------

def compile_absence(spec: Mapping[str, Any]) -> Check:
    scope = spec["scope"]
    severity = spec["tiers"][0]["severity"]
    absent_for = spec_duration(spec, "absent_for", None)
    assert absent_for is not None
    forget_after = spec_duration(spec, "forget_after", "7d")
    assert forget_after is not None
    if forget_after <= absent_for:
        raise RuleSpecError("forget_after must be longer than absent_for", key="forget_after")
    metric = spec.get("metric")
    lookback = spec_duration(spec, "lookback", "1d")
    assert lookback is not None
    threshold = absent_for.total_seconds()

    def entities_absent(ctx: RuleContext) -> Iterator[Result]:
        now = ctx.now
        present = {e.key for e in ctx.snapshot.entities if e.kind == scope}
        # only the entities missing for long enough come back from the store (not all 60,000)
        for record in ctx.entity_records(scope, seen_before=now - absent_for + timedelta(seconds=1)):
            if not ctx.matches(record.labels):
                continue
            age = 0.0 if record.key in present else (now - record.last_seen).total_seconds()
            if threshold <= age <= forget_after.total_seconds():
                yield Result(record.key, record.labels, severity, value=age, threshold=threshold,
                             extra={"last_seen": record.last_seen.isoformat(),
                                    "absent": format_duration(age)})
            elif ctx.wants(record.key):
                yield Result(record.key, record.labels, None, value=age, threshold=threshold)
        for subject, alert in ctx.tracked().items():
            if subject in present:  # back: resolve with an age of 0
                yield Result(subject, alert.labels, None, value=0.0, threshold=threshold)

    def metric_absent(ctx: RuleContext) -> Iterator[Result]:
        now = ctx.now
        recent = ctx.window_mean(metric, now - absent_for, now)
        before = ctx.window_mean(metric, now - lookback, now - absent_for)
        all_unknown = ctx.metric_unknown(scope, metric)
        for entity in ctx.entities():
            if metric in entity.metrics or entity.key in recent:
                if ctx.wants(entity.key):
                    yield Result(entity.key, entity.labels, None, value=entity.metrics.get(metric))
            elif _unknown(entity, metric, all_unknown):
                ctx.unknown_count += 1
                if ctx.wants(entity.key):
                    yield Result(entity.key, entity.labels, unknown=True)
            elif entity.key in before:
                yield Result(entity.key, entity.labels, severity, threshold=threshold,
                             extra={"absent": format_duration(absent_for)})
            elif ctx.wants(entity.key):
                yield Result(entity.key, entity.labels, None)

    def check(ctx: RuleContext) -> Iterator[Result]:
        if ctx.kind_unknown(scope):
            # the inventory itself failed: nobody can tell who is missing; freeze, never alert
            ctx.note(f"{scope} inventory unknown this cycle (collection failed): absence not evaluated",
                     "unknown")
            for subject, alert in ctx.tracked().items():
                yield Result(subject, alert.labels, unknown=True)
            return
        yield from (metric_absent(ctx) if metric else entities_absent(ctx))

    return check


ABSENCE = RuleKind(
    name="absence",
    compile=compile_absence,
    description="an entity not seen for a duration, or a metric that stopped being reported",
    default_scope="device",
    schema={"required": ["absent_for"], "properties": {
        "absent_for": _DURATION, "forget_after": _DURATION, "lookback": _DURATION,
        "metric": {"type": "string", "minLength": 1}}},
)


# --- event ---------------------------------------------------------------------------------------------

def compile_event(spec: Mapping[str, Any]) -> Check:
    sources = set(_names(spec.get("source")))
    types = _names(spec.get("types", spec.get("type")))
    severities = set(_names(spec.get("severities")))
    min_rank = severity_rank(spec["min_severity"]) if "min_severity" in spec else -1
    within = spec_duration(spec, "within", None)
    fixed = spec.get("severity")  # none given: each alert takes its events' highest severity
    by_type = dict(spec.get("severity_by_type") or {})
    by_group = dict(spec.get("severity_by_group") or {})

    def severity_of(event: Any) -> str:
        """The event's severity after this rule's overrides: its type (first matching glob), then
        its alarm group, then what the collector said."""
        for pattern, severity in by_type.items():
            if fnmatch.fnmatchcase(event.type, pattern):
                return severity
        group = event.labels.get("group")
        if group is not None and group in by_group:
            return by_group[group]
        return event.severity

    def wanted(event: Any, ctx: RuleContext) -> bool:
        if sources and event.source not in sources:
            return False
        if types and not any(fnmatch.fnmatchcase(event.type, t) for t in types):
            return False
        severity = severity_of(event)
        if severities and severity not in severities:
            return False
        if severity_rank(severity) < min_rank:
            return False
        if within is not None and event.timestamp < ctx.now - within:
            return False
        return ctx.matches(event.labels)

    def source_unknown(ctx: RuleContext) -> bool:
        """Did the collection of these events fail this cycle? (Then no news is not good news.)"""
        if ctx.kind_unknown("event"):
            return True
        return any(ctx.metric_unknown("event", source) for source in sources)

    def check(ctx: RuleContext) -> Iterator[Result]:
        groups: dict[str, list[Any]] = {}
        for event in ctx.snapshot.events:
            if wanted(event, ctx):
                ident = identity_of(event.labels)
                subject = "|".join([*(f"{k}={v}" for k, v in ident.items()), f"type={event.type}"])
                groups.setdefault(subject, []).append(event)
        for subject, events in groups.items():
            latest = max(events, key=lambda e: e.timestamp)
            labels = {**latest.labels, "event_type": latest.type, "event_source": latest.source}
            severity = fixed or max((severity_of(e) for e in events), key=severity_rank)
            if severity not in SEVERITIES:
                severity = "info"
            count = sum(e.count for e in events)
            yield Result(subject, labels, severity, value=float(count),
                         identity={**identity_of(latest.labels), "event_type": latest.type},
                         extra={"text": latest.text, "event_id": latest.id, "count": count,
                                "first_at": min(e.timestamp for e in events).isoformat(),
                                "last_at": latest.timestamp.isoformat()})
        unknown = source_unknown(ctx)
        for subject, alert in ctx.tracked().items():
            if subject not in groups:  # gone: resolved, unless its source failed this cycle
                yield Result(subject, alert.labels, None, value=0.0,
                             identity={**identity_of(alert.labels),
                                       "event_type": alert.labels.get("event_type", "")},
                             unknown=unknown)

    return check


EVENT = RuleKind(
    name="event",
    compile=compile_event,
    description="Mist alarms and events by source, type and severity",
    default_scope="event",
    schema={"properties": {
        "source": _NAMES, "types": _NAMES, "type": {"type": "string"},
        "severities": {"type": "array", "items": {"enum": list(SEVERITIES)}, "minItems": 1},
        "min_severity": {"enum": list(SEVERITIES)}, "within": _DURATION,
        "severity_by_type": {"type": "object", "additionalProperties": {"enum": list(SEVERITIES)},
                             "x-message": "maps event types (globs) to severities"},
        "severity_by_group": {"type": "object", "additionalProperties": {"enum": list(SEVERITIES)},
                              "x-message": "maps alarm groups (infrastructure, marvis, security) to severities"}}},
)


# --- correlation ---------------------------------------------------------------------------------------

def _correlation_refs(spec: Mapping[str, Any]) -> list[str]:
    return [*_names(spec.get("all_of")), *_names(spec.get("any_of")), *_names(spec.get("unless"))]


def compile_correlation(spec: Mapping[str, Any]) -> Check:
    all_of, any_of, unless = (_names(spec.get(k)) for k in ("all_of", "any_of", "unless"))
    if not all_of and not any_of:
        raise RuleSpecError("needs all_of or any_of (a list of rule ids)", key="all_of")
    if spec["id"] in _correlation_refs(spec):
        raise RuleSpecError("a correlation cannot reference itself", key="all_of")
    join = _names(spec.get("join")) or ["site_id"]
    within = spec_duration(spec, "within", "0s") or timedelta(0)
    require = spec.get("require", "condition")
    severity = spec["tiers"][0]["severity"]

    def members(ctx: RuleContext, rule_id: str) -> dict[tuple[str, ...], list[tuple[str, Mapping[str, str], str]]]:
        out: dict[tuple[str, ...], list[tuple[str, Mapping[str, str], str]]] = {}
        current = {f.key: f for f in ctx.findings(rule_id)}

        def add(key: str, labels: Mapping[str, str], summary: str) -> None:
            group = tuple(labels.get(j) for j in join)
            if None not in group:
                entries = out.setdefault(group, [])  # type: ignore[arg-type]
                if all(k != key for k, _, _ in entries):
                    entries.append((key, labels, summary))

        for alert in ctx.alerts(rule_id):
            recent = alert.last_true_at is not None and ctx.now - alert.last_true_at <= within
            if require == "firing":
                ok = alert.state == "firing" and (alert.key in current or recent)
            else:
                ok = recent and alert.state in ("pending", "firing")
            if ok:
                found = current.get(alert.key)
                add(alert.key, found.labels if found else alert.labels,
                    found.summary if found else alert.summary)
        if require != "firing":
            for finding in current.values():
                add(finding.key, finding.labels, finding.summary)
        return out

    def check(ctx: RuleContext) -> Iterator[Result]:
        held = {r: members(ctx, r) for r in dict.fromkeys([*all_of, *any_of, *unless])}
        groups = {g for r in (*all_of, *any_of) for g in held[r]}
        emitted = set()
        for group in sorted(groups):
            if not all(group in held[r] for r in all_of):
                continue
            if any_of and not any(group in held[r] for r in any_of):
                continue
            if any(group in held[r] for r in unless):
                continue
            causes = [m for r in (*all_of, *any_of) for m in held[r].get(group, [])]
            shared = dict(causes[0][1])
            for _, labels, _ in causes[1:]:
                shared = {k: v for k, v in shared.items() if labels.get(k) == v}
            identity = dict(zip(join, group, strict=True))
            subject = "|".join(f"{k}={v}" for k, v in identity.items())
            emitted.add(subject)
            cause_rules = sorted({r for r in (*all_of, *any_of) if group in held[r]})
            yield Result(subject, {**shared, **identity}, severity, value=float(len(causes)),
                         identity=identity, causes=tuple(k for k, _, _ in causes),
                         extra={"cause_rules": cause_rules,
                                "cause_summaries": [s for _, _, s in causes]})
        for subject, alert in ctx.tracked().items():
            if subject in emitted:
                continue
            identity = {j: alert.labels.get(j, "") for j in join}
            unknown = any(ctx.rule_unknown(r) for r in (*all_of, *any_of, *unless))
            yield Result(subject, alert.labels, None, value=0.0, identity=identity, unknown=unknown)

    return check


CORRELATION = RuleKind(
    name="correlation",
    compile=compile_correlation,
    description="all_of / any_of / unless over other rules, joined on labels, within a window",
    references=_correlation_refs,
    default_scope="site",
    schema={"properties": {
        "all_of": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "any_of": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "unless": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "join": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "within": _DURATION,
        "require": {"enum": ["condition", "firing"]}},
        "anyOf": [{"required": ["all_of"]}, {"required": ["any_of"]}],
        "x-message": "a correlation needs all_of or any_of"},
)


# --- expression ----------------------------------------------------------------------------------------

def compile_expression(spec: Mapping[str, Any]) -> Check:
    if not isinstance(spec.get("when"), str):
        raise RuleSpecError("an expression rule needs a when: expression", key="when")
    severity = spec["tiers"][0]["severity"]
    metric = spec.get("metric")

    def check(ctx: RuleContext) -> Iterator[Result]:
        # every entity is a candidate; the evaluator applies `when:` and keeps the true ones
        for entity in ctx.entities():
            value = entity.metrics.get(metric) if metric else None
            yield Result(entity.key, entity.labels, severity, value=value, metrics=entity.metrics)

    return check


EXPRESSION = RuleKind(
    name="expression",
    compile=compile_expression,
    description="only a sandboxed when: expression over metrics and labels",
    default_scope="site",
    schema={"required": ["when"], "properties": {"metric": {"type": "string", "minLength": 1}}},
)

BUILTIN_KINDS = (THRESHOLD, CHANGE, ABSENCE, EVENT, CORRELATION, EXPRESSION)


@hookimpl
def mistwatch_rule_kinds() -> Iterator[RuleKind]:
    yield from BUILTIN_KINDS


def builtin_kinds() -> dict[str, RuleKind]:
    """The built-in kinds by name, with the analytics kinds (anomaly, forecast, flapping, a built-in
    plugin of their own), without a plugin host (tests, tools)."""
    from mistwatch.plugins.analytics import ANALYTICS_KINDS

    return {k.name: k for k in (*BUILTIN_KINDS, *ANALYTICS_KINDS)}
