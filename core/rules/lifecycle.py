"""The alert state machine: findings of one evaluation + the previous states -> the new states.

Identity is the rule id plus identity labels (``Finding.key``), never values. States::

    inactive --true--> pending --true for `for` (time or cycles)--> firing
    pending --false--> inactive                          (silently: nothing was announced)
    firing --false and recovered, and `keep_firing_for` elapsed--> resolved
    firing --false but not recovered (recover_when / a change rule's baseline)--> firing (hysteresis)
    resolved --true--> pending/firing                    (a new episode)
    resolved --24 h--> deleted

Unknown data (the collection failed) freezes an alert: no transition, no resolve, no fire. A severity
change is a transition too (from firing to firing). All state is in the Alert objects the store
keeps, so one-shot ``--now`` runs and daemon cycles behave the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mistwatch.model import Alert, Snapshot, severity_rank
from mistwatch.rules.evaluator import Evaluation, Finding, Note, evaluate, identity_of
from mistwatch.store.records import Transition

if TYPE_CHECKING:
    from mistwatch.rules.loader import Rule, RuleSet
    from mistwatch.store.database import Store

#: How long a resolved alert is kept (state "resolved") so notifiers and reports can announce it.
RESOLVED_RETENTION = timedelta(hours=24)


@dataclass
class RulesOutcome:
    """What one rules stage produced. ``alerts``: every alert not inactive after this cycle
    (pending, firing, resolved); ``findings``: the active findings; ``notes``: insufficient history,
    unknown data, rule errors."""

    alerts: list[Alert] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    evaluated_at: datetime | None = None
    duration_s: float = 0.0

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.state == "firing"]


def _due(rule: Rule | None, alert: Alert, now: datetime) -> bool:
    """Has the condition held long enough to fire?"""
    if rule is None:
        return True
    if rule.for_cycles:
        return alert.true_count >= rule.for_cycles
    return alert.pending_since is not None and now - alert.pending_since >= rule.for_duration


def _apply(alert: Alert, finding: Finding, now: datetime) -> None:
    """Copy what the finding says into the alert (labels, value, rendered texts)."""
    alert.labels = dict(finding.labels)
    alert.value = finding.value
    alert.threshold = finding.threshold
    alert.baseline = finding.baseline
    if finding.severity is not None:  # texts are rendered while the condition holds, then kept
        if finding.summary:
            alert.summary = finding.summary
        alert.description = finding.description
        alert.recommendation = finding.recommendation
    if finding.causes:
        alert.causes = tuple(finding.causes)
    alert.annotations = {**alert.annotations, **_annotations(finding)}
    alert.annotations.pop("unknown_since", None)
    alert.last_eval_at = now


def _annotations(finding: Finding) -> dict[str, Any]:
    extra = {k: v for k, v in finding.extra.items() if _jsonable(v)}
    return {"subject": finding.subject, **extra}


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def _copy(alert: Alert) -> Alert:
    return dataclasses.replace(alert, labels=dict(alert.labels), annotations=dict(alert.annotations))


class _Recorder:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.transitions: list[Transition] = []

    def __call__(self, alert: Alert, from_state: str, to_state: str) -> None:
        self.transitions.append(Transition(alert.key, alert.rule_id, self.now, from_state, to_state,
                                           alert.severity, alert.value))


def _step(prev: Alert | None, finding: Finding | None, rule: Rule | None, now: datetime,
          record: _Recorder) -> Alert | None:
    """One alert's next state. ``finding`` None: the condition is false and nothing is known of
    the subject this cycle (it left the scope)."""
    if finding is not None and finding.unknown:
        if prev is None:
            return None
        alert = _copy(prev)  # frozen: no transition, no counters
        alert.annotations.setdefault("unknown_since", now.isoformat())
        if alert.state == "resolved" and alert.resolved_at and now - alert.resolved_at >= RESOLVED_RETENTION:
            alert.state = "inactive"
        return alert

    active = finding is not None and finding.severity is not None
    state = prev.state if prev is not None else "inactive"

    if state in ("inactive", "resolved"):
        if not active:
            if prev is None:
                return None
            alert = _copy(prev)
            if state == "resolved" and alert.resolved_at and now - alert.resolved_at >= RESOLVED_RETENTION:
                alert.state = "inactive"  # the store deletes it
            elif state == "inactive":
                return None
            return alert
        assert finding is not None and finding.severity is not None
        alert = Alert(key=finding.key, rule_id=finding.rule_id, labels={}, state="pending",
                      severity=finding.severity, pending_since=now, last_true_at=now, true_count=1)
        _apply(alert, finding, now)
        if _due(rule, alert, now):
            alert.state, alert.firing_since = "firing", now
        record(alert, state, alert.state)
        return alert

    alert = _copy(prev) if prev is not None else None
    assert alert is not None
    if state == "pending":
        if not active:
            if finding is not None:
                _apply(alert, finding, now)
            alert.state = "inactive"
            record(alert, "pending", "inactive")
            return alert
        assert finding is not None and finding.severity is not None
        _apply(alert, finding, now)
        alert.true_count += 1
        alert.last_true_at = now
        old_severity, alert.severity = alert.severity, finding.severity
        if _due(rule, alert, now):
            alert.state, alert.firing_since = "firing", now
            record(alert, "pending", "firing")
        elif old_severity != alert.severity:
            record(alert, "pending", "pending")
        return alert

    # firing
    if active:
        assert finding is not None and finding.severity is not None
        _apply(alert, finding, now)
        alert.true_count += 1
        alert.last_true_at = now
        alert.annotations.pop("keep_firing_until", None)
        if finding.severity != alert.severity:
            alert.severity = finding.severity
            record(alert, "firing", "firing")
        return alert
    recovered = finding.recovered if finding is not None else True
    if finding is not None:
        _apply(alert, finding, now)
    else:
        alert.value = None
        alert.last_eval_at = now
    if not recovered:
        # in the hysteresis band: the condition no longer holds, but recovery has not happened either
        alert.last_true_at = now
        alert.annotations["held"] = "not recovered yet"
        return alert
    alert.annotations.pop("held", None)
    keep = rule.keep_firing_for if rule is not None else timedelta(0)
    if keep and alert.last_true_at is not None and now - alert.last_true_at < keep:
        alert.annotations["keep_firing_until"] = (alert.last_true_at + keep).isoformat()
        return alert
    alert.annotations.pop("keep_firing_until", None)
    alert.state, alert.resolved_at = "resolved", now
    record(alert, "firing", "resolved")
    return alert


def advance(previous: Mapping[str, Alert], evaluation: Evaluation, ruleset: RuleSet,
            now: datetime) -> tuple[list[Alert], list[Transition]]:
    """The next alert states and the transitions that led there.

    Returns every alert that exists after this cycle (pending, firing, resolved, including unchanged
    and frozen ones) plus the ones to delete, with state ``inactive`` (a pending alert that cleared,
    a resolved one past its 24 h). ``Store.save_alerts`` takes the list as is.
    """
    rules = ruleset.by_id
    record = _Recorder(now)
    out: list[Alert] = []
    seen: set[str] = set()
    for finding in evaluation.findings:
        if finding.key in seen:  # two subjects with one identity: the first wins
            continue
        seen.add(finding.key)
        alert = _step(previous.get(finding.key), finding, rules.get(finding.rule_id), now, record)
        if alert is not None:
            out.append(alert)
    for key, prev in previous.items():
        if key in seen:
            continue
        rule = rules.get(prev.rule_id)
        if rule is not None and rule.enabled and prev.rule_id in evaluation.frozen_rules:
            alert = _step(prev, _unknown_finding(prev), rule, now, record)
        elif rule is None or not rule.enabled:
            alert = _retire(prev, now, record)
        else:
            alert = _step(prev, None, rule, now, record)
        if alert is not None:
            out.append(alert)
    return out, record.transitions


def _unknown_finding(alert: Alert) -> Finding:
    return Finding(key=alert.key, rule_id=alert.rule_id, labels=alert.labels, severity=None, unknown=True)


def _retire(prev: Alert, now: datetime, record: _Recorder) -> Alert:
    """The rule was removed or disabled: resolve what fired (so it is announced), drop the rest."""
    alert = _copy(prev)
    if alert.state == "firing":
        alert.state, alert.resolved_at = "resolved", now
        alert.annotations["resolved_because"] = "rule removed or disabled"
        record(alert, "firing", "resolved")
    elif alert.state == "pending":
        alert.state = "inactive"
        record(alert, "pending", "inactive")
    elif alert.resolved_at is None or now - alert.resolved_at >= RESOLVED_RETENTION:
        alert.state = "inactive"
    return alert


def superseded(alerts: Sequence[Alert], ruleset: RuleSet) -> dict[str, Alert]:
    """Firing alerts replaced by a more telling firing alert, as {alert key: the alert replacing it}.

    A rule's ``supersedes: [rule ids]`` names the rules it replaces. A firing alert of such a rule
    supersedes the firing alerts of those rules on the same entity: every identity label of the
    superseding alert (``site_id`` for a site or a correlation joined on sites, ``device_id`` too for
    a device) has the same value in the other alert. It never supersedes a more severe alert (a
    major drop does not hide a critical level), and two rules that name each other cancel out, so
    one of them always notifies. Pure; the superseded alerts stay firing (reports, listings)."""
    rules = ruleset.by_id
    firing = sorted((a for a in alerts if a.state == "firing"), key=lambda a: (-severity_rank(a.severity), a.key))
    by_rule: dict[str, list[Alert]] = {}
    for a in firing:
        by_rule.setdefault(a.rule_id, []).append(a)
    out: dict[str, Alert] = {}
    for source in firing:
        rule = rules.get(source.rule_id)
        if rule is None or not rule.supersedes:
            continue
        identity = identity_of(source.labels)
        for target_rule in rule.supersedes:
            other = rules.get(target_rule)
            if other is not None and source.rule_id in other.supersedes:
                continue
            for target in by_rule.get(target_rule, ()):
                if (target.key not in out and target.key != source.key
                        and severity_rank(target.severity) <= severity_rank(source.severity)
                        and all(target.labels.get(k) == v for k, v in identity.items())):
                    out[target.key] = source
    return out


def mark_superseded(alerts: Sequence[Alert], ruleset: RuleSet) -> None:
    """Record on each alert whether it is superseded this cycle (``superseded_by``: the key of the
    alert replacing it, ``superseded_by_rule``: its rule), so notifications hold it back and reports
    and listings say why."""
    replaced = superseded(alerts, ruleset)
    for alert in alerts:
        _mark(alert, "superseded_by", replaced.get(alert.key))


def mark_inhibited(alerts: Sequence[Alert], by: Mapping[str, Alert]) -> None:
    """Record on each alert whether the config's ``inhibit:`` rules mute it this cycle
    (``inhibited_by``: the key of the muting alert, ``inhibited_by_rule``: its rule), so reports and
    listings say why it sent nothing. ``by`` is {muted alert key: the alert muting it}, computed by
    the notification settings (which this stage may not import: the engine passes it in)."""
    for alert in alerts:
        _mark(alert, "inhibited_by", by.get(alert.key) if alert.state == "firing" else None)


def _mark(alert: Alert, name: str, source: Alert | None) -> None:
    """``annotations[name]``: the key of ``source``, and ``[name + "_rule"]`` its rule; neither without one."""
    if source is None:
        alert.annotations.pop(name, None)
        alert.annotations.pop(f"{name}_rule", None)
    else:
        alert.annotations[name] = source.key
        alert.annotations[f"{name}_rule"] = source.rule_id


#: An alert that fired at about this local time of day (within RECURRING_WITHIN) on at least
#: RECURRING_DAYS of the last RECURRING_LOOKBACK days is labelled ``recurring=true``.
RECURRING_DAYS = 3
RECURRING_LOOKBACK = timedelta(days=7)
RECURRING_WITHIN = timedelta(minutes=45)


def _local(at: datetime, tz: str | None) -> datetime:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return at.astimezone(ZoneInfo(tz)) if tz else at
    except (ZoneInfoNotFoundError, ValueError):
        return at


def mark_recurring(alerts: list[Alert], transitions: list[Transition], store: Any, now: datetime) -> None:
    """Label ``recurring=true`` the alerts that start firing now at about the same local time of day
    (the ``timezone`` label, else UTC) as they did on at least 3 of the last 7 days: a backup window,
    a nightly job, a school bell, rather than a new incident. Decided when an episode starts (one
    transitions query per newly firing alert) and kept, in the annotations, while it fires."""
    started = {t.alert_key for t in transitions if t.to_state == "firing" and t.from_state != "firing"}
    for alert in alerts:
        if alert.key in started:
            alert.annotations.pop("recurring", None)
            tz = alert.labels.get("timezone")
            here = _local(now, tz)
            minutes = here.hour * 60 + here.minute
            days = set()
            for t in store.transitions(alert.key, since=now - RECURRING_LOOKBACK):
                if t.to_state != "firing" or t.from_state == "firing" or t.at >= now:
                    continue
                then = _local(t.at, tz)
                apart = abs(then.hour * 60 + then.minute - minutes)
                if min(apart, 24 * 60 - apart) <= RECURRING_WITHIN.total_seconds() / 60 and then.date() != here.date():
                    days.add(then.date())
            if len(days) >= RECURRING_DAYS:
                alert.annotations["recurring"] = (f"also fired around {here:%H:%M} on {len(days)} of the last "
                                                  f"{RECURRING_LOOKBACK.days} days")
        if alert.state == "firing" and "recurring" in alert.annotations:
            alert.labels = {**alert.labels, "recurring": "true"}


def run_rules(store: Store, ruleset: RuleSet, snapshot: Snapshot, now: datetime, *,
              dry_run: bool = False,
              inhibit: Callable[[Sequence[Alert]], Mapping[str, Alert]] | None = None) -> RulesOutcome:
    """Evaluate against the store's history and alert states, advance the states, save them.

    ``dry_run`` computes everything and saves nothing. ``inhibit(alerts)`` returns {muted alert key:
    the alert muting it} under the config's ``inhibit:`` rules; it is recorded on the alerts
    (:func:`mark_inhibited`) before they are saved, so the report and ``mistwatch alerts`` show it.
    """
    previous = store.load_alerts()
    evaluation = evaluate(ruleset, snapshot, store, now, alerts=previous)
    alerts, transitions = advance(previous, evaluation, ruleset, now)
    mark_superseded(alerts, ruleset)
    if inhibit is not None:
        mark_inhibited(alerts, inhibit(alerts))
    mark_recurring(alerts, transitions, store, now)
    if not dry_run:
        store.save_alerts(alerts, transitions)
    return RulesOutcome(alerts=[a for a in alerts if a.state != "inactive"], transitions=transitions,
                        findings=evaluation.active, notes=evaluation.notes, evaluated_at=now,
                        duration_s=evaluation.duration_s)
