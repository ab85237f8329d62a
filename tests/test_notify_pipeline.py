"""The pipeline's decisions: routing, grouping, dedup, inhibition, silences, maintenance windows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fixtures_notify import T0, make_alert, resolved

from mistwatch.errors import ConfigError
from mistwatch.notify import outbox
from mistwatch.notify.pipeline import plan
from mistwatch.notify.settings import load_settings, parse_matcher

CONSOLE = {"name": "console", "type": "console"}
EMAIL = {"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": 25,
         "from": "mistwatch@example.com", "to": ["noc@example.com"]}
SHIPPED_ROUTES = [{"matchers": ["severity=~critical|major"], "notifiers": ["mail"], "continue": True},
                  {"notifiers": ["console"]}]


def _plan(env, alerts, now=T0, log=None, silences=()):
    return plan(load_settings(env.config), alerts, log or {}, list(silences), now)


def _by_notifier(p):
    return sorted((n.notifier, n.title) for n in p.notifications)


# -- matchers and routing -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("severity=critical", {"severity": "critical"}, True),
    ("severity=critical", {"severity": "major"}, False),
    ("site_name!=Lab", {"site_name": "Dublin"}, True),
    ("site_name!=Lab", {"site_name": "Lab"}, False),
    ("severity=~critical|major", {"severity": "major"}, True),
    ("severity=~crit", {"severity": "critical"}, False),  # regexes match the whole value
    ("device_type!~ap|switch", {"device_type": "gateway"}, True),
    ("device_id!=", {}, False),  # a missing label is the empty string
    ('site_name="Dublin HQ"', {"site_name": "Dublin HQ"}, True),
])
def test_matchers(text, labels, expected):
    assert parse_matcher(text).matches(labels) is expected


def test_critical_and_major_go_to_email_and_everything_to_the_console(notify_env):
    notify_env.configure([EMAIL, CONSOLE], routes=SHIPPED_ROUTES)
    p = _plan(notify_env, [make_alert(severity="critical"),
                           make_alert("slow_dhcp", site="Cork", site_id="site-2", severity="minor")])
    assert _by_notifier(p) == [("console", "[mistwatch] CRITICAL: 1 firing at Dublin HQ"),
                               ("console", "[mistwatch] MINOR: 1 firing at Cork"),
                               ("mail", "[mistwatch] CRITICAL: 1 firing at Dublin HQ")]


def test_the_first_matching_route_wins_without_continue(notify_env):
    notify_env.configure([EMAIL, CONSOLE], routes=[
        {"matchers": ["site_name=Dublin HQ"], "notifiers": ["mail"]}, {"notifiers": ["console"]}])
    p = _plan(notify_env, [make_alert()])
    assert [n.notifier for n in p.notifications] == ["mail"]


def test_an_alert_no_route_matches_is_reported_as_suppressed(notify_env):
    notify_env.configure([EMAIL], routes=[{"matchers": ["severity=critical"], "notifiers": ["mail"]}])
    p = _plan(notify_env, [make_alert(severity="info")])
    assert p.notifications == []
    assert [s.reason for s in p.suppressed] == ["no route matches"]


def test_without_routes_every_notifier_gets_every_alert(notify_env):
    notify_env.configure([EMAIL, CONSOLE])
    assert [n.notifier for n in _plan(notify_env, [make_alert()]).notifications] == ["console", "mail"]


def test_grouping_by_site_by_rule_or_not_at_all(notify_env):
    alerts = [make_alert(), make_alert(site="Cork", site_id="site-2", device_id="dev-2"),
              make_alert("slow_dhcp", device_id="dev-3", device_type="switch")]
    for group_by, expected in (([], 1), (["rule_id"], 2), (["site_id"], 2), (["site_id", "rule_id"], 3)):
        notify_env.configure([EMAIL], routes=[{"notifiers": ["mail"], "group_by": group_by}])
        assert len(_plan(notify_env, alerts).notifications) == expected, group_by
    notify_env.configure([EMAIL], routes=[{"notifiers": ["mail"], "group_by": []}])
    assert _plan(notify_env, alerts).notifications[0].title == "[mistwatch] CRITICAL: 3 firing at 2 sites"


def test_pending_alerts_send_nothing(notify_env):
    notify_env.configure([EMAIL])
    assert _plan(notify_env, [make_alert(state="pending")]).notifications == []


# -- dedup -----------------------------------------------------------------------------------------

def _cycle(env, alerts, now):
    """Plan and record as sent (what notify does, minus delivery)."""
    p = plan(load_settings(env.config), alerts, outbox.load_log(env.store), [], now)
    with env.store.transaction() as db:
        outbox.save_log(db, p.log)
    return p.notifications


def test_a_raised_severity_sends_and_a_lowered_one_does_not(notify_env):
    notify_env.configure([EMAIL])
    _cycle(notify_env, [make_alert(severity="major")], T0)
    raised = _cycle(notify_env, [make_alert(severity="critical")], T0 + timedelta(minutes=15))
    assert [n.title for n in raised] == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]
    assert _cycle(notify_env, [make_alert(severity="major")], T0 + timedelta(minutes=30)) == []
    assert len(_cycle(notify_env, [make_alert(severity="critical")], T0 + timedelta(minutes=45))) == 1


def test_the_repeat_interval_is_per_route(notify_env):
    notify_env.configure([EMAIL], routes=[{"notifiers": ["mail"], "repeat_interval": "1h"}])
    alert = make_alert()
    assert len(_cycle(notify_env, [alert], T0)) == 1
    assert _cycle(notify_env, [alert], T0 + timedelta(minutes=59)) == []
    (reminder,) = _cycle(notify_env, [alert], T0 + timedelta(hours=1))
    assert reminder.data["reminder"] is True
    assert reminder.thread_id is not None


def test_renaming_or_regrouping_a_route_re_sends_nothing_and_resolved_still_threads_once(notify_env, smtp_sink):
    a, b = make_alert(), make_alert("switch_port_errors", device="SW-1", device_id="dev-2")
    notify_env.configure([smtp_sink.settings()], routes=[{"name": "noc", "notifiers": ["mail"]}])
    notify_env.notify([a, b], T0)
    notify_env.configure([smtp_sink.settings()], routes=[{"name": "noc-mail", "notifiers": ["mail"]}])
    assert notify_env.notify([a, b], T0 + timedelta(minutes=15)).planned == []
    notify_env.configure([smtp_sink.settings()],
                         routes=[{"name": "noc-mail", "notifiers": ["mail"], "group_by": ["rule_id"]}])
    assert notify_env.notify([a, b], T0 + timedelta(minutes=30)).planned == []
    notify_env.notify([resolved(a, T0 + timedelta(minutes=40)), b], T0 + timedelta(minutes=45))
    first, done = smtp_sink.messages
    assert done["Subject"] == "[mistwatch] RESOLVED: 1 alert at Dublin HQ"
    assert done["In-Reply-To"] == first["Message-ID"]


def test_a_resolved_alert_nobody_was_told_about_sends_nothing(notify_env):
    notify_env.configure([EMAIL])
    assert _cycle(notify_env, [resolved(make_alert(), T0)], T0) == []


def test_resolved_message_carries_the_value_at_resolution_and_duration(notify_env):
    from mistwatch.render import alert_rows

    notify_env.configure([EMAIL])
    alert = make_alert(value=12.0, threshold=50.0, firing_since=T0)
    _cycle(notify_env, [alert], T0)
    (n,) = _cycle(notify_env, [resolved(alert, T0 + timedelta(hours=1, minutes=30), value=87.5)],
                  T0 + timedelta(hours=2))
    (row,) = alert_rows(n)
    assert (row.state, row.value, row.reference, row.duration) == ("resolved", "87.5", "threshold 50",
                                                                    "lasted 1h30m")


def test_dry_run_returns_the_plan_and_changes_nothing(notify_env):
    notify_env.configure([EMAIL])
    result = notify_env.notify([make_alert()], T0, dry_run=True)
    assert [n.title for n in result.planned] == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]
    assert notify_env.outbox_rows() == []
    assert outbox.load_log(notify_env.store) == {}


# -- inhibition ------------------------------------------------------------------------------------

def _site_alert(rule_id, **kwargs):
    return make_alert(rule_id, device=None, device_id=None, summary=f"Dublin HQ: {rule_id}", **kwargs)


@pytest.mark.parametrize("source", ["site-gateway-down", "site-degraded"])
def test_a_sites_gateway_down_or_degraded_alert_mutes_that_sites_device_alerts_by_default(
        notify_env, smtp_sink, source):
    notify_env.configure([smtp_sink.settings()])  # the shipped default inhibit rule
    site = _site_alert(source)
    gw_same_site = make_alert("gateway-offline", device="GW-1", device_id="gw-1", device_type="gateway")
    ap_same_site = make_alert("ap-offline", device="AP-01", device_id="ap-1")
    ap_other_site = make_alert("ap-offline", site="Cork", site_id="site-2", device="AP-09", device_id="ap-9")
    result = notify_env.notify([site, gw_same_site, ap_same_site, ap_other_site], T0)
    assert sorted((s.name, s.reason) for s in result.suppressed) == [
        ("ap-offline AP-01 at Dublin HQ", f"inhibited by {source} at Dublin HQ"),
        ("gateway-offline GW-1 at Dublin HQ", f"inhibited by {source} at Dublin HQ")]
    bodies = {m["Subject"]: m.get_body(preferencelist=("plain",)).get_content() for m in smtp_sink.messages}
    assert set(bodies) == {"[mistwatch] CRITICAL: 1 firing at Dublin HQ", "[mistwatch] CRITICAL: 1 firing at Cork"}
    assert source in bodies["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]
    assert "AP-01" not in bodies["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]
    assert "GW-1" not in bodies["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]


def test_when_the_gateway_recovers_the_muted_device_alert_is_sent(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    gateway = _site_alert("site-gateway-down")
    ap = make_alert("ap_offline", device="AP-01", device_id="ap-1")
    notify_env.notify([gateway, ap], T0)
    notify_env.notify([resolved(gateway, T0 + timedelta(minutes=10)), ap], T0 + timedelta(minutes=15))
    last = smtp_sink.messages[-1]
    assert last["Subject"] == "[mistwatch] CRITICAL: 1 firing, 1 resolved at Dublin HQ"
    assert "AP-01" in last.get_body(preferencelist=("plain",)).get_content()


def test_custom_inhibit_rules_and_equal_labels(notify_env):
    notify_env.configure([EMAIL], inhibit=[{"source": ["severity=critical"], "target": ["severity=minor"],
                                            "equal": ["site_id"]}])
    crit = make_alert(severity="critical")
    minor_same = make_alert("slow_dhcp", device_id="d2", severity="minor")
    minor_other = make_alert("slow_dhcp", site="Cork", site_id="site-2", device_id="d3", severity="minor")
    p = _plan(notify_env, [crit, minor_same, minor_other])
    assert [s.alert_key for s in p.suppressed] == [minor_same.key]


def test_two_alerts_matching_both_sides_do_not_mute_each_other(notify_env):
    notify_env.configure([EMAIL], inhibit=[{"source": ["device_type=gateway"], "target": ["device_id!="]}])
    gw1 = make_alert("gateway-offline", device_id="gw-1", device_type="gateway")
    gw2 = make_alert("gateway-offline", device_id="gw-2", device_type="gateway")
    ap = make_alert("ap-offline", device_id="ap-1")
    assert [s.alert_key for s in _plan(notify_env, [gw1, gw2, ap]).suppressed] == [ap.key]


# -- silences --------------------------------------------------------------------------------------

def test_a_silence_mutes_matching_alerts_until_it_ends(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    outbox.add_silence(notify_env.store, ["site_name=Dublin HQ"], starts_at=T0, ends_at=T0 + timedelta(hours=2),
                       reason="fibre work", author="ana", now=T0)
    dublin, cork = make_alert(), make_alert(site="Cork", site_id="site-2", device_id="dev-2")
    result = notify_env.notify([dublin, cork], T0 + timedelta(minutes=5))
    assert [m["Subject"] for m in smtp_sink.messages] == ["[mistwatch] CRITICAL: 1 firing at Cork"]
    assert result.suppressed[0].alert_key == dublin.key
    assert "fibre work" in result.suppressed[0].reason
    notify_env.notify([dublin, cork], T0 + timedelta(hours=2))
    assert smtp_sink.messages[-1]["Subject"] == "[mistwatch] CRITICAL: 1 firing at Dublin HQ"


def test_an_expired_silence_mutes_nothing(notify_env):
    notify_env.configure([EMAIL])
    silence = outbox.add_silence(notify_env.store, ["severity=critical"], starts_at=T0,
                                 ends_at=T0 + timedelta(days=1), reason="r", author="a", now=T0)
    assert outbox.expire_silence(notify_env.store, silence.id, T0 + timedelta(minutes=1)).id == silence.id
    result = notify_env.notify([make_alert()], T0 + timedelta(minutes=2), dry_run=True)
    assert result.suppressed == [] and len(result.planned) == 1


# -- maintenance windows ---------------------------------------------------------------------------

NY_WEEKEND_NIGHT = {"name": "sat-night", "timezone": "America/New_York", "days": ["sat"],
                    "start": "22:00", "end": "02:00", "matchers": ["site_name=Dublin HQ"]}
SAT = datetime(2026, 11, 28, tzinfo=timezone.utc)  # a Saturday; New York is UTC-5 in November


@pytest.mark.parametrize(("utc_time", "muted"), [
    (SAT + timedelta(hours=23), False),            # Sat 18:00 in New York
    (SAT + timedelta(days=1, hours=3), True),      # Sat 22:00 New York: the window opens
    (SAT + timedelta(days=1, hours=6, minutes=30), True),  # Sun 01:30 New York: across midnight
    (SAT + timedelta(days=1, hours=7), False),     # Sun 02:00 New York: closed
    (SAT + timedelta(days=8, hours=4), True),      # a week later
])
def test_a_weekly_window_in_new_york_time(notify_env, utc_time, muted):
    notify_env.configure([EMAIL], maintenance=[NY_WEEKEND_NIGHT])
    p = _plan(notify_env, [make_alert(firing_since=utc_time)], now=utc_time)
    assert bool(p.suppressed) is muted
    assert len(p.notifications) == (0 if muted else 1)


@pytest.mark.parametrize(("utc_time", "muted"), [
    (SAT + timedelta(hours=4, minutes=59), False),  # Fri 23:59 in New York
    (SAT + timedelta(hours=5), True),               # Sat 00:00 New York: the window opens
    (SAT + timedelta(days=1, hours=4, minutes=59), True),  # Sat 23:59
    (SAT + timedelta(days=1, hours=5), False),      # Sun 00:00: closed again
])
def test_a_weekly_window_whose_end_equals_its_start_lasts_the_whole_day(notify_env, utc_time, muted):
    whole_saturday = {"name": "saturday", "timezone": "America/New_York", "days": ["sat"], "start": "00:00",
                      "end": "00:00"}
    notify_env.configure([EMAIL], maintenance=[whole_saturday])
    assert bool(_plan(notify_env, [make_alert(firing_since=utc_time)], now=utc_time).suppressed) is muted


def test_a_window_only_covers_alerts_its_matchers_select(notify_env):
    notify_env.configure([EMAIL], maintenance=[NY_WEEKEND_NIGHT])
    now = SAT + timedelta(days=1, hours=4)
    p = _plan(notify_env, [make_alert(site="Cork", site_id="site-2")], now=now)
    assert len(p.notifications) == 1


def test_a_problem_that_began_and_ended_inside_a_window_sends_nothing_at_all(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], maintenance=[NY_WEEKEND_NIGHT])
    start = SAT + timedelta(days=1, hours=3, minutes=30)
    alert = make_alert(firing_since=start)
    notify_env.notify([alert], start)
    notify_env.notify([resolved(alert, start + timedelta(hours=1))], start + timedelta(hours=1))
    # still listed as resolved after the window closed: no recovery mail either
    notify_env.notify([resolved(alert, start + timedelta(hours=1))], SAT + timedelta(days=1, hours=8))
    assert smtp_sink.messages == []


def test_a_problem_still_firing_when_the_window_closes_is_announced_then(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], maintenance=[NY_WEEKEND_NIGHT])
    start = SAT + timedelta(days=1, hours=6)
    alert = make_alert(firing_since=start)
    notify_env.notify([alert], start)
    assert smtp_sink.messages == []
    notify_env.notify([alert], SAT + timedelta(days=1, hours=7))
    assert [m["Subject"] for m in smtp_sink.messages] == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]


def test_a_one_off_window_with_dates(notify_env):
    notify_env.configure([EMAIL], maintenance=[{"name": "fibre", "timezone": "Europe/Berlin",
                                                "from": "2026-11-23T10:00", "to": "2026-11-23T12:00"}])
    assert _plan(notify_env, [make_alert()], now=T0 + timedelta(hours=1)).suppressed  # 11:00 Berlin
    assert not _plan(notify_env, [make_alert()], now=T0 + timedelta(hours=3)).suppressed  # 13:00 Berlin


# -- configuration errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("sections", "key", "words"), [
    ({"routes": [{"matchers": ["severity=~(critical"], "notifiers": ["mail"]}]}, "routes[0].matchers[0]",
     "bad regular expression"),
    ({"routes": [{"notifiers": ["pager"]}]}, "routes[0].notifiers[0]", "unknown notifier 'pager'"),
    ({"routes": [{"notifiers": ["mail"], "repeat_interval": "often"}]}, "routes[0].repeat_interval",
     "not a duration"),
    ({"maintenance": [{"name": "w", "timezone": "Mars/Olympus", "start": "22:00", "end": "23:00"}]},
     "maintenance[0].timezone", "unknown time zone"),
    ({"maintenance": [{"name": "w", "days": ["someday"], "start": "22:00", "end": "23:00"}]},
     "maintenance[0].days", "unknown day"),
])
def test_bad_notification_settings_are_one_clear_config_error(notify_env, sections, key, words):
    notify_env.configure([EMAIL])
    notify_env.config.data.update(sections)
    with pytest.raises(ConfigError) as info:
        load_settings(notify_env.config)
    assert info.value.key == key
    assert words in info.value.message
    assert info.value.file.endswith("config.yaml")


def test_a_bad_matcher_in_the_file_is_reported_with_its_line(notify_env):
    from mistwatch.config import load_config

    notify_env.configure([EMAIL])
    path = notify_env.dir / "config.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "routes:\n- notifiers: [mail]\n  matchers:\n"
                    "  - severity=critical\n  - site_name=~(unclosed\n", encoding="utf-8")
    lines = path.read_text(encoding="utf-8").splitlines()
    with pytest.raises(ConfigError) as info:
        load_settings(load_config(path, notify_env.host))
    assert info.value.key == "routes[0].matchers[1]"
    assert lines[info.value.line - 1].strip() == "- site_name=~(unclosed"


@pytest.mark.parametrize(("utc_time", "muted"), [
    (datetime(2026, 7, 4, 21, 30, tzinfo=timezone.utc), True),     # 22:30 Irish summer time
    (datetime(2026, 11, 28, 21, 30, tzinfo=timezone.utc), False),  # 21:30 in winter: not yet
    (datetime(2026, 11, 28, 22, 30, tzinfo=timezone.utc), True),
])
def test_a_weekly_window_follows_daylight_saving(notify_env, utc_time, muted):
    notify_env.configure([EMAIL], maintenance=[{"name": "w", "timezone": "Europe/Dublin", "days": ["sat"],
                                                "start": "22:00", "end": "23:59"}])
    assert bool(_plan(notify_env, [make_alert()], now=utc_time).suppressed) is muted


def test_a_row_shows_threshold_and_baseline_when_the_rule_has_both():
    from mistwatch.notify.pipeline import build_notification
    from mistwatch.render import alert_rows

    alert = make_alert("wifi-coverage-drop", value=0.56, threshold=0.2, baseline=0.94)
    n = build_notification("n", "mail", [alert], [], {}, "g", T0 + timedelta(minutes=5))
    (row,) = alert_rows(n)
    assert (row.value, row.reference, row.duration) == ("0.56", "threshold 0.2, baseline 0.94", "for 5m")


@pytest.mark.parametrize(("rule_id", "value", "threshold", "baseline", "annotations", "expected"), [
    ("wifi-coverage-low", 0.12, 0.75, None, {"metric": "sle.wifi.coverage"}, ("12%", "threshold 75%")),
    ("wifi-coverage-drop", 0.1, 0.2, 0.975, {"metric": "sle.wifi.coverage", "unit": "absolute"},
     ("10%", "change threshold 20 points, baseline 98%")),
    ("site-clients-drop", 14.0, 40.0, 35.0, {"metric": "site.clients", "unit": "percent"},
     ("14", "change threshold 40%, baseline 35")),
    ("site-gateway-down", 0.0, 1.0, None, {"metric": "site.gateway_connected"}, ("0", "threshold 1")),
])
def test_rows_show_sle_values_in_percent_and_change_thresholds_as_changes(
        rule_id, value, threshold, baseline, annotations, expected):
    from dataclasses import replace

    from mistwatch.notify.pipeline import build_notification
    from mistwatch.render import alert_rows

    alert = replace(make_alert(rule_id, value=value, threshold=threshold, baseline=baseline),
                    annotations=annotations)
    (row,) = alert_rows(build_notification("n", "mail", [alert], [], {}, "g", T0))
    assert (row.value, row.reference) == expected
