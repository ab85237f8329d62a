"""Health score arithmetic: what each component costs, and how unknown data is treated."""

from __future__ import annotations

import pytest
from fixtures_reports import T0, alert, device_entity, site_entity

from mistwatch.model import CollectorError, Entity, Snapshot
from mistwatch.report.health import compute_health, health_metrics


def snap(*entities, errors=()):
    return Snapshot(taken_at=T0, entities=list(entities), errors=list(errors))


def parts(score):
    return {name: lost for name, lost, _ in score.components}


def test_a_perfect_site_scores_100_and_lists_its_components_at_zero_cost():
    site = site_entity("s1", "Dublin", total=4, up=4, sles={"wifi.coverage": 1.0}, alarms=(0, 0, 0))
    score = compute_health(snap(site), []).sites["site:s1"]
    assert score.score == 100.0
    assert parts(score) == {"availability": 0.0, "sle.wifi.coverage": 0.0, "mist_alarms": 0.0, "alerts": 0.0}
    assert score.unknown == []


def test_each_component_costs_its_weight_times_its_badness():
    # 1 of 4 APs down: 50 * 0.6 (losing every AP) * 0.25 = 7.5. SLEs against the 90 % target and 50 %
    # floor: coverage 0.8 -> 0.25, capacity 0.6 -> 0.75; together 1.0 of the 20-point group, split
    # 5 / 15. One major Mist alarm: 10 * 0.5 = 5; one minor alert: 20 * 0.25 = 5
    site = site_entity("s1", "Dublin", total=4, up=3, sles={"wifi.coverage": 0.8, "wifi.capacity": 0.6},
                       alarms=(1, 0, 1))
    alerts = [alert("ap_down", "minor", "s1", "Dublin")]
    score = compute_health(snap(site), alerts).sites["site:s1"]
    assert parts(score) == {"availability": 7.5, "sle.wifi.capacity": 15.0, "sle.wifi.coverage": 5.0,
                            "mist_alarms": 5.0, "alerts": 5.0}
    assert score.score == 62.5
    details = {c: d for c, _, d in score.components}
    assert details["availability"] == "1 of 4 APs down"
    assert details["sle.wifi.coverage"] == "coverage 80% (target 90%)"


def test_an_sle_at_or_above_its_target_costs_nothing():
    site = site_entity("s1", "Dublin", sles={"wifi.coverage": 0.9, "wifi.capacity": 0.97})
    assert compute_health(snap(site), []).sites["site:s1"].score == 100.0


def test_one_collapsed_sle_costs_the_whole_sle_group_however_many_sles_there_are():
    sles = {f"wifi.s{i}": 0.99 for i in range(13)}
    sles["wifi.coverage"] = 0.4
    site = site_entity("s1", "Dublin", sles=sles)
    score = compute_health(snap(site), []).sites["site:s1"]
    assert parts(score)["sle.wifi.coverage"] == 20.0
    assert score.score == 80.0


def test_costs_are_capped_at_the_whole_component():
    site = site_entity("s1", "Dublin", sles={}, alarms=(5, 5, 0))
    alerts = [alert(f"r{i}", "critical", "s1", "Dublin") for i in range(3)]
    score = compute_health(snap(site), alerts).sites["site:s1"]
    # no SLEs: availability 50 and alarms 10 share the 80 measured points (alarms 10/60*80 = 13.3);
    # three critical alerts cost the whole 20 of the alerts component, no more
    assert parts(score) == {"availability": 0.0, "mist_alarms": 13.3, "alerts": 20.0}
    assert score.score == pytest.approx(66.7)


@pytest.mark.parametrize(("severity", "points"), [("critical", 20.0), ("major", 10.0), ("minor", 5.0), ("info", 0.0)])
def test_an_alert_costs_its_documented_points_whatever_else_the_site_reports(severity, points):
    # only Mist alarms measured: the alerts component is never scaled up to fill the missing ones
    site = site_entity("s1", "Dublin", sles={}, alarms=(0, 0, 0))
    bare = Entity(site.key, "site", site.labels, {k: v for k, v in site.metrics.items() if "alarms" in k})
    score = compute_health(snap(bare), [alert("x", severity, "s1", "Dublin")]).sites["site:s1"]
    assert parts(score)["alerts"] == points


def test_only_firing_alerts_cost_points():
    site = site_entity("s1", "Dublin", sles={"wifi.coverage": 1.0})
    alerts = [alert("a", "critical", "s1", "Dublin", state="pending"),
              alert("b", "critical", "s1", "Dublin", state="resolved")]
    assert compute_health(snap(site), alerts).sites["site:s1"].score == 100.0


def test_configured_weights_replace_the_defaults():
    site = site_entity("s1", "Dublin", total=2, up=1, sles={}, alarms=(0, 0, 0))
    score = compute_health(snap(site), [], {"availability": 80, "mist_alarms": 0, "alerts": 20}).sites["site:s1"]
    assert parts(score)["availability"] == 24.0  # all 80 measured points: half the APs down, 0.6 * 0.5
    assert score.score == 76.0


def test_a_named_sle_weight_makes_it_a_component_of_its_own():
    site = site_entity("s1", "Dublin", sles={"wifi.coverage": 0.5, "wifi.capacity": 0.5})
    score = compute_health(snap(site), [], {"sle.wifi.coverage": 0.0, "sle.wifi.capacity": 30.0}).sites["site:s1"]
    assert parts(score)["sle.wifi.coverage"] == 0.0  # weight 0: never costs
    # 50 % is at the floor: its whole own weight, 30 of the 90 measured weight sharing 80 points
    assert parts(score)["sle.wifi.capacity"] == pytest.approx(26.7)


def test_unknown_availability_is_skipped_and_marked_not_counted_as_down():
    site = site_entity("s1", "Dublin", total=4, up=0, sles={"wifi.coverage": 1.0},
                       unknown=frozenset({"site.devices_*"}))
    score = compute_health(snap(site), []).sites["site:s1"]
    assert "availability" not in parts(score)
    assert score.unknown == ["availability"]
    assert score.score == 100.0


def test_a_collector_error_marks_sles_unknown_for_every_site():
    site = site_entity("s1", "Dublin", sles={})
    err = CollectorError("mist", "insights/sites-sle", "HTTP 500", kinds=frozenset({"site"}),
                         metrics=frozenset({"sle.*"}))
    score = compute_health(snap(site, errors=[err]), []).sites["site:s1"]
    assert score.unknown == ["sle.wifi", "sle.wired", "sle.wan"]
    assert score.score == 100.0


def test_a_site_with_only_unknown_data_has_no_score():
    site = site_entity("s1", "Dublin", sles={}, unknown=frozenset({"*"}))
    score = compute_health(snap(site), [alert("x", "major", "s1", "Dublin")]).sites["site:s1"]
    assert score.score is None
    assert "availability" in score.unknown


def test_a_disconnected_device_scores_zero():
    dev = device_entity("d1", "AP-1", "s1", "Dublin", connected=False)
    score = compute_health(snap(dev), []).devices["device:d1"]
    assert score.score == 0.0
    assert score.components == [("device.connected", 100.0, "disconnected")]


def test_device_cpu_costs_from_its_threshold_upwards():
    dev = device_entity("d1", "AP-1", "s1", "Dublin", cpu=90, memory=10)
    score = compute_health(snap(dev), [alert("hot", "major", "s1", "Dublin", device="d1")]).devices["device:d1"]
    # weights 60 + 10 + 10 + 20 = 100: cpu (90-80)/20 = 0.5 -> 5; one major alert 20 * 0.5 = 10
    assert parts(score) == {"device.connected": 0.0, "device.cpu": 5.0, "device.memory": 0.0, "device.alerts": 10.0}
    assert score.score == 85.0


def test_health_metrics_leave_unknown_scores_out():
    known = site_entity("s1", "Dublin", sles={"wifi.coverage": 1.0})
    blind = site_entity("s2", "Cork", sles={}, unknown=frozenset({"*"}))
    metrics = health_metrics(compute_health(snap(known, blind), []))
    assert metrics["site.health"] == {"site:s1": 100.0}


def test_org_score_is_the_mean_of_known_site_scores():
    a = site_entity("s1", "A", total=4, up=4, sles={}, alarms=(0, 0, 0))
    b = site_entity("s2", "B", total=2, up=1, sles={}, alarms=(0, 0, 0))
    result = compute_health(snap(a, b), [])
    assert result.sites["site:s2"].score == pytest.approx(100 - 50 / 60 * 80 * 0.6 * 0.5, abs=0.1)
    assert result.org == pytest.approx((100 + result.sites["site:s2"].score) / 2, abs=0.05)


# -- impact drives the score -------------------------------------------------------------------------

def _site(sid, name, *, ap=(4, 4), switch=(1, 1), gateway=(1, 1), sles=None):
    """A Mist site with per-role device counts (total, connected)."""
    base = site_entity(sid, name, sles=sles or {"wifi.coverage": 0.95}, alarms=(0, 0, 0))
    m = dict(base.metrics)
    for role, (total, up) in (("ap", ap), ("switch", switch), ("gateway", gateway)):
        m[f"site.{role}_total"], m[f"site.{role}_connected"] = float(total), float(up)
    m["site.devices_total"] = float(ap[0] + switch[0] + gateway[0])
    m["site.devices_connected"] = float(ap[1] + switch[1] + gateway[1])
    return Entity(base.key, "site", base.labels, m)


def test_a_site_without_its_gateway_scores_below_one_with_half_its_aps_down():
    no_wan = _site("s1", "No WAN", ap=(4, 4), gateway=(1, 0))
    some_aps = _site("s2", "Some APs", ap=(6, 3))
    alerts = [alert("site-gateway-down", "critical", "s1", "No WAN"),
              alert("site-ap-availability-low", "critical", "s2", "Some APs")]
    sites = compute_health(snap(no_wan, some_aps), alerts).sites
    assert sites["site:s1"].score < sites["site:s2"].score
    assert parts(sites["site:s1"])["availability"] == 50.0  # the whole component: the site is cut off


def test_a_site_without_switches_scores_below_one_with_some_aps_down():
    no_switch = _site("s1", "No switch", switch=(1, 0))
    some_aps = _site("s2", "Some APs", ap=(6, 3))
    sites = compute_health(snap(no_switch, some_aps), []).sites
    assert sites["site:s1"].score < sites["site:s2"].score


def test_the_availability_detail_names_the_roles_that_are_down():
    site = _site("s1", "Seattle", switch=(1, 0), gateway=(1, 0))
    detail = {c: d for c, _, d in compute_health(snap(site), []).sites["site:s1"].components}["availability"]
    assert detail == "1 of 1 gateway down (no WAN edge); 1 of 1 switch down (no switching)"


def test_a_site_with_nothing_measured_but_our_alerts_has_no_score():
    bare = Entity("site:s1", "site", {"site_id": "s1", "site_name": "Dublin"}, {})
    assert compute_health(snap(bare), [alert("x", "critical", "s1", "Dublin")]).sites["site:s1"].score is None


def test_a_plugins_entity_is_never_scored_as_a_site():
    ups = Entity("ups:1", "ups", {"site_id": "s9", "site_name": "Server room"}, {"ups.battery": 0.2})
    result = compute_health(snap(_site("s1", "Dublin"), ups), [alert("ups-low", "critical", "s9", "Server room")])
    assert list(result.sites) == ["site:s1"] and result.org == 100.0


def test_the_demos_bad_sites_rank_as_an_operator_would(demo_morning):
    by_name = {s.name: s.score for s in demo_morning.result.health.sites.values()}
    ranked = sorted(("Seattle Branch 1", "Stockholm Office", "Vienna Branch 1", "Cologne Branch 1"),
                    key=by_name.__getitem__)
    # gateway and switch down < 3 of 4 APs down < three SLEs collapsed < a switch loop alarm
    assert ranked == ["Seattle Branch 1", "Stockholm Office", "Vienna Branch 1", "Cologne Branch 1"]
    assert by_name["Seattle Branch 1"] <= 20


def test_devices_with_equal_components_share_one_list_so_60000_devices_do_not_hold_60000():
    devices = [device_entity(f"d{i}", f"AP {i}", "s1", "Dublin", cpu=10.0) for i in range(3)]
    result = compute_health(snap(*devices), [])
    first, second, third = (result.devices[f"device:d{i}"] for i in range(3))
    assert first.components is second.components is third.components
    assert first.unknown is second.unknown
    assert first.components == [("device.connected", 0.0, "connected"), ("device.cpu", 0.0, "cpu 10%"),
                                ("device.memory", 0.0, "memory 40%"), ("device.alerts", 0.0, "no firing alerts")]
