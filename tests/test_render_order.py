"""What people receive reads the same every time: NEW marks in every channel, and one order of
messages and alerts (severity, then site, then rule)."""

from __future__ import annotations

from datetime import timedelta

from fixtures_notify import T0, make_alert

from mistwatch.notify.outbox import LogEntry
from mistwatch.notify.pipeline import build_notification, plan
from mistwatch.notify.settings import load_settings
from mistwatch.render import alert_rows

CONSOLE = {"name": "console", "type": "console"}


def _console_text(n, width=160):
    from rich.console import Console

    from mistwatch.notifiers.console import render

    console = Console(width=width, record=True, color_system=None)
    console.print(render(n))
    return console.export_text()


def test_the_console_notifier_marks_new_alerts_like_the_other_channels():
    old = make_alert("ap-offline", device="AP-OLD", device_id="d-old")
    new = make_alert("ap-offline", device="AP-NEW", device_id="d-new")
    n = build_notification("n1", "console", [old, new], [], {"site_id": "site-1"}, "g", T0, new_keys=[new.key])
    lines = _console_text(n).splitlines()
    assert any("NEW" in line for line in lines)
    row_of_new = next(i for i, line in enumerate(lines) if "AP-NEW" in line)
    row_of_old = next(i for i, line in enumerate(lines) if "AP-OLD" in line)
    # the mark sits in the new alert's row (its second line), and nowhere near the old one
    assert "NEW" in lines[row_of_new + 1] or "NEW" in lines[row_of_new]
    assert "NEW" not in lines[row_of_old] and "NEW" not in lines[row_of_old + 1]


def test_the_console_notifier_marks_nothing_in_a_groups_first_message():
    n = build_notification("n1", "console", [make_alert()], [], {"site_id": "site-1"}, "g", T0)
    assert "NEW" not in _console_text(n)


def test_alerts_in_a_message_go_by_severity_then_site_then_rule():
    alerts = [
        make_alert("b-rule", site="Zagreb", site_id="s-z", device_id="d1", severity="major"),
        make_alert("a-rule", site="Zagreb", site_id="s-z", device_id="d2", severity="critical"),
        make_alert("b-rule", site="Athens", site_id="s-a", device_id="d3", severity="major"),
        make_alert("a-rule", site="Athens", site_id="s-a", device_id="d4", severity="major"),
    ]
    n = build_notification("n1", "console", alerts, [], {}, "g", T0)
    assert [(r.severity, r.site, r.rule_id) for r in alert_rows(n)] == [
        ("critical", "Zagreb", "a-rule"), ("major", "Athens", "a-rule"), ("major", "Athens", "b-rule"),
        ("major", "Zagreb", "b-rule")]


def test_messages_of_a_cycle_go_by_their_most_severe_alert_then_site(notify_env):
    notify_env.configure([CONSOLE])
    alerts = [make_alert(site="Zagreb", site_id="s-z", severity="major"),
              make_alert(site="Athens", site_id="s-a", device_id="d2", severity="major"),
              make_alert(site="Madrid", site_id="s-m", device_id="d3", severity="critical")]
    for order in (alerts, alerts[::-1]):
        p = plan(load_settings(notify_env.config), order, {}, [], T0)
        assert [n.group["site_id"] for n in p.notifications] == ["s-m", "s-a", "s-z"]


def test_resolved_alerts_follow_the_firing_ones_in_the_same_order(notify_env):
    notify_env.configure([CONSOLE], routes=[{"notifiers": ["console"], "group_by": []}])
    a = make_alert("x", site="Zagreb", site_id="s-z", severity="major")
    b = make_alert("x", site="Athens", site_id="s-a", device_id="d2", severity="major")
    c = make_alert("y", site="Athens", site_id="s-a", device_id="d3", severity="critical")
    log = {("route1|", "console"): LogEntry("route1|", "console", T0, "t1", {a.key: "major", b.key: "major"})}
    later = T0 + timedelta(minutes=15)
    gone = [make_alert("x", site="Zagreb", site_id="s-z", severity="major", state="resolved", resolved_at=later),
            make_alert("x", site="Athens", site_id="s-a", device_id="d2", severity="major", state="resolved",
                       resolved_at=later)]
    p = plan(load_settings(notify_env.config), [*gone, c], log, [], later)
    (n,) = p.notifications
    assert [(r.state, r.site) for r in alert_rows(n)] == [
        ("firing", "Athens"), ("resolved", "Athens"), ("resolved", "Zagreb")]
