"""Fixtures and helpers for the rules engine tests.

``rules_from(tmp_path, yaml_text)`` writes and loads a rule file with the built-in kinds.
``Cycles`` runs evaluation + lifecycle cycle after cycle over an in-memory history (like the store).
``site(...)``/``device(...)`` build entities with the Mist collector's labels.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mistwatch.model import Alert, CollectorError, Entity, Event, Snapshot
from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.evaluator import Evaluation, MemoryHistory, evaluate
from mistwatch.rules.lifecycle import advance
from mistwatch.rules.loader import RuleSet, load_rules
from mistwatch.store.records import Transition

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parent.parent


def rules_from(tmp_path: Path, text: str, name: str = "rules.yaml", **kwargs: Any) -> RuleSet:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules([path], builtin_kinds(), **kwargs)


def site(site_id: str = "s1", name: str = "Dublin", **metrics: float) -> Entity:
    labels = {"org_id": "o1", "site_id": site_id, "site_name": name}
    return Entity(f"site:{site_id}", "site", labels, {k.replace("__", "."): v for k, v in metrics.items()})


def device(device_id: str = "d1", name: str = "ap-01", device_type: str = "ap", site_id: str = "s1",
           site_name: str = "Dublin", unknown: frozenset[str] = frozenset(), **metrics: float) -> Entity:
    labels = {"org_id": "o1", "site_id": site_id, "site_name": site_name, "device_id": device_id,
              "device_name": name, "device_type": device_type}
    return Entity(f"device:{device_id}", "device", labels,
                  {k.replace("__", "."): v for k, v in metrics.items()}, unknown)


def m(**metrics: float) -> dict[str, float]:
    """``m(sle__wifi__coverage=0.9)`` -> ``{"sle.wifi.coverage": 0.9}``."""
    return {k.replace("__", "."): v for k, v in metrics.items()}


class Cycles:
    """Evaluate and advance cycle after cycle, keeping history and alert states in memory."""

    def __init__(self, ruleset: RuleSet, start: datetime = T0) -> None:
        self.ruleset = ruleset
        self.now = start
        self.history = MemoryHistory()
        self.alerts: dict[str, Alert] = {}
        self.transitions: list[Transition] = []
        self.evaluation: Evaluation | None = None

    def run(self, entities: list[Entity], *, at: datetime | None = None, events: list[Event] = (),  # type: ignore[assignment]
            errors: list[CollectorError] = ()) -> dict[str, Alert]:  # type: ignore[assignment]
        if at is not None:
            self.now = at
        snapshot = Snapshot(self.now, entities=list(entities), events=list(events), errors=list(errors))
        self.history.add_snapshot(snapshot)
        self.evaluation = evaluate(self.ruleset, snapshot, self.history, self.now, alerts=self.alerts)
        new, transitions = advance(self.alerts, self.evaluation, self.ruleset, self.now)
        self.transitions.extend(transitions)
        self.alerts = {a.key: a for a in new if a.state != "inactive"}
        return self.alerts

    def step(self, entities: list[Entity], minutes: float = 5, **kwargs: Any) -> dict[str, Alert]:
        self.now += timedelta(minutes=minutes)
        return self.run(entities, **kwargs)

    def states(self, rule_id: str | None = None) -> dict[str, str]:
        return {a.labels.get("device_name") or a.labels.get("site_name") or a.key: a.state
                for a in self.alerts.values() if rule_id is None or a.rule_id == rule_id}

    def only(self, rule_id: str | None = None) -> Alert:
        found = [a for a in self.alerts.values() if rule_id is None or a.rule_id == rule_id]
        assert len(found) == 1, f"expected one alert, got {[a.key for a in found]}"
        return found[0]

    def notes(self) -> list[str]:
        return [str(n) for n in (self.evaluation.notes if self.evaluation else [])]


def history_series(history: MemoryHistory, key: str, metric: str, values: Mapping[datetime, float]) -> None:
    for at, value in values.items():
        history.add(at, {metric: {key: value}})


@pytest.fixture
def kinds() -> dict[str, Any]:
    return builtin_kinds()
