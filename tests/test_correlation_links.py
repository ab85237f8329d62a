"""A correlation alert (``site-degraded``) names its causes by rule: in the HTML report each cause links
to the cause alert's row; in email each cause links to the site's portal page when there is one."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta

import jsonschema
from fixtures_notify import T0 as MAIL_T0
from fixtures_notify import make_alert
from fixtures_reports import T0, alert
from test_notify_email import _html, _text
from test_report import cycle, schema, store  # noqa: F401 (store: a fixture)

from mistwatch.rules.evaluator import alert_key

SITE = {"site_id": "s0000"}
PORTAL = "https://manage.mist.com/admin/?org_id=org-1#!dashboard/insights/site/s0000"


def site_alert(rule_id: str, severity: str, *, causes: tuple[str, ...] = ()):
    a = alert(rule_id, severity, "s0000", "Site 0000", since=T0 + timedelta(hours=20))
    return dataclasses.replace(a, key=alert_key(rule_id, SITE), causes=causes)


def degraded_site():
    down = site_alert("site-devices-down", "minor")
    coverage = site_alert("wifi-coverage-drop", "major")
    correlation = site_alert("site-degraded", "critical", causes=(down.key, coverage.key))
    return correlation, down, coverage


def anchors(page: str) -> set[str]:
    return set(re.findall(r'<li id="([^"]+)"', page))


def test_each_cause_in_the_html_report_links_to_the_row_of_its_alert(store):  # noqa: F811
    from mistwatch.report.build import render_html

    correlation, down, coverage = degraded_site()
    report, _ = cycle(store, 1, alerts=[correlation, down, coverage])
    page = render_html(report)
    links = re.findall(r'<a href="#(alert-[^"]+)">([^<]+)</a>', page)
    assert [rule for _, rule in links] == ["site-devices-down", "wifi-coverage-drop"]
    assert {target for target, _ in links} <= anchors(page)


def test_a_cause_not_listed_at_the_site_is_named_without_a_dead_link(store):  # noqa: F811
    from mistwatch.report.build import render_html

    correlation, down, _coverage = degraded_site()  # the coverage alert has since gone
    report, _ = cycle(store, 1, alerts=[correlation, down])
    page = render_html(report)
    assert [rule for _, rule in re.findall(r'<a href="#(alert-[^"]+)">([^<]+)</a>', page)] == ["site-devices-down"]
    assert "wifi-coverage-drop" in page


def test_the_report_json_lists_the_causes_and_still_validates(store):  # noqa: F811
    correlation, down, coverage = degraded_site()
    from mistwatch.report.build import report_json

    report, _ = cycle(store, 1, alerts=[correlation, down, coverage])
    jsonschema.Draft202012Validator(schema()).validate(json.loads(report_json(report)))
    (row,) = [a for a in report["alerts"] if a["rule_id"] == "site-degraded"]
    assert [c["rule_id"] for c in row["causes"]] == ["site-devices-down", "wifi-coverage-drop"]


def correlation_mail(**labels: str):
    causes = (alert_key("site-devices-down", SITE), alert_key("wifi-coverage-drop", SITE))
    return dataclasses.replace(
        make_alert("site-degraded", device_id=None, summary="Dublin HQ degraded", **labels), causes=causes)


def test_each_cause_in_the_email_links_to_the_sites_portal_page(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([correlation_mail(portal_url=PORTAL)], MAIL_T0)
    (message,) = smtp_sink.messages
    html = _html(message)
    for rule in ("site-devices-down", "wifi-coverage-drop"):
        assert f'<a href="{PORTAL}" style="color:#1d4ed8;">{rule}</a>' in html
    assert "causes: site-devices-down, wifi-coverage-drop" in _text(message)


def test_without_a_portal_page_the_email_names_the_causes_as_text(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([correlation_mail()], MAIL_T0)
    (message,) = smtp_sink.messages
    html = _html(message)
    assert "Causes: site-devices-down, wifi-coverage-drop" in html


def _correlation_notification(**labels: str):
    from mistwatch.notify.pipeline import build_notification

    return build_notification("n", "chat", [correlation_mail(**labels)], [], {}, "g", MAIL_T0)


def test_slack_names_each_cause_linked_to_the_sites_portal_page():
    from mistwatch.notifiers import slack

    text = json.dumps(slack.payload(_correlation_notification(portal_url=PORTAL)))
    assert f"*Causes:* <{PORTAL}|site-devices-down>, <{PORTAL}|wifi-coverage-drop>" in text


def test_slack_names_the_causes_as_text_without_a_portal_page():
    from mistwatch.notifiers import slack

    assert "*Causes:* site-devices-down, wifi-coverage-drop" in json.dumps(slack.payload(_correlation_notification()))


def test_teams_lists_the_causes_as_a_fact():
    from mistwatch.notifiers import teams

    facts = teams.card(_correlation_notification())["body"][1]["items"][1]["facts"]
    assert {"title": "Causes", "value": "site-devices-down, wifi-coverage-drop"} in facts
