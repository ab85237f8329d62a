"""Values people can read, resolved lines that say how it ended, and a link to the right portal page,
alike in mail, Slack, Teams, the console, the run listing and the report."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from fixtures_notify import T0, make_alert, resolved

from mistwatch.notify.pipeline import build_notification
from mistwatch.render import alert_rows, plain_text, value_texts
from mistwatch.report.build import alert_dict
from mistwatch.report.insights import versus

SITE_PAGE = "https://manage.eu.mist.com/admin/?org_id=org-1#!dashboard/insights/site/site-1/today/site-1"


def _row(alert):
    (row,) = alert_rows(build_notification("n", "mail", *(([alert], []) if alert.state == "firing" else ([], [alert])),
                                           {}, "g", T0 + timedelta(minutes=30)))
    return row


def test_a_ratio_metric_reads_as_percent_like_its_threshold():
    alert = replace(make_alert("site-ap-availability-low", device_id=None, value=0.25, threshold=0.75),
                    annotations={"metric": "site.ap_connected_ratio"})
    assert value_texts(alert) == ("25%", "threshold 75%")


def test_an_offline_device_shows_no_zero_against_a_half():
    alert = replace(make_alert("ap-offline", value=0.0, threshold=0.5), annotations={"metric": "device.connected"})
    row = _row(alert)
    assert (row.value, row.reference) == ("", "")
    assert "0.5" not in plain_text(build_notification("n", "mail", [alert], [], {}, "g", T0))


def test_a_count_stays_a_whole_number():
    alert = replace(make_alert("site-devices-down", device_id=None, value=3.0, threshold=0.0),
                    annotations={"metric": "site.devices_disconnected"})
    assert value_texts(alert) == ("3", "threshold 0")


def test_insights_show_value_and_threshold_as_notifications_do():
    alert = replace(make_alert("wifi-coverage-low", device_id=None, value=0.551, threshold=0.6),
                    annotations={"metric": "sle.wifi.coverage"})
    value, reference = value_texts(alert)
    assert (value, reference) == ("55%", "threshold 60%")
    assert versus(alert) == "55% / 60%"


def test_a_resolved_line_shows_the_value_it_resolved_at_not_the_firing_summary():
    firing = replace(make_alert("wifi-coverage-low", device_id=None, value=0.55, threshold=0.6,
                                summary="Dublin HQ: wifi Coverage SLE 55% (below 60%)"),
                     annotations={"metric": "sle.wifi.coverage"})
    row = _row(resolved(firing, T0 + timedelta(minutes=20), value=0.91))
    assert row.summary == "wifi-coverage-low at Dublin HQ: resolved, now 91%"
    assert row.problem == "Dublin HQ: wifi Coverage SLE 55% (below 60%)"


def test_a_resolved_device_names_the_device_and_no_flag_value():
    firing = replace(make_alert("ap-offline", device="AP-01", value=0.0, threshold=0.5),
                     annotations={"metric": "device.connected"})
    assert _row(resolved(firing, T0, value=1.0)).summary == "ap-offline AP-01 at Dublin HQ: resolved"


# -- portal links ---------------------------------------------------------------------------------------

def _linked(**kwargs):
    return make_alert("site-gateway-down", device_id=None, portal_url=SITE_PAGE, **kwargs)


def test_every_channel_links_the_alert_to_its_portal_page():
    from mistwatch.notifiers import slack, teams
    from mistwatch.notifiers.email import render as email_render

    n = build_notification("n", "mail", [_linked()], [], {}, "g", T0)
    assert f"open: {SITE_PAGE}" in plain_text(n)
    text, html = email_render({}, n)
    assert SITE_PAGE in text and f'href="{SITE_PAGE.replace("&", "&amp;")}"' in html
    assert f"<{SITE_PAGE}|Open in the portal>" in json.dumps(slack.payload(n))
    container = teams.card(n)["body"][1]
    assert container["selectAction"]["url"] == SITE_PAGE


def test_the_report_and_the_listing_carry_the_link():
    assert alert_dict(_linked())["link"] == SITE_PAGE
    assert alert_dict(make_alert())["link"] is None


@pytest.mark.parametrize("url", ["javascript:alert(1)", 'https://x/"><script>', "https://x/a b", "ftp://x/"])
def test_a_label_that_is_not_a_plain_web_address_gives_no_link(url):
    alert = make_alert("x", portal_url=url)
    assert _row(alert).link == ""
