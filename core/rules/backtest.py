"""``mistwatch rules backtest``: replay stored history through rules, to see what they would have done.

For each step (the first stored cycle in every ``step`` of the window), a snapshot is rebuilt from the
stored samples at that time (every metric of every stored entity, with its current labels) and goes
through the same evaluator and lifecycle as a live cycle, with the alert states held in memory from
an empty start: the live alert states are never read or written and nothing is sent. The history the
rules read is the store itself, so change, anomaly and forecast rules see what they saw then (their
queries name their own times).

Limits, said in the report's notes: events (Mist alarms) are not stored, so event rules and
correlations that need them stay quiet; absence rules read entities' last_seen as of now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mistwatch.model import Alert, Entity, Snapshot
from mistwatch.rules.evaluator import evaluate
from mistwatch.rules.lifecycle import advance

if TYPE_CHECKING:
    from mistwatch.rules.loader import RuleSet
    from mistwatch.store.database import Store


@dataclass
class Episode:
    """One alert that would have fired: from ``fired_at`` until ``resolved_at`` (None: still firing)."""

    rule_id: str
    key: str
    site: str
    severity: str
    fired_at: datetime
    resolved_at: datetime | None = None
    summary: str = ""

    def overlaps(self, other: Episode) -> bool:
        end, other_end = self.resolved_at or datetime.max.replace(tzinfo=self.fired_at.tzinfo), \
            other.resolved_at or datetime.max.replace(tzinfo=self.fired_at.tzinfo)
        return self.key == other.key and self.fired_at <= other_end and other.fired_at <= end

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule_id, "key": self.key, "site": self.site, "severity": self.severity,
                "fired_at": self.fired_at.isoformat(),
                "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
                "summary": self.summary}


@dataclass
class RuleReplay:
    """What one rule would have done over the window."""

    rule_id: str
    kind: str
    episodes: list[Episode] = field(default_factory=list)
    #: notifications (a firing and a resolved announcement each count one) per UTC day
    per_day: dict[date, int] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return sorted({e.site for e in self.episodes if e.site})

    @property
    def notifications(self) -> int:
        return sum(self.per_day.values())

    def as_dict(self, days: int) -> dict[str, Any]:
        return {"kind": self.kind, "alerts": len(self.episodes), "notifications": self.notifications,
                "notifications_per_day": round(self.notifications / max(days, 1), 2),
                "per_day": {d.isoformat(): n for d, n in sorted(self.per_day.items())},
                "sites": self.sites, "episodes": [e.as_dict() for e in self.episodes]}


@dataclass
class Replay:
    start: datetime
    end: datetime
    steps: int = 0
    rules: dict[str, RuleReplay] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def days(self) -> int:
        return max(1, round((self.end - self.start) / timedelta(days=1)))

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "steps": self.steps,
                "days": self.days, "rules": {r: v.as_dict(self.days) for r, v in self.rules.items()},
                "notes": self.notes}


def snapshots(store: Store, start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """The first stored cycle time in each ``step`` of [start, end]."""
    chosen: list[datetime] = []
    for at in store.sample_times(start, end):
        if not chosen or at - chosen[-1] >= step:
            chosen.append(at)
    return chosen


def rebuild(store: Store, at: datetime, metrics: Sequence[str], labels: dict[str, tuple[str, dict[str, str]]],
            tolerance: timedelta) -> Snapshot:
    """The snapshot of time ``at`` as far as the store knows it: every entity with a sample then."""
    values: dict[str, dict[str, float]] = {}
    for metric in metrics:
        for key, value in store.values_at(metric, at, tolerance=tolerance).items():
            values.setdefault(key, {})[metric] = value
    entities = [Entity(key, labels[key][0], labels[key][1], found) for key, found in values.items() if key in labels]
    return Snapshot(taken_at=at, entities=entities)


def replay(store: Store, rulesets: Sequence[RuleSet], start: datetime, end: datetime, *,
           step: timedelta = timedelta(minutes=15), rule_id: str | None = None) -> list[Replay]:
    """Replay [start, end] through each rule set (same snapshots for all); one :class:`Replay` each."""
    times = snapshots(store, start, end, step)
    metrics = store.metric_names()
    labels = {r.key: (r.kind, r.labels) for r in store.entities()}
    results = [Replay(start, end, len(times)) for _ in rulesets]
    states: list[dict[str, Alert]] = [{} for _ in rulesets]
    open_episodes: list[dict[str, Episode]] = [{} for _ in rulesets]
    notes: list[dict[str, int]] = [{} for _ in rulesets]
    for ruleset, result in zip(rulesets, results, strict=True):
        for rule in ruleset.rules:
            if rule.enabled and (rule_id is None or rule.id == rule_id):
                result.rules[rule.id] = RuleReplay(rule.id, rule.kind)
            if rule.enabled and rule.kind in ("event",):
                result.notes.append(f"{rule.id}: events are not stored, so event rules cannot be replayed")
    for at in times:
        snapshot = rebuild(store, at, metrics, labels, tolerance=min(step / 2, timedelta(minutes=30)))
        for i, ruleset in enumerate(rulesets):
            evaluation = evaluate(ruleset, snapshot, store, at, alerts=states[i])
            new, transitions = advance(states[i], evaluation, ruleset, at)
            states[i] = {a.key: a for a in new if a.state != "inactive"}
            for note in evaluation.notes:
                if note.kind in ("error", "insufficient_history"):
                    notes[i][str(note)] = notes[i].get(str(note), 0) + 1
            for t in transitions:
                replayed = results[i].rules.get(t.rule_id)
                if replayed is None:
                    continue
                alert = states[i].get(t.alert_key)
                if t.to_state == "firing" and t.from_state != "firing":
                    episode = Episode(t.rule_id, t.alert_key, _site(alert), t.severity, at,
                                      summary=alert.summary if alert else "")
                    open_episodes[i][t.alert_key] = episode
                    replayed.episodes.append(episode)
                elif t.to_state == "resolved":
                    episode = open_episodes[i].pop(t.alert_key, None)
                    if episode is not None:
                        episode.resolved_at = at
                else:
                    continue
                replayed.per_day[at.date()] = replayed.per_day.get(at.date(), 0) + 1
    for result, counted in zip(results, notes, strict=True):
        result.notes.extend(f"{text} ({n} step(s))" for text, n in
                            sorted(counted.items(), key=lambda item: -item[1])[:20])
    return results


def _site(alert: Alert | None) -> str:
    if alert is None:
        return ""
    return alert.labels.get("site_name") or alert.labels.get("site_id") or ""


@dataclass
class Difference:
    rule_id: str
    only_before: list[Episode]
    only_after: list[Episode]
    before: int
    after: int

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule_id, "alerts_before": self.before, "alerts_after": self.after,
                "only_before": [e.as_dict() for e in self.only_before],
                "only_after": [e.as_dict() for e in self.only_after]}


def compare(before: Replay, after: Replay) -> list[Difference]:
    """Per rule id in either replay: the alerts only one version would have raised (an alert of the
    same identity overlapping in time counts as the same)."""
    out = []
    for rule_id in sorted({*before.rules, *after.rules}):
        a = before.rules.get(rule_id, RuleReplay(rule_id, "")).episodes
        b = after.rules.get(rule_id, RuleReplay(rule_id, "")).episodes
        out.append(Difference(rule_id, [e for e in a if not any(e.overlaps(o) for o in b)],
                              [e for e in b if not any(e.overlaps(o) for o in a)], len(a), len(b)))
    return out
