"""The alert state machine: for, keep_firing_for, hysteresis, unknown data, retention, persistence."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fixtures_rules import T0, Cycles, device, rules_from, site

from mistwatch.model import CollectorError, Snapshot
from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.lifecycle import RESOLVED_RETENTION, run_rules
from mistwatch.rules.loader import load_rules
from mistwatch.store.database import Store

DOWN = """
id: down
kind: threshold
scope: device
metric: device.connected
below: 0.5
"""


def _down(value: float) -> list:
    return [device(device__connected=value)]


def test_for_duration_keeps_the_alert_pending_until_it_has_held_long_enough(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN + "for: 10m\n"))
    assert cycles.run(_down(0)) and cycles.only().state == "pending"
    cycles.step(_down(0), minutes=5)
    assert cycles.only().state == "pending"
    cycles.step(_down(0), minutes=5)
    assert cycles.only().state == "firing"
    assert cycles.only().pending_since == T0 and cycles.only().firing_since == T0 + timedelta(minutes=10)


def test_for_cycles_counts_consecutive_evaluations_whatever_their_spacing(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN + "for: {cycles: 3}\n"))
    cycles.run(_down(0))
    cycles.step(_down(0), minutes=60)
    assert cycles.only().state == "pending"
    cycles.step(_down(0), minutes=1)
    assert cycles.only().state == "firing"


def test_a_pending_alert_that_clears_goes_back_to_inactive_without_a_resolution(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN + "for: 10m\n"))
    cycles.run(_down(0))
    assert cycles.step(_down(1)) == {}
    assert [(t.from_state, t.to_state) for t in cycles.transitions] == [
        ("inactive", "pending"), ("pending", "inactive")]


def test_keep_firing_for_holds_a_cleared_alert(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN + "keep_firing_for: 15m\n"))
    cycles.run(_down(0))
    cycles.step(_down(1), minutes=10)
    assert cycles.only().state == "firing"
    cycles.step(_down(0), minutes=5)  # flaps back: still the same episode
    cycles.step(_down(1), minutes=10)
    assert cycles.only().state == "firing"
    cycles.step(_down(1), minutes=5)
    assert cycles.only().state == "resolved"
    assert [t.to_state for t in cycles.transitions] == ["firing", "resolved"]


def test_recover_when_expression_gives_hysteresis(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: cpu
        kind: threshold
        scope: device
        metric: device.cpu
        above: 90
        recover_when: "value < 70"
    """))
    cycles.run([device(device__cpu=95)])
    cycles.step([device(device__cpu=80)])
    assert cycles.only().state == "firing"
    cycles.step([device(device__cpu=69)])
    assert cycles.only().state == "resolved"


def test_resolved_alert_keeps_the_value_at_resolution_and_is_deleted_after_24h(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN))
    cycles.run(_down(0))
    cycles.step(_down(1))
    alert = cycles.only()
    assert (alert.state, alert.value, alert.resolved_at) == ("resolved", 1.0, T0 + timedelta(minutes=5))
    cycles.step(_down(1), minutes=RESOLVED_RETENTION.total_seconds() / 60 - 10)
    assert cycles.only().state == "resolved"
    cycles.step(_down(1), minutes=10)
    assert cycles.alerts == {}


def test_a_condition_that_comes_back_starts_a_new_episode(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN + "for: 5m\n"))
    cycles.run(_down(0))
    cycles.step(_down(0))
    cycles.step(_down(1))
    cycles.step(_down(0))
    alert = cycles.only()
    assert alert.state == "pending" and alert.resolved_at is None and alert.firing_since is None
    assert alert.pending_since == cycles.now and alert.true_count == 1


@pytest.mark.parametrize("failure", [
    "entity",  # the metric of that entity is unknown
    "collector",  # a collector error covers device metrics
])
def test_unknown_data_freezes_a_firing_alert(tmp_path, failure):
    cycles = Cycles(rules_from(tmp_path, DOWN))
    cycles.run(_down(0))
    if failure == "entity":
        cycles.step([device(unknown=frozenset({"device.*"}))])
    else:
        cycles.step([device()], errors=[CollectorError("mist", "stats/devices", "HTTP 500",
                                                       kinds=frozenset({"device"}))])
    assert cycles.only().state == "firing"
    assert [t.to_state for t in cycles.transitions] == ["firing"]


def test_unknown_data_never_fires_a_pending_alert(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN + "for: {cycles: 2}\n"))
    cycles.run(_down(0))
    cycles.step([], errors=[CollectorError("mist", "stats/devices", "HTTP 500")])
    cycles.step([], errors=[CollectorError("mist", "stats/devices", "HTTP 500")])
    assert cycles.only().state == "pending" and cycles.only().true_count == 1


def test_an_entity_that_leaves_the_scope_resolves_its_alert(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN))
    cycles.run(_down(0))
    cycles.step([])
    assert cycles.only().state == "resolved" and cycles.only().value is None


def test_identity_never_contains_values_so_a_changing_value_is_one_alert(tmp_path):
    cycles = Cycles(rules_from(tmp_path, "id: cov\nkind: threshold\nmetric: sle.wifi.coverage\nbelow: 0.9\n"))
    cycles.run([site(sle__wifi__coverage=0.5)])
    cycles.step([site(sle__wifi__coverage=0.6)])
    assert len(cycles.alerts) == 1 and cycles.only().value == 0.6


def test_a_removed_rule_resolves_its_firing_alerts(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN))
    cycles.run(_down(0))
    cycles.ruleset = rules_from(tmp_path, "id: other\nkind: threshold\nmetric: site.clients\nbelow: 1\n", "b.yaml")
    cycles.step(_down(0))
    assert cycles.only().state == "resolved"
    assert cycles.only().annotations["resolved_because"] == "rule removed or disabled"


def _store_cycle(state_dir, ruleset, entities, now, *, dry_run=False):
    with Store.open(state_dir) as store:
        snapshot = Snapshot(now, entities=entities)
        run_id = store.start_run(now, "insights")
        if not dry_run:
            store.write_snapshot(run_id, snapshot)
        outcome = run_rules(store, ruleset, snapshot, now, dry_run=dry_run)
        store.finish_run(run_id, finished_at=now, status="ok")
        return outcome


def test_state_persists_across_runs_in_a_real_store(tmp_path):
    rule_file = tmp_path / "r.yaml"
    rule_file.write_text(DOWN + "for: 10m\n", encoding="utf-8")
    ruleset = load_rules([rule_file], builtin_kinds())
    state = tmp_path / "state"
    first = _store_cycle(state, ruleset, _down(0), T0)
    assert [a.state for a in first.alerts] == ["pending"]
    second = _store_cycle(state, ruleset, _down(0), T0 + timedelta(minutes=10))  # store reopened
    assert [a.state for a in second.alerts] == ["firing"]
    assert second.alerts[0].summary
    third = _store_cycle(state, ruleset, _down(1), T0 + timedelta(minutes=15))
    assert [(a.state, a.value) for a in third.alerts] == [("resolved", 1.0)]
    with Store.open(state) as store:
        assert [(t.from_state, t.to_state, t.value) for t in store.transitions()] == [
            ("inactive", "pending", 0.0), ("pending", "firing", 0.0), ("firing", "resolved", 1.0)]
        assert next(iter(store.load_alerts().values())).state == "resolved"


def test_dry_run_computes_but_saves_nothing(tmp_path):
    ruleset = rules_from(tmp_path, DOWN)
    state = tmp_path / "state"
    outcome = _store_cycle(state, ruleset, _down(0), T0, dry_run=True)
    assert [a.state for a in outcome.alerts] == ["firing"]
    with Store.open(state) as store:
        assert store.load_alerts() == {} and store.transitions() == []


def test_change_rule_recovers_against_the_baseline_kept_in_the_store(tmp_path):
    ruleset = rules_from(tmp_path, "id: drop\nkind: change\nmetric: sle.wifi.coverage\ndrop: 0.1\n")
    state = tmp_path / "state"
    for hour in range(24):
        _store_cycle(state, ruleset, [site(sle__wifi__coverage=0.95)], T0 + timedelta(hours=hour))
    for hour in range(24, 50):
        outcome = _store_cycle(state, ruleset, [site(sle__wifi__coverage=0.8)], T0 + timedelta(hours=hour))
    assert [(a.state, a.baseline) for a in outcome.alerts] == [("firing", pytest.approx(0.95))]


def test_a_disabled_rule_is_not_evaluated_and_its_firing_alerts_resolve(tmp_path):
    cycles = Cycles(rules_from(tmp_path, DOWN))
    cycles.run(_down(0))
    cycles.ruleset = rules_from(tmp_path, DOWN + "enabled: false\n", "disabled.yaml")
    cycles.step(_down(0))
    assert cycles.only().state == "resolved"
    cycles.step(_down(0))
    assert cycles.evaluation is not None and cycles.evaluation.findings == []


def test_a_resolved_alert_keeps_the_texts_of_when_its_condition_held_and_the_value_at_resolution(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: cov
        kind: threshold
        scope: site
        metric: sle.wifi.coverage
        below: 0.9
        summary: "{{ labels.site_name }}: coverage {{ value | pct }} (below {{ threshold | pct }})"
        recommendation: "Check the APs at {{ site }}"
    """))
    cycles.run([site(sle__wifi__coverage=0.5)])
    cycles.step([site(sle__wifi__coverage=0.97)])
    alert = cycles.only()
    assert alert.state == "resolved" and alert.value == 0.97
    assert alert.summary == "Dublin: coverage 50% (below 90%)"  # not "97% (below 90%)"
    assert alert.recommendation == "Check the APs at Dublin"


def test_a_resolved_change_alert_evaluated_again_gives_no_template_error_note(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: clients-drop
        kind: change
        scope: site
        metric: site.clients
        offset: 1h
        tolerance: 10m
        unit: percent
        min_baseline: 20
        drop: 40
        summary: "{{ labels.site_name }}: {{ (-change) | round(0) | num }}% fewer clients"
    """))
    cycles.run([site(site__clients=50)])
    cycles.step([site(site__clients=10)], minutes=60)
    assert cycles.only().state == "firing"
    cycles.step([site(site__clients=50)], minutes=60)  # resolved; its reference (10) is under min_baseline
    assert cycles.only().state == "resolved"
    cycles.step([site(site__clients=50)], minutes=5)
    assert cycles.only().state == "resolved" and cycles.notes() == []
