"""The insights table and JSON of `run --mode insights|all`."""

from __future__ import annotations

import io
import json
from datetime import timedelta

from fixtures_rules import T0, Cycles, device, rules_from, site
from rich.console import Console

from mistwatch.report.insights import insights_json, print_insights
from mistwatch.rules.lifecycle import RulesOutcome

RULES = """
rules:
  - id: cov-low
    kind: threshold
    metric: sle.wifi.coverage
    tiers: [{severity: major, below: 0.9}, {severity: critical, below: 0.75}]
    summary: "{{ labels.site_name }} coverage {{ value | pct }}"
    recommendation: Check AP placement.
  - id: ap-down
    kind: threshold
    scope: device
    metric: device.connected
    below: 0.5
    for: 10m
    recommendation: Check the switch port.
  - id: cov-drop
    kind: change
    metric: sle.wifi.coverage
    drop: 0.1
"""


def _outcome(tmp_path) -> tuple[RulesOutcome, Cycles]:
    cycles = Cycles(rules_from(tmp_path, RULES))
    cycles.run([site("s1", "Dublin", sle__wifi__coverage=0.7), site("s2", "Cork", sle__wifi__coverage=0.85),
                device("d1", "ap-01", device__connected=0)])
    assert cycles.evaluation is not None
    outcome = RulesOutcome(alerts=list(cycles.alerts.values()), findings=cycles.evaluation.active,
                           notes=cycles.evaluation.notes)
    return outcome, cycles


def _render(outcome: RulesOutcome, width: int, now) -> str:
    buffer = io.StringIO()
    print_insights(Console(file=buffer, width=width, color_system=None), outcome, now=now)
    return buffer.getvalue()


def test_table_lists_alerts_by_state_severity_and_site_with_value_vs_threshold(tmp_path):
    outcome, cycles = _outcome(tmp_path)
    text = _render(outcome, 200, cycles.now + timedelta(minutes=5))
    rows = [line for line in text.splitlines() if "cov-low" in line or "ap-down" in line]
    assert "critical" in rows[0] and "Dublin" in rows[0] and "70% / 75%" in rows[0]
    assert "major" in rows[1] and "Cork" in rows[1] and "85% / 90%" in rows[1]
    assert "pending" in rows[2] and "ap-01" in rows[2] and "5m ago" in rows[2]
    assert "Check AP placement." in text
    assert "insufficient history for sle.wifi.coverage" in text


def test_narrow_console_lists_each_recommendation_once_below_the_table(tmp_path):
    outcome, cycles = _outcome(tmp_path)
    text = _render(outcome, 100, cycles.now)
    assert text.count("Check AP placement.") == 1
    assert "What to do" in text


def test_json_has_alerts_counts_and_notes(tmp_path):
    outcome, _ = _outcome(tmp_path)
    data = json.loads(json.dumps(insights_json(outcome)))
    assert data["counts"]["by_state"] == {"firing": 2, "pending": 1}
    assert data["counts"]["by_severity"] == {"critical": 1, "major": 2}
    first = data["alerts"][0]
    assert (first["rule"], first["site"], first["severity"], first["value"], first["threshold"]) == (
        "cov-low", "Dublin", "critical", 0.7, 0.75)
    assert first["summary"] == "Dublin coverage 70%" and first["recommendation"] == "Check AP placement."
    assert data["notes"][0]["kind"] == "insufficient_history"


def test_no_alerts_says_so(tmp_path):
    outcome = RulesOutcome()
    assert "every rule is quiet" in _render(outcome, 100, T0)
