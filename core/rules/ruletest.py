"""``mistwatch rules test``: unit tests for rules, in the spirit of ``promtool test rules``.

A test file (YAML)::

    rule_files: [../devices.yaml]        # relative to the test file
    start: 2026-01-05T00:00:00Z          # optional; the time of the first sample
    interval: 5m                         # optional default for every test (default 5m)
    tests:
      - name: an AP that stays down fires after 10 minutes
        interval: 5m
        entities:
          - kind: device                 # org | site | device | ...
            labels: {site_id: s1, site_name: Dublin, device_id: d1, device_name: ap-01, device_type: ap}
            series:                      # one value per cycle: numbers, "_" unknown, "x" not reported
              device.connected: "1 1 0 0 0 0"     # or a list; "0.9x24" repeats 0.9 24 times
        events:                          # optional, each at a time offset
          - {at: 10m, source: mist.alarm, type: device_down, severity: critical, labels: {site_id: s1}}
          # until: repeat it in every cycle up to then (an open alarm comes back each cycle);
          # seen: its timestamp (a Mist alarm's last_seen), when not the cycle's time
          - {at: 0m, until: 2h, seen: 0m, type: rogue_ap, severity: major}
        errors:                          # optional collector failures (data unknown) at time offsets
          - {at: 15m, kinds: [device], metrics: ["*"]}
        expect:
          - at: 10m                      # time offset from start; must be a cycle
            rule: ap-offline             # optional: compare only this rule's alerts
            alerts:                      # every alert (pending, firing, resolved) at that time
              - {rule: ap-offline, labels: {device_name: ap-01}, state: pending, severity: major,
                 summary: "AP ap-01 at Dublin is offline"}
            notes: ["insufficient history"]   # optional: substrings of the notes at that time

Every cycle from the start to the last expectation is evaluated and its alert states advanced, with
the states kept in memory as the store would. An entity whose series are all ``x`` at a cycle is
absent from that cycle's snapshot (for absence rules). Offline and fast: no network, no files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mistwatch.durations import parse_duration, parse_time
from mistwatch.errors import ConfigError
from mistwatch.hookspecs import RuleKind, duration_schema
from mistwatch.model import SEVERITIES, Alert, CollectorError, Entity, Event, Snapshot
from mistwatch.rules.derived import derive
from mistwatch.rules.evaluator import MemoryHistory, evaluate
from mistwatch.rules.lifecycle import advance
from mistwatch.rules.loader import RuleSet, load_rules
from mistwatch.yamlfile import format_key_path, load_yaml, validate

DEFAULT_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
UNKNOWN, MISSING = "_", "x"

_DUR = duration_schema()
_LABELS = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}

TEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["rule_files", "tests"],
    "properties": {
        "rule_files": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "start": {"type": "string"},
        "interval": _DUR,
        "tests": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "expect"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": _DUR,
                "entities": {"type": ["array", "null"], "items": {
                    "type": "object", "additionalProperties": False, "required": ["kind", "labels"],
                    "properties": {
                        "kind": {"type": "string"}, "key": {"type": "string"}, "labels": _LABELS,
                        "series": {"type": "object", "additionalProperties": {
                            "oneOf": [{"type": "string"},
                                      {"type": "array", "items": {"type": ["number", "string"]}}],
                            "x-message": "a series is a string like \"1 1 0 _ x\" or a list"}}}}},
                "events": {"type": ["array", "null"], "items": {
                    "type": "object", "additionalProperties": False, "required": ["at", "type"],
                    "properties": {"at": _DUR, "until": _DUR, "seen": _DUR,
                                   "source": {"type": "string"}, "type": {"type": "string"},
                                   "severity": {"enum": list(SEVERITIES)}, "labels": _LABELS,
                                   "text": {"type": "string"}, "count": {"type": "integer", "minimum": 1},
                                   "id": {"type": "string"}}}},
                "errors": {"type": ["array", "null"], "items": {
                    "type": "object", "additionalProperties": False, "required": ["at"],
                    "properties": {"at": _DUR, "until": _DUR,
                                   "kinds": {"type": "array", "items": {"type": "string"}},
                                   "metrics": {"type": "array", "items": {"type": "string"}},
                                   "message": {"type": "string"}}}},
                "expect": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["at"],
                    "properties": {
                        "at": _DUR, "rule": {"type": "string"},
                        "alerts": {"type": ["array", "null"], "items": {
                            "type": "object", "additionalProperties": False, "required": ["rule"],
                            "properties": {"rule": {"type": "string"}, "labels": _LABELS,
                                           "state": {"enum": ["pending", "firing", "resolved"]},
                                           "severity": {"enum": list(SEVERITIES)},
                                           "summary": {"type": "string"},
                                           "value": {"type": ["number", "null"]}}}},
                        "notes": {"type": "array", "items": {"type": "string"}}}}},
            }}},
    },
}

_REPEAT = re.compile(r"^(.+?)x(\d+)$")


@dataclass
class RuleTestOutcome:
    file: str
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def parse_series(raw: Any, *, file: str, line: int | None, key: str) -> list[float | str]:
    """``"1 1 0 _ x"`` or a list -> values; ``"0.9x3"`` repeats; ``_`` unknown, ``x`` missing."""
    items = raw.split() if isinstance(raw, str) else list(raw)
    out: list[float | str] = []
    for item in items:
        text = str(item).strip()
        count = 1
        repeat = _REPEAT.match(text)
        if repeat and text != MISSING:
            text, count = repeat.group(1), int(repeat.group(2))
        if text in (UNKNOWN, MISSING):
            out.extend([text] * count)
            continue
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"not a number, '_' or 'x': {item!r}", file=file, line=line, key=key) from None
        out.extend([value] * count)
    return out


def _entity_key(kind: str, labels: Mapping[str, str]) -> str:
    ident = labels.get(f"{kind}_id") or labels.get("device_id") or labels.get("site_id") or labels.get("org_id")
    if labels.get("peer_id"):  # a gateway has several WAN paths and BGP peers
        ident = f"{ident}:{labels['peer_id']}"
    return f"{kind}:{ident or 'unnamed'}"


def _describe(alert: Alert | Mapping[str, Any]) -> str:
    if isinstance(alert, Alert):
        parts = [f"rule={alert.rule_id}", f"state={alert.state}", f"severity={alert.severity}"]
        value = "n/a" if alert.value is None else f"{alert.value:g}"
        labels = {k: v for k, v in alert.labels.items()
                  if k in ("site_name", "device_name", "site_id", "device_id", "event_type")}
        parts += [f"value={value}", f"labels={labels}", f"summary={alert.summary!r}"]
        return " ".join(parts)
    return " ".join(f"{k}={v!r}" if k == "summary" else f"{k}={v}" for k, v in alert.items())


def _matches(expected: Mapping[str, Any], alert: Alert) -> list[str]:
    """The fields where ``alert`` differs from ``expected`` (empty: it matches)."""
    diffs = []
    if expected["rule"] != alert.rule_id:
        return ["rule"]
    for label, want in (expected.get("labels") or {}).items():
        if alert.labels.get(str(label)) != str(want):
            diffs.append(f"labels.{label}: expected {want!r}, got {alert.labels.get(str(label))!r}")
    for key in ("state", "severity", "summary"):
        if key in expected and getattr(alert, key) != expected[key]:
            diffs.append(f"{key}: expected {expected[key]!r}, got {getattr(alert, key)!r}")
    if "value" in expected:
        want = expected["value"]
        got = alert.value
        if (want is None) != (got is None) or (want is not None and abs(float(want) - float(got or 0)) > 1e-9):
            diffs.append(f"value: expected {want!r}, got {got!r}")
    return diffs


def _compare(expected: list[Mapping[str, Any]], actual: list[Alert]) -> list[str]:
    """A readable diff: which expected alerts are missing (with the closest candidate) and which
    alerts were not expected."""
    remaining = list(actual)
    lines: list[str] = []
    for want in expected:
        hit = next((a for a in remaining if not _matches(want, a)), None)
        if hit is not None:
            remaining.remove(hit)
            continue
        lines.append(f"  - missing:    {_describe(want)}")
        same_rule = [a for a in remaining if a.rule_id == want["rule"]]
        if same_rule:
            closest = min(same_rule, key=lambda a: len(_matches(want, a)))
            lines.append(f"    closest:    {_describe(closest)}")
            lines.extend(f"      {d}" for d in _matches(want, closest))
    for alert in remaining:
        lines.append(f"  + unexpected: {_describe(alert)}")
    return lines


class _TestFile:
    def __init__(self, path: Path, kinds: Mapping[str, RuleKind]) -> None:
        self.path, self.file = path, str(path)
        data, self.lines = load_yaml(path)
        if not isinstance(data, Mapping):
            raise ConfigError("a rule test file is a mapping with rule_files and tests", file=self.file, line=1)
        validate(data, TEST_SCHEMA, file=self.file, lines=self.lines)
        self.data = data
        self.fmt = format_key_path
        rule_paths = [path.parent / p for p in data["rule_files"]]
        for index, rule_path in enumerate(rule_paths):
            if not rule_path.exists():
                raise ConfigError(f"no such rule file: {data['rule_files'][index]}", file=self.file,
                                  line=self.lines.line(("rule_files", index)),
                                  key=format_key_path(("rule_files", index)))
        self.ruleset = load_rules(rule_paths, kinds)
        try:
            self.start = parse_time(data["start"]) if "start" in data else DEFAULT_START
        except ValueError:
            raise ConfigError("not an ISO 8601 time", file=self.file, line=self.lines.line(("start",)),
                              key="start") from None
        self.interval = parse_duration(data.get("interval", "5m"))

    def fail(self, message: str, path: tuple[str | int, ...]) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.lines.line(path), key=self.fmt(path))

    def step_of(self, at: Any, interval: timedelta, path: tuple[str | int, ...]) -> int:
        offset = parse_duration(at)
        steps = offset / interval
        if abs(steps - round(steps)) > 1e-9:
            raise self.fail(f"{at} is not a whole number of intervals ({interval})", path)
        return round(steps)

    def run(self) -> list[RuleTestOutcome]:
        return [self.run_test(index, test) for index, test in enumerate(self.data["tests"])]

    def run_test(self, index: int, test: Mapping[str, Any]) -> RuleTestOutcome:
        base = ("tests", index)
        interval = parse_duration(test.get("interval", self.data.get("interval", "5m")))
        if interval <= timedelta(0):
            raise self.fail("interval must be positive", (*base, "interval"))
        ruleset: RuleSet = self.ruleset
        entities = []
        for e_index, spec in enumerate(test.get("entities") or []):
            labels = {str(k): str(v) for k, v in spec["labels"].items()}
            series = {}
            for metric, raw in (spec.get("series") or {}).items():
                path = (*base, "entities", e_index, "series", metric)
                series[metric] = parse_series(raw, file=self.file, line=self.lines.line(path), key=self.fmt(path))
            entities.append((spec.get("key") or _entity_key(spec["kind"], labels), spec["kind"], labels, series))
        events: dict[int, list[Event]] = {}
        for v_index, spec in enumerate(test.get("events") or []):
            step = self.step_of(spec["at"], interval, (*base, "events", v_index, "at"))
            last = (self.step_of(spec["until"], interval, (*base, "events", v_index, "until"))
                    if "until" in spec else step)
            seen = (self.start + parse_duration(spec["seen"])) if "seen" in spec else None
            for each in range(step, last + 1):
                events.setdefault(each, []).append(Event(
                    source=spec.get("source", "mist.alarm"), type=spec["type"],
                    severity=spec.get("severity", "major"),
                    timestamp=seen or self.start + each * interval,
                    labels={str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
                    text=spec.get("text", spec["type"]), id=spec.get("id", ""), count=spec.get("count", 1)))
        errors: list[tuple[int, int | None, CollectorError]] = []
        for r_index, spec in enumerate(test.get("errors") or []):
            first = self.step_of(spec["at"], interval, (*base, "errors", r_index, "at"))
            last = (self.step_of(spec["until"], interval, (*base, "errors", r_index, "until"))
                    if "until" in spec else first)
            errors.append((first, last, CollectorError(
                "test", "test", spec.get("message", "simulated failure"),
                kinds=frozenset(spec.get("kinds") or ["*"]), metrics=frozenset(spec.get("metrics") or ["*"]))))
        checks: dict[int, list[tuple[int, Mapping[str, Any]]]] = {}
        for x_index, spec in enumerate(test["expect"]):
            step = self.step_of(spec["at"], interval, (*base, "expect", x_index, "at"))
            for alert_index, alert in enumerate(spec.get("alerts") or []):
                if alert["rule"] not in ruleset.ids:
                    raise self.fail(f"unknown rule '{alert['rule']}' (rules under test: "
                                    f"{', '.join(ruleset.ids)})", (*base, "expect", x_index, "alerts",
                                                                   alert_index, "rule"))
            if spec.get("rule") and spec["rule"] not in ruleset.ids:
                raise self.fail(f"unknown rule '{spec['rule']}'", (*base, "expect", x_index, "rule"))
            checks.setdefault(step, []).append((x_index, spec))

        outcome = RuleTestOutcome(self.file, test["name"])
        history = MemoryHistory()
        alerts: dict[str, Alert] = {}
        last_step = max(checks)
        for step in range(last_step + 1):
            now = self.start + step * interval
            snapshot = Snapshot(taken_at=now)
            for key, kind, labels, series in entities:
                metrics: dict[str, float] = {}
                unknown: set[str] = set()
                present = not series
                for metric, values in series.items():
                    value = values[step] if step < len(values) else values[-1] if values else MISSING
                    if value == UNKNOWN:
                        unknown.add(metric)
                        present = True
                    elif value != MISSING:
                        metrics[metric] = float(value)
                        present = True
                if present:
                    snapshot.entities.append(Entity(key, kind, labels, metrics, frozenset(unknown)))
            snapshot.events.extend(events.get(step, []))
            snapshot.errors.extend(err for first, last, err in errors
                                   if first <= step <= (last if last is not None else first))
            derive(ruleset.metrics, snapshot)
            history.add_snapshot(snapshot)
            evaluation = evaluate(ruleset, snapshot, history, now, alerts=alerts)
            new, _ = advance(alerts, evaluation, ruleset, now)
            alerts = {a.key: a for a in new if a.state != "inactive"}
            for x_index, spec in checks.get(step, []):
                actual = sorted((a for a in alerts.values() if not spec.get("rule") or a.rule_id == spec["rule"]),
                                key=lambda a: a.key)
                diff = _compare(list(spec.get("alerts") or []), actual) if "alerts" in spec else []
                for want in spec.get("notes") or []:
                    if not any(want in str(n) for n in evaluation.notes):
                        notes = "; ".join(str(n) for n in evaluation.notes) or "none"
                        diff.append(f"  - missing note containing {want!r} (notes: {notes})")
                if diff:
                    where = f" (rule {spec['rule']})" if spec.get("rule") else ""
                    line = self.lines.line((*base, "expect", x_index))
                    outcome.failures.append(f"at {spec['at']}{where}, {self.file}:{line}:\n" + "\n".join(diff))
        return outcome


def run_rule_tests(paths: Sequence[str | Path], kinds: Mapping[str, RuleKind]) -> list[RuleTestOutcome]:
    """Run every test of every file; ConfigError (exit 2) for a malformed file."""
    outcomes: list[RuleTestOutcome] = []
    for path in paths:
        outcomes.extend(_TestFile(Path(path), kinds).run())
    return outcomes
