"""One incident, one alert per signal: rules' ``supersedes:``, what the pipeline and the report make of
it, and the default pack on the demo's bad morning."""

from __future__ import annotations

import pytest
from fixtures_notify import T0 as NOTIFY_T0
from fixtures_notify import make_alert
from fixtures_rules import Cycles, device, rules_from, site

from mistwatch.errors import ConfigError
from mistwatch.notify.pipeline import plan
from mistwatch.notify.settings import load_settings
from mistwatch.report.build import alert_dict
from mistwatch.rules.lifecycle import mark_superseded, superseded

PAIR = """
rules:
  - id: level-low
    kind: threshold
    metric: sle.wifi.coverage
    tiers:
      - {severity: major, below: 0.8}
      - {severity: critical, below: 0.6}
  - id: level-drop
    kind: threshold
    metric: sle.wifi.coverage
    tiers:
      - {severity: major, below: 0.7}
      - {severity: critical, below: 0.5}
    supersedes: [level-low]
"""


def _firing(ruleset, entities):
    cycles = Cycles(ruleset)
    alerts = list(cycles.run(entities).values())
    assert all(a.state == "firing" for a in alerts)
    return alerts


def test_a_firing_alert_supersedes_the_named_rules_alert_on_the_same_site(tmp_path):
    ruleset = rules_from(tmp_path, PAIR)
    alerts = _firing(ruleset, [site(sle__wifi__coverage=0.4)])
    by_key = {a.key: a.rule_id for a in alerts}
    replaced = superseded(alerts, ruleset)
    assert {by_key[k]: v.rule_id for k, v in replaced.items()} == {"level-low": "level-drop"}


def test_an_alert_at_another_site_is_not_superseded(tmp_path):
    ruleset = rules_from(tmp_path, PAIR)
    alerts = _firing(ruleset, [site("s1", sle__wifi__coverage=0.4), site("s2", "Cork", sle__wifi__coverage=0.75)])
    # s2: only level-low fires; s1's level-drop does not reach it
    assert [a.labels["site_id"] for a in alerts if a.key in superseded(alerts, ruleset)] == ["s1"]


def test_a_less_severe_alert_never_hides_a_more_severe_one(tmp_path):
    ruleset = rules_from(tmp_path, PAIR)
    # 0.55: level-low is critical (below 0.6), level-drop only major (below 0.7)
    alerts = _firing(ruleset, [site(sle__wifi__coverage=0.55)])
    assert superseded(alerts, ruleset) == {}


def test_two_rules_that_supersede_each_other_both_notify(tmp_path):
    ruleset = rules_from(tmp_path, PAIR.replace("      - {severity: critical, below: 0.6}\n",
                                                "      - {severity: critical, below: 0.6}\n"
                                                "    supersedes: [level-drop]\n"))
    alerts = _firing(ruleset, [site(sle__wifi__coverage=0.4)])
    assert superseded(alerts, ruleset) == {}


def test_a_device_alert_does_not_supersede_its_sites_alert(tmp_path):
    ruleset = rules_from(tmp_path, """
        rules:
          - id: ap-down
            kind: threshold
            scope: device
            metric: device.connected
            below: 0.5
            severity: critical
            supersedes: [site-down]
          - id: site-down
            kind: threshold
            metric: site.devices_disconnected
            above: 0
            severity: minor
        """)
    alerts = _firing(ruleset, [site(site__devices_disconnected=1), device(device__connected=0)])
    assert len(alerts) == 2 and superseded(alerts, ruleset) == {}


def test_marking_records_which_alert_supersedes_and_clears_when_it_stops(tmp_path):
    ruleset = rules_from(tmp_path, PAIR)
    cycles = Cycles(ruleset)
    alerts = list(cycles.run([site(sle__wifi__coverage=0.4)]).values())
    mark_superseded(alerts, ruleset)
    low = next(a for a in alerts if a.rule_id == "level-low")
    drop = next(a for a in alerts if a.rule_id == "level-drop")
    assert low.annotations["superseded_by"] == drop.key and low.annotations["superseded_by_rule"] == "level-drop"
    drop.state = "resolved"
    mark_superseded(alerts, ruleset)
    assert "superseded_by" not in low.annotations


def test_a_rule_cannot_supersede_itself(tmp_path):
    with pytest.raises(ConfigError, match="cannot supersede itself") as err:
        rules_from(tmp_path, PAIR.replace("supersedes: [level-low]", "supersedes: [level-drop]"))
    assert err.value.line == 15


def test_supersedes_may_name_a_rule_that_is_not_loaded(tmp_path):
    ruleset = rules_from(tmp_path, PAIR.replace("supersedes: [level-low]", "supersedes: [in-another-file]"))
    assert ruleset.get("level-drop").supersedes == ("in-another-file",)


def test_a_superseded_alert_sends_nothing_and_says_by_which_rule(notify_env):
    notify_env.configure([{"name": "console", "type": "console"}])
    drop = make_alert("wifi-coverage-drop", device=None, device_id=None)
    low = make_alert("wifi-coverage-low", device=None, device_id=None)
    low.annotations.update(superseded_by=drop.key, superseded_by_rule="wifi-coverage-drop")
    p = plan(load_settings(notify_env.config), [drop, low], {}, [], NOTIFY_T0)
    assert [a.rule_id for n in p.notifications for a in n.alerts] == ["wifi-coverage-drop"]
    assert [(s.alert_key, s.reason) for s in p.suppressed] == [
        (low.key, "superseded by wifi-coverage-drop at Dublin HQ")]


def test_the_report_lists_a_superseded_alert_with_the_rule_that_replaces_it():
    low = make_alert("wifi-coverage-low", device=None, device_id=None)
    low.annotations["superseded_by_rule"] = "wifi-coverage-drop"
    assert alert_dict(low)["superseded_by"] == "wifi-coverage-drop"
    assert alert_dict(make_alert())["superseded_by"] is None


# -- the default pack on the demo's bad morning -------------------------------------------------------

def _rules_at(alerts, site_name):
    return sorted({a.rule_id for a in alerts if a.labels.get("site_name") == site_name})


def test_the_demo_notifies_one_alert_per_sle_at_vienna(demo_morning):
    notified = demo_morning.notified
    # site-clients-drop is an anomaly rule now: the demo's one day of history is below its minimum
    assert _rules_at(notified, "Vienna Branch 1") == [
        "wifi-capacity-drop", "wifi-coverage-drop", "wifi-time-to-connect-drop"]


def test_the_demo_keeps_the_superseded_sle_levels_firing_for_the_report(demo_morning):
    alerts = demo_morning.result.rules.alerts
    low = [a for a in alerts if a.labels.get("site_name") == "Vienna Branch 1" and a.rule_id.endswith("-low")]
    assert low and all(a.state == "firing" and a.annotations["superseded_by_rule"].endswith("-drop") for a in low)


def test_the_demo_correlation_names_its_causes_instead_of_pasting_their_summaries(demo_morning):
    alerts = demo_morning.result.rules.alerts
    degraded = next(a for a in alerts if a.rule_id == "site-degraded")
    assert degraded.summary == ("Seattle Branch 1 degraded: site-devices-down, wan-gateway-health-drop, "
                                "wired-switch-health-drop")
