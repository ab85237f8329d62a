"""Each built-in rule kind, evaluated through the real evaluator and lifecycle."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from typing import Any

import pytest
from fixtures_rules import T0, Cycles, device, rules_from, site

from mistwatch import RuleKind, hookimpl
from mistwatch.host import make_host
from mistwatch.model import CollectorError, Event, Snapshot
from mistwatch.rules.evaluator import MemoryHistory, Result, evaluate
from mistwatch.rules.loader import load_rules

# --- threshold ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("condition", "value", "fires"), [
    ("above: 80", 81, True), ("above: 80", 80, False),
    ("below: 0.9", 0.89, True), ("below: 0.9", 0.9, False),
    ("inside: [10, 20]", 15, True), ("inside: [10, 20]", 25, False),
    ("outside: [10, 20]", 25, True), ("outside: [10, 20]", 15, False),
])
def test_threshold_comparisons(tmp_path, condition, value, fires):
    ruleset = rules_from(tmp_path, f"""
        id: t
        kind: threshold
        scope: device
        metric: device.cpu
        {condition}
    """)
    alerts = Cycles(ruleset).run([device(device__cpu=value)])
    assert bool(alerts) is fires


def test_threshold_tiers_pick_the_highest_matching_severity_and_threshold(tmp_path):
    ruleset = rules_from(tmp_path, """
        id: cov
        kind: threshold
        scope: site
        metric: sle.wifi.coverage
        tiers:
          - {severity: major, below: 0.9}
          - {severity: critical, below: 0.75}
    """)
    cycles = Cycles(ruleset)
    alert = next(iter(cycles.run([site(sle__wifi__coverage=0.8)]).values()))
    assert (alert.severity, alert.threshold) == ("major", 0.9)
    alert = next(iter(cycles.step([site(sle__wifi__coverage=0.7)]).values()))
    assert (alert.severity, alert.threshold) == ("critical", 0.75)
    assert [(t.from_state, t.to_state, t.severity) for t in cycles.transitions] == [
        ("inactive", "firing", "major"), ("firing", "firing", "critical")]


def test_label_matchers_exact_regex_and_negation(tmp_path):
    ruleset = rules_from(tmp_path, """
        id: t
        kind: threshold
        scope: device
        match: {device_type: ap, site_name: {regex: "^Dub"}, device_name: {not: ap-03}}
        metric: device.connected
        below: 0.5
    """)
    entities = [device("d1", "ap-01"), device("d2", "sw-01", "switch"),
                device("d3", "ap-03"), device("d4", "ap-04", site_id="s2", site_name="Cork")]
    entities = [type(e)(e.key, e.kind, e.labels, {"device.connected": 0.0}) for e in entities]
    alerts = Cycles(ruleset).run(entities)
    assert sorted(a.labels["device_name"] for a in alerts.values()) == ["ap-01"]


def test_a_metric_an_entity_does_not_report_is_not_a_breach(tmp_path):
    ruleset = rules_from(tmp_path, """
        id: t
        kind: threshold
        metric: site.ap_connected_ratio
        below: 0.9
    """)
    assert Cycles(ruleset).run([site(site__clients=3)]) == {}


def test_alert_carries_rendered_texts_and_display_labels(tmp_path):
    ruleset = rules_from(tmp_path, """
        id: cov
        kind: threshold
        metric: sle.wifi.coverage
        below: 0.9
        labels: {team: wifi}
        summary: "{{ labels.site_name }}: {{ value | pct }} < {{ threshold | pct }}"
        description: "Coverage is low at {{ labels.site_name }}."
        recommendation: "Check APs at {{ site }}"
    """)
    alert = next(iter(Cycles(ruleset).run([site(sle__wifi__coverage=0.5)]).values()))
    assert alert.summary == "Dublin: 50% < 90%"
    assert alert.description == "Coverage is low at Dublin."
    assert alert.recommendation == "Check APs at Dublin"
    assert alert.labels["team"] == "wifi" and alert.labels["site_name"] == "Dublin"
    assert alert.key == "cov{org_id=o1,site_id=s1}"


# --- change ----------------------------------------------------------------------------------------

CHANGE_RULE = """
    id: drop
    kind: change
    metric: sle.wifi.coverage
    offset: 1d
    drop: 0.1
"""


def _day_of(cycles: Cycles, value: float, hours: int = 24) -> None:
    for hour in range(hours):
        cycles.run([site(sle__wifi__coverage=value)], at=T0 + timedelta(hours=hour))


def test_change_reports_insufficient_history_as_a_note_never_an_alert(tmp_path):
    cycles = Cycles(rules_from(tmp_path, CHANGE_RULE))
    cycles.run([site(sle__wifi__coverage=0.95)])
    alerts = cycles.step([site(sle__wifi__coverage=0.2)], minutes=60)
    assert alerts == {}
    assert any("insufficient history for sle.wifi.coverage" in n for n in cycles.notes())


def test_change_fires_on_a_day_over_day_drop_with_the_baseline(tmp_path):
    cycles = Cycles(rules_from(tmp_path, CHANGE_RULE))
    _day_of(cycles, 0.95)
    alert = cycles.only() if cycles.run([site(sle__wifi__coverage=0.8)], at=T0 + timedelta(hours=24)) else None
    assert alert is not None and alert.state == "firing"
    assert alert.baseline == pytest.approx(0.95) and alert.value == pytest.approx(0.8)


def test_change_stays_firing_after_the_offset_moves_past_the_drop(tmp_path):
    cycles = Cycles(rules_from(tmp_path, CHANGE_RULE))
    _day_of(cycles, 0.95)
    for hour in range(24, 50):  # degraded for more than a day: yesterday's sample is degraded too
        cycles.run([site(sle__wifi__coverage=0.8)], at=T0 + timedelta(hours=hour))
    assert cycles.only().state == "firing"
    assert cycles.only().baseline == pytest.approx(0.95)
    cycles.run([site(sle__wifi__coverage=0.88)], at=T0 + timedelta(hours=50))  # better, not recovered
    assert cycles.only().state == "firing"
    cycles.run([site(sle__wifi__coverage=0.93)], at=T0 + timedelta(hours=51))  # within half the drop
    assert cycles.only().state == "resolved"
    assert cycles.only().value == pytest.approx(0.93)


def test_a_change_alert_past_its_offset_says_its_baseline_is_from_before_the_drop_not_1d_ago(tmp_path):
    cycles = Cycles(rules_from(tmp_path, textwrap.dedent(CHANGE_RULE)
                               + "summary: 'down from {{ baseline | pct }} {{ extra.since }}'\n"))
    _day_of(cycles, 0.95)
    cycles.run([site(sle__wifi__coverage=0.8)], at=T0 + timedelta(hours=24))
    assert cycles.only().summary == "down from 95% 1d ago"
    cycles.run([site(sle__wifi__coverage=0.8)], at=T0 + timedelta(hours=25))  # within the tolerance
    assert cycles.only().summary == "down from 95% 1d ago"
    cycles.run([site(sle__wifi__coverage=0.8)], at=T0 + timedelta(hours=48))  # 1d ago was 0.8 too
    assert cycles.only().summary == "down from 95% before the drop"


def test_change_without_baseline_recovery_clears_like_an_offset_rule(tmp_path):
    cycles = Cycles(rules_from(tmp_path, textwrap.dedent(CHANGE_RULE) + "recover_to_baseline: false\n"))
    _day_of(cycles, 0.95)
    for hour in range(24, 49):
        cycles.run([site(sle__wifi__coverage=0.8)], at=T0 + timedelta(hours=hour))
    assert cycles.only().state == "resolved"


def test_change_percent_with_minimum_baseline_guard(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: clients
        kind: change
        metric: site.clients
        unit: percent
        min_baseline: 20
        drop: 40
    """))
    for hour in range(25):
        big, small = (100, 10) if hour < 24 else (50, 1)
        alerts = cycles.run([site("s1", "Big", site__clients=big), site("s2", "Small", site__clients=small)],
                            at=T0 + timedelta(hours=hour))
    assert [a.labels["site_name"] for a in alerts.values()] == ["Big"]
    assert cycles.only().value == 50


def test_change_against_a_baseline_window_mean(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: clients
        kind: change
        metric: site.clients
        baseline: {window: 6h}
        rise: 50
    """))
    for hour in range(7):
        cycles.run([site(site__clients=100 if hour % 2 else 110)], at=T0 + timedelta(hours=hour))
    assert cycles.alerts == {}
    cycles.run([site(site__clients=200)], at=T0 + timedelta(hours=7))
    assert cycles.only().baseline == pytest.approx(105)  # hours 1..6, not the current sample


def test_change_fetches_history_in_batches_not_per_entity(tmp_path):
    ruleset = rules_from(tmp_path, CHANGE_RULE)
    calls: list[str] = []

    class CountingHistory(MemoryHistory):
        def values_at(self, metric, at, **kwargs):
            calls.append(metric)
            return super().values_at(metric, at, **kwargs)

    history = CountingHistory()
    sites = [site(f"s{i}", f"Site {i}", sle__wifi__coverage=0.9) for i in range(50)]
    history.add_snapshot(Snapshot(T0, entities=sites))
    evaluate(ruleset, Snapshot(T0 + timedelta(days=1), entities=sites), history, T0 + timedelta(days=1), alerts={})
    assert calls == ["sle.wifi.coverage"]


# --- absence ---------------------------------------------------------------------------------------

ABSENCE_RULE = """
    id: gone
    kind: absence
    scope: device
    absent_for: 1h
    severity: minor
"""


def test_absence_fires_for_a_device_not_seen_for_the_duration(tmp_path):
    cycles = Cycles(rules_from(tmp_path, ABSENCE_RULE))
    cycles.run([device("d1", "ap-01"), device("d2", "ap-02")])
    cycles.step([device("d2", "ap-02")], minutes=30)
    assert cycles.alerts == {}
    cycles.step([device("d2", "ap-02")], minutes=30)
    alert = cycles.only()
    assert alert.labels["device_name"] == "ap-01" and alert.value == 3600
    cycles.step([device("d1", "ap-01"), device("d2", "ap-02")], minutes=5)
    assert cycles.only().state == "resolved"


def test_absence_is_unknown_not_true_when_the_inventory_failed(tmp_path):
    cycles = Cycles(rules_from(tmp_path, ABSENCE_RULE))
    cycles.run([device("d1", "ap-01")])
    failure = [CollectorError("mist", "stats/devices", "HTTP 503", kinds=frozenset({"device"}))]
    cycles.step([], minutes=120, errors=failure)
    assert cycles.alerts == {}
    assert any("inventory unknown" in n for n in cycles.notes())


def test_absence_of_a_metric_an_entity_used_to_report(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: no-sle
        kind: absence
        scope: site
        metric: sle.wifi.coverage
        absent_for: 30m
    """))
    cycles.run([site("s1", sle__wifi__coverage=0.9), site("s2", "Cork", site__clients=3)])
    cycles.step([site("s1", site__clients=3), site("s2", "Cork", site__clients=3)], minutes=20)
    assert cycles.alerts == {}
    cycles.step([site("s1", site__clients=3), site("s2", "Cork", site__clients=3)], minutes=20)
    assert cycles.only().labels["site_name"] == "Dublin"


# --- event -----------------------------------------------------------------------------------------

def _alarm(type_: str, severity: str, site_id: str = "s1", **labels: str) -> Event:
    return Event("mist.alarm", type_, severity, T0, {"org_id": "o1", "site_id": site_id,
                                                      "site_name": "Dublin", **labels}, text=type_)


def test_event_rule_one_alert_per_site_and_type_with_the_event_severity(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: alarms
        kind: event
        source: mist.alarm
        min_severity: major
        summary: "{{ extra.text }} x{{ extra.count }}"
    """))
    alerts = cycles.run([], events=[_alarm("switch_offline", "critical"), _alarm("switch_offline", "critical"),
                                    _alarm("ap_offline", "major"), _alarm("rogue", "minor")])
    got = sorted((a.labels["event_type"], a.severity, a.summary) for a in alerts.values())
    assert got == [("ap_offline", "major", "ap_offline x1"), ("switch_offline", "critical", "switch_offline x2")]
    assert cycles.step([]) and {a.state for a in cycles.alerts.values()} == {"resolved"}


def test_event_rule_freezes_when_the_alarm_source_failed(tmp_path):
    cycles = Cycles(rules_from(tmp_path, "id: alarms\nkind: event\nsource: mist.alarm\n"))
    cycles.run([], events=[_alarm("switch_offline", "critical")])
    failure = CollectorError("mist", "alarms", "timeout", kinds=frozenset({"site", "event"}),
                             metrics=frozenset({"site.alarms_*", "mist.alarm"}))
    cycles.step([], errors=[failure])
    assert cycles.only().state == "firing"


# --- correlation -----------------------------------------------------------------------------------

CORRELATION_RULES = """
rules:
  - {id: sle-low, kind: threshold, scope: site, metric: sle.wifi.coverage, below: 0.8}
  - {id: dev-down, kind: threshold, scope: device, metric: device.connected, below: 0.5}
  - {id: maintenance, kind: threshold, scope: site, metric: site.maintenance, above: 0.5}
  - id: degraded
    kind: correlation
    all_of: [sle-low, dev-down]
    unless: [maintenance]
    join: [site_id]
    severity: critical
    summary: "{{ labels.site_name }}: {{ extra.cause_rules | join(' + ') }}"
"""


def test_correlation_joins_on_site_and_cites_its_causes(tmp_path):
    cycles = Cycles(rules_from(tmp_path, CORRELATION_RULES))
    cycles.run([site("s1", sle__wifi__coverage=0.5), device("d1", device__connected=0),
                site("s2", "Cork", sle__wifi__coverage=0.5),
                device("d2", "ap-02", site_id="s3", site_name="Galway", device__connected=0)])
    alert = cycles.only("degraded")
    assert alert.labels["site_name"] == "Dublin" and alert.severity == "critical"
    assert alert.summary == "Dublin: dev-down + sle-low"
    assert sorted(alert.causes) == ["dev-down{device_id=d1,org_id=o1,site_id=s1}", "sle-low{org_id=o1,site_id=s1}"]
    assert alert.key == "degraded{site_id=s1}"


def test_correlation_unless_suppresses(tmp_path):
    cycles = Cycles(rules_from(tmp_path, CORRELATION_RULES))
    cycles.run([site("s1", sle__wifi__coverage=0.5, site__maintenance=1), device("d1", device__connected=0)])
    assert "degraded" not in {a.rule_id for a in cycles.alerts.values()}


def test_correlation_within_a_window_uses_recent_alerts(tmp_path):
    rules = CORRELATION_RULES.replace("    join: [site_id]", "    join: [site_id]\n    within: 30m")
    cycles = Cycles(rules_from(tmp_path, rules))
    cycles.run([site("s1", sle__wifi__coverage=0.9), device("d1", device__connected=0)])
    cycles.step([site("s1", sle__wifi__coverage=0.5), device("d1", device__connected=1)], minutes=10)
    assert cycles.only("degraded").state == "firing"


def test_correlation_any_of(tmp_path):
    cycles = Cycles(rules_from(tmp_path, CORRELATION_RULES.replace("all_of: [sle-low, dev-down]",
                                                                   "any_of: [sle-low, dev-down]")))
    cycles.run([device("d1", device__connected=0)])
    assert cycles.only("degraded").causes == ("dev-down{device_id=d1,org_id=o1,site_id=s1}",)


# --- expression and plugin kinds ---------------------------------------------------------------------

def test_expression_kind_over_metrics_and_labels(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: expr
        kind: expression
        scope: site
        when: "metrics['site.ap_connected'] < metrics['site.ap_total'] and labels.site_name.startswith('Dub')"
    """))
    alerts = cycles.run([site("s1", site__ap_connected=3, site__ap_total=4),
                         site("s2", "Cork", site__ap_connected=3, site__ap_total=4)])
    assert [a.labels["site_name"] for a in alerts.values()] == ["Dublin"]


def test_when_filters_another_kind(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: cov
        kind: threshold
        metric: sle.wifi.coverage
        below: 0.8
        when: "metrics['site.clients'] >= 5"
    """))
    alerts = cycles.run([site("s1", sle__wifi__coverage=0.5, site__clients=50),
                         site("s2", "Cork", sle__wifi__coverage=0.5, site__clients=2)])
    assert [a.labels["site_name"] for a in alerts.values()] == ["Dublin"]


class ZeroKindPlugin:
    @staticmethod
    @hookimpl
    def mistwatch_rule_kinds():
        def compile_zero(spec: Any):
            metric, severity = spec["metric"], spec["tiers"][0]["severity"]

            def check(ctx):
                for entity in ctx.entities():
                    if entity.metrics.get(metric) == 0:
                        yield Result(entity.key, entity.labels, severity, value=0.0)
            return check

        yield RuleKind(name="zero", compile=compile_zero, default_scope="site",
                       schema={"required": ["metric"], "properties": {"metric": {"type": "string"}}})


def test_a_plugin_registers_a_rule_kind_through_the_hook(tmp_path):
    host = make_host(entry_points=False, extra=[("zero-kind", ZeroKindPlugin())])
    kinds = host.rule_kinds()
    assert {"threshold", "change", "absence", "event", "correlation", "expression", "zero"} <= set(kinds)
    path = tmp_path / "z.yaml"
    path.write_text("id: z\nkind: zero\nmetric: site.clients\nseverity: minor\n", encoding="utf-8")
    ruleset = load_rules([path], kinds)
    evaluation = evaluate(ruleset, Snapshot(T0, entities=[site(site__clients=0), site("s2", site__clients=4)]),
                          MemoryHistory(), T0, alerts={})
    assert [(f.rule_id, f.severity, f.labels["site_id"]) for f in evaluation.active] == [("z", "minor", "s1")]


def test_correlation_on_firing_alerts_waits_for_the_causes_for(tmp_path):
    rules = CORRELATION_RULES.replace(
        "  - {id: dev-down, kind: threshold, scope: device, metric: device.connected, below: 0.5}",
        "  - {id: dev-down, kind: threshold, scope: device, metric: device.connected, below: 0.5, for: 10m}")
    rules = rules.replace("    join: [site_id]", "    join: [site_id]\n    require: firing")
    cycles = Cycles(rules_from(tmp_path, rules))
    entities = [site("s1", sle__wifi__coverage=0.5), device("d1", device__connected=0)]
    cycles.run(entities)
    cycles.step(entities)
    assert "degraded" not in {a.rule_id for a in cycles.alerts.values()}
    cycles.step(entities)  # dev-down fires at the end of this cycle (10 minutes)...
    assert "degraded" not in {a.rule_id for a in cycles.alerts.values()}
    cycles.step(entities)  # ...so the correlation sees both firing from the next one
    assert cycles.only("degraded").state == "firing"


def test_the_rule_kind_example_in_the_plugin_contract_works(tmp_path):
    import types

    doc = RuleKind.__doc__ or ""
    block = doc.split("exactly zero::", 1)[1].split("\n\n    The built-in kinds", 1)[0]
    module = types.ModuleType("zero_kind_example")
    exec(textwrap.dedent(block), module.__dict__)  # the documented plugin, as a plugin author copies it
    host = make_host(entry_points=False, extra=[("zero-example", module)])
    path = tmp_path / "z.yaml"
    path.write_text("id: z\nkind: zero\nmetric: site.clients\nscope: site\n", encoding="utf-8")
    ruleset = load_rules([path], host.rule_kinds())
    alerts = Cycles(ruleset).run([site(site__clients=0), site("s2", "Cork", site__clients=3)])
    assert [a.labels["site_name"] for a in alerts.values()] == ["Dublin"]


DEVICES_DOWN = """
    id: devices-down
    kind: expression
    scope: site
    metric: site.devices_connected
    when: "metrics['site.devices_connected'] < metrics['site.devices_total']"
"""


def test_an_expression_reading_a_metric_whose_collection_failed_freezes_its_alert_without_an_error(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DEVICES_DOWN))
    cycles.run([site(site__devices_connected=4, site__devices_total=6)])
    assert cycles.only().state == "firing"
    failure = CollectorError("mist", "stats/sites", "HTTP 500", kinds=frozenset({"site"}),
                             metrics=frozenset({"site.devices_*"}))
    cycles.step([site()], errors=[failure])  # the site is listed, its counters are not known
    assert cycles.only().state == "firing"
    assert [n.kind for n in cycles.evaluation.notes] == ["unknown"]


def test_an_expression_reading_a_metric_the_entity_does_not_report_is_false_not_an_error(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DEVICES_DOWN))
    cycles.run([site(site__devices_connected=4, site__devices_total=6)])
    cycles.step([site(site__devices_total=6)])  # no collection failure: simply not reported
    assert cycles.only().state == "resolved"
    assert cycles.notes() == []
