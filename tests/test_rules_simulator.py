"""The default rule pack against the simulated Mist org, through the real collector and store:
a healthy day, the degraded morning a day later (only the affected sites alert, each for what is
wrong there), then recovery resolves everything."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fixtures_rules import REPO

from mistwatch.hookspecs import CollectContext
from mistwatch.host import make_host
from mistwatch.rules.lifecycle import RulesOutcome, run_rules
from mistwatch.rules.loader import load_rules
from mistwatch.store.database import Store

DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def test_default_pack_on_the_simulator_alerts_the_affected_sites_then_resolves(simulator, tmp_path):
    host = make_host(entry_points=False)
    collector = host.collectors()["mist"]
    known = {m for c in host.collectors().values() for m in c.metrics}
    ruleset = load_rules([REPO / "rules"], host.rule_kinds(), known_metrics=known)
    settings = {"base_url": simulator.url, "token": simulator.token, "org_id": simulator.org.org_id}
    cursor: dict = {}

    def cycle(when: datetime, scenario: str) -> RulesOutcome:
        nonlocal cursor
        simulator.org.set_scenario(scenario)
        simulator.org.now = when
        snapshot = collector.collect(CollectContext(settings=settings, now=when, cursor=cursor))
        cursor = snapshot.cursors.get("mist", {})
        assert not snapshot.errors, snapshot.errors
        with Store.open(tmp_path / "state") as store:
            run_id = store.start_run(when, "insights")
            store.write_snapshot(run_id, snapshot)
            store.roll_up(when)  # as the engine does each cycle
            outcome = run_rules(store, ruleset, snapshot, when)
            store.finish_run(run_id, finished_at=when, status="ok")
        return outcome

    def firing(outcome: RulesOutcome) -> dict[str, set[str]]:
        by_site: dict[str, set[str]] = {}
        for alert in outcome.alerts:
            if alert.state == "firing":
                by_site.setdefault(alert.labels.get("site_id", ""), set()).add(alert.rule_id)
        return by_site

    for minutes in (0, 15, 30, 45, 60):  # the hours the degraded day compares with
        healthy = cycle(DAY1 + timedelta(minutes=minutes), "healthy")
        assert firing(healthy) == {}
    assert any(n.kind == "insufficient_history" for n in healthy.notes)

    day2 = DAY1 + timedelta(days=1)
    for minutes in (0, 15, 30, 45, 60):  # site-clients-drop holds for 1h
        degraded = cycle(day2 + timedelta(minutes=minutes), "degraded")
    by_site = firing(degraded)
    affected = simulator.org.affected_sites("degraded")
    assert set(by_site) == set(affected)

    site_ids = {s.index: s.id for s in simulator.org.sites}
    assert {"ap-offline", "site-ap-availability-low"} <= by_site[site_ids[1]]
    assert {"wifi-coverage-low", "wifi-coverage-drop", "site-clients-drop"} <= by_site[site_ids[2]]
    assert {"mist-alarm", "mist-marvis-action", "device-psu-failed"} <= by_site[site_ids[3]]
    assert {"gateway-offline", "switch-offline", "site-gateway-down", "site-degraded"} <= by_site[site_ids[4]]
    degraded_alert = next(a for a in degraded.alerts if a.rule_id == "site-degraded")
    assert degraded_alert.severity == "critical"
    assert any(c.startswith("site-devices-down") for c in degraded_alert.causes)
    assert any("-drop{" in c for c in degraded_alert.causes)

    recovered = cycle(day2 + timedelta(hours=3), "recovered")  # past site-degraded's within: 1h
    assert firing(recovered) == {}
    resolved_sites = {a.labels.get("site_id") for a in recovered.alerts if a.state == "resolved"}
    assert resolved_sites == set(affected)


def pack_cycle(simulator, tmp_path):
    """A function running one cycle of the default pack on the simulator: (when, scenario) -> outcome."""
    host = make_host(entry_points=False)
    collector = host.collectors()["mist"]
    known = {m for c in host.collectors().values() for m in c.metrics}
    ruleset = load_rules([REPO / "rules"], host.rule_kinds(), known_metrics=known)
    settings = {"base_url": simulator.url, "token": simulator.token, "org_id": simulator.org.org_id}
    kept: dict = {"cursor": {}, "state": {}}

    def cycle(when: datetime, scenario: str) -> RulesOutcome:
        simulator.org.set_scenario(scenario)
        simulator.org.now = when
        snapshot = collector.collect(CollectContext(settings=settings, now=when, cursor=kept["cursor"],
                                                    state=kept["state"]))
        kept["cursor"] = snapshot.cursors.get("mist", {})
        assert not snapshot.errors, snapshot.errors
        with Store.open(tmp_path / "state") as store:
            run_id = store.start_run(when, "insights")
            store.write_snapshot(run_id, snapshot)
            outcome = run_rules(store, ruleset, snapshot, when)
            store.finish_run(run_id, finished_at=when, status="ok")
        return outcome

    return cycle


def firing_by_site(outcome: RulesOutcome) -> dict[str, set[str]]:
    by_site: dict[str, set[str]] = {}
    for alert in outcome.alerts:
        if alert.state == "firing":
            by_site.setdefault(alert.labels.get("site_id", ""), set()).add(alert.rule_id)
    return by_site


def test_an_upgrade_wave_is_not_an_outage_but_a_stuck_upgrade_and_a_failed_one_alert(simulator, tmp_path):
    cycle = pack_cycle(simulator, tmp_path)
    for minutes in range(0, 75, 15):
        outcome = cycle(DAY1 + timedelta(minutes=minutes), "upgrade-wave")
    ids = {s.index: s.id for s in simulator.org.sites}
    by_site = firing_by_site(outcome)
    assert set(by_site) == {ids[2], ids[3]}
    assert by_site[ids[2]] == {"device-upgrade-stuck"}  # the switch, upgrading for over an hour
    assert by_site[ids[3]] == {"device-upgrade-failed"}  # and no alert for the AP that never connected
    offline = {"ap-offline", "switch-offline", "gateway-offline", "site-ap-availability-low", "site-devices-down"}
    assert not any(a.rule_id in offline for a in outcome.alerts)


def test_a_mistwatch_started_during_a_stuck_upgrade_alerts_it_at_its_first_cycle(simulator, tmp_path):
    cycle = pack_cycle(simulator, tmp_path)
    outcome = cycle(DAY1, "upgrade-wave")  # the switch of site 2 has been upgrading for 2 hours (Mist's timestamp)
    ids = {s.index: s.id for s in simulator.org.sites}
    (stuck,) = [a for a in outcome.alerts if a.rule_id == "device-upgrade-stuck"]
    assert stuck.state == "firing" and stuck.labels["site_id"] == ids[2] and stuck.labels["device_type"] == "switch"
    assert "for 2h" in stuck.summary


def test_a_wan_link_failure_alerts_the_link_the_path_the_lossy_path_and_the_bgp_peer(simulator, tmp_path):
    cycle = pack_cycle(simulator, tmp_path)
    for minutes in range(0, 35, 5):
        outcome = cycle(DAY1 + timedelta(minutes=minutes), "wan-link-failure")
    ids = {s.index: s.id for s in simulator.org.sites}
    by_site = firing_by_site(outcome)
    assert by_site == {ids[1]: {"gateway-wan-link-down", "wan-path-down", "mist-alarm"},
                       ids[2]: {"wan-path-lossy", "wan-path-poor-mos"},
                       ids[3]: {"bgp-peer-down"}}
    lossy = next(a for a in outcome.alerts if a.rule_id == "wan-path-lossy")
    assert lossy.severity == "major" and "6% of packets" in lossy.summary
    alarm = next(a for a in outcome.alerts if a.rule_id == "mist-alarm")
    assert alarm.severity == "major" and alarm.labels["event_type"] == "vpn_peer_down"
