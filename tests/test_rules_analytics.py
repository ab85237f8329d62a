"""The analytics rule kinds (anomaly, forecast, flapping), through the real evaluator and lifecycle over
an in-memory history that rolls up like the store."""

from __future__ import annotations

import random
import re
import textwrap
import warnings
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from fixtures_rules import Cycles, device, site

from mistwatch.errors import ConfigError
from mistwatch.plugins.analytics import analytics_kinds
from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.loader import load_rules

# a Tuesday 10:00 UTC, after five weeks of history
NOW = datetime(2026, 3, 10, 10, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def ruleset(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules([path], {**builtin_kinds(), **analytics_kinds()})


def office(at: datetime, rng: random.Random, busy: float = 300, quiet: float = 8) -> float:
    """Clients of an office: busy on weekdays 9-17 (local), quiet at night and at weekends, +-5 %."""
    busy_now = at.weekday() < 5 and 9 <= at.hour < 17
    return round((busy if busy_now else quiet) * rng.uniform(0.95, 1.05))


def cycles_with_history(rules, days: float, value=office, *, key: str = "site:s1", metric: str = "site.clients",
                        tz: str = "UTC", seed: int = 1, until: datetime = NOW) -> Cycles:
    """Cycles at ``until`` whose history holds hourly samples of ``metric`` for ``days`` before it."""
    cycles = Cycles(rules, start=until)
    rng = random.Random(seed)
    at = until - timedelta(days=days)
    while at < until:
        cycles.history.add(at, {metric: {key: value(at.astimezone(ZoneInfo(tz)), rng)}})
        at += HOUR
    return cycles


ANOMALY = """
    id: clients-anomaly
    kind: anomaly
    scope: site
    metric: site.clients
    deviations: 4
    direction: below
    min_change: 20
    severity: major
    summary: "{{ labels.site_name }}: {{ extra.explanation }}"
"""


def site_tz(tz: str = "UTC", **metrics: float):
    entity = site(**metrics)
    entity.labels["timezone"] = tz
    return entity


# --- anomaly -------------------------------------------------------------------------------------


def test_anomaly_fires_below_the_usual_for_this_weekday_and_hour_and_explains_itself(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35)
    alert = cycles.only() if cycles.run([site_tz(site__clients=142)]) else None
    assert alert is not None and alert.state == "firing"
    assert re.fullmatch(r"Dublin: 142, usual for a Tuesday 10:00 is \d+ \(\d+–\d+\)", alert.summary)
    assert alert.baseline == pytest.approx(300, rel=0.05)


def test_anomaly_stays_quiet_for_a_usual_value(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35)
    assert cycles.run([site_tz(site__clients=290)]) == {}


def test_anomaly_knows_weekends_are_quiet(tmp_path):
    saturday = NOW + timedelta(days=4)
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35, until=saturday)
    assert cycles.run([site_tz(site__clients=8)]) == {}
    assert cycles.step([site_tz(site__clients=300)], minutes=5) == {}  # not "above" either: direction below


def test_anomaly_ignores_a_drop_smaller_than_min_change(tmp_path):
    night = NOW.replace(hour=3)
    # 8 clients usual at 03:00; 1 is far below in deviations but only 7 clients fewer
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35, until=night)
    assert cycles.run([site_tz(site__clients=1)]) == {}
    no_floor = cycles_with_history(ruleset(tmp_path, ANOMALY.replace("min_change: 20", "min_change: 0")), days=35,
                                   until=night)
    assert no_floor.run([site_tz(site__clients=1)]) != {}


def test_anomaly_without_enough_history_notes_it_and_never_alerts(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=0.5)
    assert cycles.run([site_tz(site__clients=0)]) == {}
    assert any("without a baseline for site.clients yet (less than 1d of history" in n for n in cycles.notes())


def test_anomaly_on_the_first_weekend_has_no_baseline_yet_rather_than_a_weekday_one(tmp_path):
    saturday = NOW + timedelta(days=4)
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=5, until=saturday)  # Monday to Friday
    assert cycles.run([site_tz(site__clients=8)]) == {}
    assert any("without a baseline for site.clients yet" in n for n in cycles.notes())


def test_anomaly_uses_a_daily_profile_while_fewer_than_three_weeks_are_stored(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=10)
    alert = cycles.only() if cycles.run([site_tz(site__clients=100)]) else None
    assert alert is not None
    assert "usual for 10:00 is" in alert.summary
    assert alert.annotations["basis"] == "daily"


def test_anomaly_baseline_is_not_dragged_by_a_past_outage(tmp_path):
    outage_day = (NOW - timedelta(days=7)).date()

    def with_outage(at, rng):
        return 0 if at.date() == outage_day else office(at, rng)

    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35, value=with_outage)
    alert = cycles.only() if cycles.run([site_tz(site__clients=150)]) else None
    assert alert is not None and alert.baseline == pytest.approx(300, rel=0.05)


def test_anomaly_direction_above_ignores_drops_and_fires_on_rises(tmp_path):
    rules = ruleset(tmp_path, ANOMALY.replace("direction: below", "direction: above"))
    cycles = cycles_with_history(rules, days=35)
    assert cycles.run([site_tz(site__clients=100)]) == {}
    assert cycles.step([site_tz(site__clients=900)], minutes=5) != {}


def test_anomaly_reads_weekday_and_hour_in_the_site_timezone(tmp_path):
    # 10:00 UTC is 19:00 in Tokyo: the office there is closed, so a low value is usual
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35, tz="Asia/Tokyo")
    assert cycles.run([site_tz("Asia/Tokyo", site__clients=8)]) == {}
    assert cycles_with_history(ruleset(tmp_path, ANOMALY), days=35).run([site_tz(site__clients=8)]) != {}


def test_anomaly_resolves_when_the_value_is_usual_again(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=35)
    cycles.run([site_tz(site__clients=50)])
    cycles.step([site_tz(site__clients=295)], minutes=5)
    alert = cycles.only()
    assert alert.state == "resolved"
    assert alert.threshold < alert.baseline  # the bound it had to fall below, not one above usual


def test_anomaly_tiers_need_more_deviations_for_the_more_severe_tier(tmp_path):
    with pytest.raises(ConfigError, match="can never apply"):
        ruleset(tmp_path, """
            id: a
            kind: anomaly
            metric: site.clients
            tiers:
              - {severity: major, deviations: 6}
              - {severity: critical, deviations: 4}
        """)


# --- forecast ------------------------------------------------------------------------------------

FORECAST = """
    id: memory-forecast
    kind: forecast
    scope: device
    metric: device.memory
    window: 24h
    horizon: 12h
    above: 90
    severity: major
    summary: "{{ labels.device_name }}: {{ extra.explanation }}"
"""


def leak(rate: float, start: float = 50, spike_at: int | None = None):
    def value(at, rng):
        hours = (at - (NOW - timedelta(days=2))).total_seconds() / 3600
        if spike_at is not None and round(hours) == spike_at:
            return 99.0
        return start + rate * hours + rng.uniform(-0.5, 0.5)
    return value


def test_forecast_fires_with_the_projected_crossing_time(tmp_path):
    # 50 % two days ago, +0.7 %/h: 83.6 now, 90 in about 9 h
    cycles = cycles_with_history(ruleset(tmp_path, FORECAST), days=2, value=leak(0.7), key="device:d1",
                                 metric="device.memory")
    alerts = cycles.run([device(device__memory=83.6)])
    alert = next(iter(alerts.values()))
    eta = datetime.fromisoformat(alert.annotations["eta"])
    assert timedelta(hours=7) < eta - NOW < timedelta(hours=11)
    assert "projected to reach 90 at" in alert.summary


def test_forecast_stays_quiet_for_a_flat_or_too_slow_trend(tmp_path):
    for rate in (0.0, 0.1):  # 0.1 %/h reaches 90 in days, beyond the 12 h horizon
        cycles = cycles_with_history(ruleset(tmp_path, FORECAST), days=2, value=leak(rate), key="device:d1",
                                     metric="device.memory")
        assert cycles.run([device(device__memory=50 + rate * 48)]) == {}


def test_forecast_is_not_fooled_by_one_spike(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, FORECAST), days=2, value=leak(0.0, spike_at=40),
                                 key="device:d1", metric="device.memory")
    assert cycles.run([device(device__memory=50)]) == {}


def test_forecast_resolves_when_the_projection_no_longer_crosses(tmp_path):
    cycles = cycles_with_history(ruleset(tmp_path, FORECAST), days=2, value=leak(0.7), key="device:d1",
                                 metric="device.memory")
    cycles.run([device(device__memory=83.6)])
    # the device rebooted a day ago and memory has been flat at 40 % since
    rng = random.Random(3)
    for h in range(24):
        cycles.history.add(NOW + h * HOUR + timedelta(minutes=30), {"device.memory": {"device:d1": 40 + rng.random()}})
    cycles.run([device(device__memory=40)], at=NOW + 24 * HOUR + timedelta(minutes=40))
    assert cycles.only().state == "resolved"


def test_forecast_window_must_be_between_6h_and_14d(tmp_path):
    with pytest.raises(ConfigError, match="window must be between 6h and 14d"):
        ruleset(tmp_path, FORECAST.replace("window: 24h", "window: 2h"))


# --- flapping ------------------------------------------------------------------------------------

FLAPPING = """
    id: device-flapping
    kind: flapping
    scope: device
    window: 1h
    changes: 4
    severity: minor
    summary: "{{ labels.device_name }} changed state {{ extra.changes }} times in {{ extra.window }}"
"""


def test_flapping_fires_once_per_entity_that_changes_state_often(tmp_path):
    cycles = Cycles(ruleset(tmp_path, FLAPPING), start=NOW)
    for up in (1, 0, 1, 0, 1):
        cycles.step([device("d1", device__connected=up), device("d2", name="ap-02", device__connected=1),
                     device("d3", name="ap-03", device__connected=0 if up == 0 and cycles.now == NOW else 1)])
    assert cycles.states("device-flapping") == {"ap-01": "firing"}
    assert cycles.only().summary == "ap-01 changed state 4 times in 1h"


def test_flapping_resolves_once_the_window_holds_too_few_changes(tmp_path):
    cycles = Cycles(ruleset(tmp_path, FLAPPING), start=NOW)
    for up in (1, 0, 1, 0, 1):
        cycles.step([device(device__connected=up)])
    for _ in range(12):
        cycles.step([device(device__connected=1)])
    assert cycles.only().state == "resolved"


def test_flapping_needs_at_least_two_changes(tmp_path):
    with pytest.raises(ConfigError, match="changes"):
        ruleset(tmp_path, FLAPPING.replace("changes: 4", "changes: 1"))


def test_anomaly_at_most_sites_of_a_country_at_once_is_a_holiday_noted_not_alerted(tmp_path):
    rules = ruleset(tmp_path, ANOMALY + "    widespread: {by: country_code, share: 0.5, min_sites: 3}\n")
    cycles = Cycles(rules, start=NOW)
    rng = random.Random(2)
    at = NOW - timedelta(days=35)
    keys = [f"site:s{i}" for i in range(8)]
    while at < NOW:
        cycles.history.add(at, {"site.clients": {k: office(at, rng) for k in keys}})
        at += HOUR

    def sites(closed: set[int]):
        out = []
        for i in range(8):  # five Irish sites, three Dutch ones (as usual: the witness)
            entity = site(f"s{i}", f"Site {i}", site__clients=8 if i in closed else 300)
            entity.labels.update(timezone="UTC", country_code="IE" if i < 5 else "NL")
            out.append(entity)
        return out

    assert cycles.run(sites({0, 1, 2, 3})) == {}  # 4 of the 5 Irish sites: a holiday
    assert any("4 of 5 site(s) with country_code=IE" in n for n in cycles.notes())
    alerts = cycles.step(sites({0, 5}), minutes=5)  # one Irish and one Dutch site: each is an incident
    assert sorted(a.labels["site_name"] for a in alerts.values()) == ["Site 0", "Site 5"]


def test_anomaly_everywhere_at_once_is_an_incident_not_a_holiday(tmp_path):
    rules = ruleset(tmp_path, ANOMALY + "    widespread: {by: country_code, share: 0.5, min_sites: 2}\n")
    cycles = Cycles(rules, start=NOW)
    rng = random.Random(2)
    at = NOW - timedelta(days=35)
    keys = [f"site:s{i}" for i in range(6)]
    while at < NOW:
        cycles.history.add(at, {"site.clients": {k: office(at, rng) for k in keys}})
        at += HOUR
    entities = []
    for i in range(6):  # every site of both countries drops (RADIUS is down)
        entity = site(f"s{i}", f"Site {i}", site__clients=8)
        entity.labels.update(timezone="UTC", country_code="IE" if i < 3 else "NL")
        entities.append(entity)
    assert len(cycles.run(entities)) == 6


# --- upstream ------------------------------------------------------------------------------------

UPSTREAM = """
rules:
  - {id: few-clients, kind: threshold, scope: site, metric: site.clients, below: 10, severity: major}
  - {id: slow-connect, kind: threshold, scope: site, metric: sle.wifi.time_to_connect, below: 0.5,
     severity: major}
  - id: likely-upstream
    kind: upstream
    any_of: [few-clients, slow-connect]
    by: org_id
    share: 0.1
    min_sites: 5
    severity: critical
    summary: "{{ extra.count }} of {{ extra.total }} sites {{ extra.rule }} at once: {{ extra.names | join(', ') }}"
"""


def org(down: int, slow: int = 0, total: int = 20):
    return [site(f"s{i}", f"Site {i:02d}", site__clients=2 if i < down else 50,
                 sle__wifi__time_to_connect=0.2 if down <= i < down + slow else 0.9) for i in range(total)]


def test_upstream_groups_many_sites_with_the_same_condition_into_one_alert(tmp_path):
    cycles = Cycles(ruleset(tmp_path, UPSTREAM), start=NOW)
    alerts = cycles.run(org(down=5))
    upstream = cycles.only("likely-upstream")
    assert upstream.summary == "5 of 20 sites few-clients at once: Site 00, Site 01, Site 02, Site 03, Site 04"
    assert len(upstream.causes) == 5 and len(alerts) == 6


def test_upstream_needs_min_sites_the_same_way(tmp_path):
    cycles = Cycles(ruleset(tmp_path, UPSTREAM), start=NOW)
    cycles.run(org(down=4))
    cycles.step(org(down=3, slow=3))  # six sites, but three one way and three another
    assert "likely-upstream" not in {a.rule_id for a in cycles.alerts.values()}


def test_upstream_resolves_when_the_sites_recover(tmp_path):
    cycles = Cycles(ruleset(tmp_path, UPSTREAM), start=NOW)
    cycles.run(org(down=6))
    cycles.step(org(down=1))
    assert cycles.only("likely-upstream").state == "resolved"


def test_anomaly_holiday_witnesses_may_be_small_sites_at_night_elsewhere(tmp_path):
    rules = ruleset(tmp_path, ANOMALY + "    widespread: {by: country_code, share: 0.5, min_sites: 3}\n")
    cycles = Cycles(rules, start=NOW)
    rng = random.Random(4)
    at = NOW - timedelta(days=35)
    tokyo = ZoneInfo("Asia/Tokyo")
    while at < NOW:  # 10:00 UTC: office hours in Dublin, 19:00 (quiet, 8 clients) in Tokyo
        cycles.history.add(at, {"site.clients": {
            **{f"site:s{i}": office(at, rng) for i in range(5)},
            **{f"site:s{i}": office(at.astimezone(tokyo), rng) for i in range(5, 8)}}})
        at += HOUR
    entities = []
    for i in range(8):
        entity = site(f"s{i}", f"Site {i}", site__clients=8)  # Dublin closed (a holiday); Tokyo as usual
        entity.labels.update(timezone="UTC" if i < 5 else "Asia/Tokyo", country_code="IE" if i < 5 else "JP")
        entities.append(entity)
    assert cycles.run(entities) == {}
    assert any("5 of 5 site(s) with country_code=IE" in n for n in cycles.notes())


def test_the_fast_nan_median_and_quantile_agree_with_numpy():
    import warnings

    import numpy as np

    from mistwatch.plugins.analytics import _nanmedian, _nanquantile

    rng = np.random.default_rng(1)
    values = rng.normal(size=(200, 9))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[3] = np.nan  # a row without any value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.allclose(_nanmedian(values, axis=1), np.nanmedian(values, axis=1), equal_nan=True)
        for q in (0.25, 0.75, 0.9):
            assert np.allclose(_nanquantile(values, q), np.nanquantile(values, q, axis=1), equal_nan=True)


def shop(at: datetime, rng: random.Random, busy: float = 300) -> float:
    """Clients of a shop: open every day 10-18 (local), busiest on Saturday, +-5 %."""
    open_now = 10 <= at.hour < 18
    return round((busy * (1.0 if at.weekday() == 5 else 0.7) if open_now else 2) * rng.uniform(0.95, 1.05))


def test_anomaly_on_a_holiday_still_alerts_a_site_far_below_even_its_quietest_weekday(tmp_path):
    # Five Irish offices closed for a holiday (calmed), and an Irish shop that opened as on a
    # Saturday but has an outage: a holiday does not explain that, it alerts.
    rules = ruleset(tmp_path, ANOMALY + "    widespread: {by: country_code, share: 0.5, min_sites: 3}\n")
    cycles = Cycles(rules, start=NOW)
    rng = random.Random(2)
    at = NOW - timedelta(days=35)
    while at < NOW:
        values = {f"site:s{i}": office(at, rng) for i in range(8)}
        values["site:s9"] = shop(at, rng)
        cycles.history.add(at, {"site.clients": values})
        at += HOUR
    entities = []
    for i in (*range(8), 9):
        closed = i < 5
        entity = site(f"s{i}", f"Site {i}", site__clients=8 if closed else 20 if i == 9 else 300)
        entity.labels.update(timezone="UTC", country_code="IE" if i < 5 or i == 9 else "NL")
        entities.append(entity)
    alerts = cycles.run(entities)
    assert sorted(a.labels["site_name"] for a in alerts.values()) == ["Site 9"]
    assert any("with country_code=IE" in n for n in cycles.notes())


def test_anomaly_on_three_weeks_is_not_fooled_by_an_outage_and_a_holiday_at_this_weekday_and_hour(tmp_path):
    # Three Tuesdays stored; at 10:00 one was an outage (0) and one a holiday (8): the median of the
    # three alone would say 8 is usual. The last week's weekdays at 10:00 say 300.
    bad_days = {(NOW - timedelta(days=7)).date(), (NOW - timedelta(days=14)).date()}

    def history(at, rng):
        if at.date() in bad_days and 9 <= at.hour < 17:
            return 0 if at.date() == min(bad_days) else 8
        return office(at, rng)

    cycles = cycles_with_history(ruleset(tmp_path, ANOMALY), days=21, value=history)
    alert = cycles.only() if cycles.run([site_tz(site__clients=100)]) else None
    assert alert is not None and alert.annotations["basis"] == "weekly"
    assert alert.baseline == pytest.approx(300, rel=0.06)


def test_relative_noise_is_the_values_own_not_inflated_by_the_median_it_is_compared_with():
    import numpy as np

    from mistwatch.plugins.analytics import _relative_noise

    rng = np.random.default_rng(3)
    start = int(NOW.timestamp()) // 3600 * 3600 - 21 * 86400  # three weeks, hourly
    hours = np.arange(start, start + 21 * 86400, 3600)
    values = 200 * (1 + 0.1 * rng.standard_normal((50, len(hours))))  # 10 % noise, always busy
    noise = _relative_noise(values, hours, timezone.utc)
    assert np.median(noise) == pytest.approx(0.10, rel=0.08)


def _theil_sen_reference(times, values):
    import numpy as np

    i, j = np.triu_indices(values.shape[1], k=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slopes = np.nanmedian((values[:, j] - values[:, i]) / (times[j] - times[i]), axis=1)
        intercepts = np.nanmedian(values - slopes[:, None] * times[None, :], axis=1)
    return slopes, intercepts


def _trend_rows(n_rows: int):
    import numpy as np

    rng = np.random.default_rng(5)
    times = np.append(np.linspace(-48, -1, 48), 0.0)
    values = rng.normal(50, 5, (n_rows, 49)) + rng.normal(0, 1, (n_rows, 1)) * times[None, :]
    values[rng.random(values.shape) < 0.2] = np.nan  # gaps, and a row with nothing but the present
    values[7, :-1] = np.nan
    return times, values


def test_forecast_slopes_over_many_entities_are_those_of_all_rows_at_once():
    import numpy as np

    from mistwatch.plugins.analytics import _theil_sen

    times, values = _trend_rows(1300)  # more rows than one block
    got, want = _theil_sen(times, values), _theil_sen_reference(times, values)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_forecast_slopes_of_6000_devices_never_hold_every_pairwise_slope_at_once():
    # 6,000 rows x 1,176 pairs of float64 is 56 MB, and the division made a second one: the rules
    # stage of a 1,000-site org with a week of history peaked at 150 MB RSS
    import tracemalloc

    from mistwatch.plugins.analytics import _theil_sen

    times, values = _trend_rows(6000)
    tracemalloc.start()
    try:
        _theil_sen(times, values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


@pytest.mark.parametrize("hours", [0, 2])
def test_anomaly_and_forecast_with_too_little_history_note_it_without_loading_numpy(tmp_path, hours):
    # in a process of its own: numpy stays loaded once any test here has used it. Two hours of
    # history are fewer than the forecast's min_samples (6) and the anomaly's min_history (1d).
    import subprocess
    import sys
    from pathlib import Path

    for name, text in (("anomaly.yaml", ANOMALY), ("forecast.yaml", FORECAST)):
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    script = textwrap.dedent(f"""
        import sys
        from datetime import timedelta
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fixtures_rules import Cycles, device
        from test_rules_analytics import NOW, site_tz
        from mistwatch.plugins.analytics import analytics_kinds
        from mistwatch.plugins.rulekinds import builtin_kinds
        from mistwatch.rules.loader import load_rules

        rules = load_rules([Path({str(tmp_path)!r}) / "anomaly.yaml", Path({str(tmp_path)!r}) / "forecast.yaml"],
                           {{**builtin_kinds(), **analytics_kinds()}})
        cycles = Cycles(rules, start=NOW - timedelta(hours={hours}))
        for _ in range({hours}):
            cycles.step([site_tz(site__clients=10), device(device__memory=50)], minutes=60)
        print(cycles.run([site_tz(site__clients=0), device(device__memory=99)], at=NOW))
        print("numpy" in sys.modules)
        print(*cycles.notes(), sep="\\n")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    alerts, numpy_loaded, *notes = done.stdout.splitlines()
    assert (alerts, numpy_loaded) == ("{}", "False")
    assert any("1 site(s) without a baseline for site.clients yet" in n for n in notes)
    assert any("1 device(s) with fewer than 6 hourly values of device.memory" in n for n in notes)
