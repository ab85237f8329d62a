"""The JSON report, its schema, its trends, the HTML rendering and the dated history with retention."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from importlib.resources import files

import jsonschema
import pytest
from fixtures_reports import T0, alert, synthetic_org

from mistwatch.model import CollectorError
from mistwatch.report.build import build_report, render_html, write_reports
from mistwatch.report.health import compute_health, health_metrics
from mistwatch.store.database import Store

EVIL = '<b>Dublin</b> & "HQ"'


def schema():
    return json.loads((files("mistwatch") / "schemas" / "report.schema.json").read_text(encoding="utf-8"))


def cycle(store, day, *, n_sites=3, degrade=0.0, alerts=(), errors=(), names=None):
    """One replayed run: snapshot, health into the store, the report built as the engine does."""
    now = T0 + timedelta(days=day)
    snap = synthetic_org(n_sites, 3, at=now, names=names, degrade=degrade)
    snap.errors.extend(errors)
    run_id = store.start_run(now, "all")
    store.write_snapshot(run_id, snap)
    health = compute_health(snap, list(alerts))
    store.write_metrics(now, health_metrics(health))
    run = {"started_at": now, "duration_s": 0.5, "api_calls": snap.api_calls, "errors": [], "mode": "all"}
    return build_report(store, snap, health, list(alerts), ["Coverage is the weakest SLE org-wide"], run, now), now


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "state") as s:
        yield s


def test_the_report_validates_against_the_shipped_schema(store):
    cycle(store, 0)
    crit = alert("site_down", "critical", "s0000", "Site 0000", since=T0 + timedelta(hours=20),
                 recommendation="Check the WAN circuit")
    err = CollectorError("mist", "insights/sites-sle", "HTTP 503", kinds=frozenset({"site"}),
                         metrics=frozenset({"sle.wan.*"}))
    report, _ = cycle(store, 1, alerts=[crit, alert("ap_hot", "minor", "s0001", "Site 0001", state="pending")],
                      errors=[err])
    jsonschema.Draft202012Validator(schema()).validate(json.loads(json.dumps(report)))
    assert report["schema_version"].startswith("1.")
    assert report["run"]["collector_errors"] == [{"collector": "mist", "endpoint": "insights/sites-sle",
                                                  "message": "HTTP 503"}]


def test_a_report_missing_a_required_field_fails_the_schema(store):
    report, _ = cycle(store, 0)
    del report["sites"][0]["health"]["components"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema()).validate(report)


def test_sites_come_worst_first_with_their_health_explained(store):
    report, _ = cycle(store, 0)
    worst = report["sites"][0]
    assert worst["name"] == "Site 0000"
    assert worst["health"]["score"] < report["sites"][1]["health"]["score"]
    lost = {c["name"]: c["points_lost"] for c in worst["health"]["components"]}
    assert lost["availability"] > 0 and lost["mist_alarms"] > 0
    assert round(100 - sum(lost.values()), 1) == worst["health"]["score"]
    assert report["summary"]["worst_sites"][0]["name"] == "Site 0000"
    assert worst["devices"]["disconnected"] == ["Site 0000-AP0"]


def test_day_over_day_and_week_over_week_deltas_come_from_history(store):
    for day in range(7):
        cycle(store, day)
    report, _ = cycle(store, 7, degrade=0.1)
    site = next(s for s in report["sites"] if s["name"] == "Site 0001")
    coverage = next(x for x in site["sles"] if x["name"] == "wifi.coverage")
    assert coverage["delta_1d"] == pytest.approx(-0.1)
    assert coverage["delta_7d"] == pytest.approx(-0.1)
    assert coverage["trend"] == pytest.approx([0.97] * 7 + [0.87])
    assert site["health"]["delta_1d"] < 0
    assert any(c["what"] == "sle.wifi.coverage" for c in report["summary"]["changes"])


def test_deltas_are_null_without_history(store):
    report, _ = cycle(store, 0)
    site = report["sites"][0]
    assert site["health"]["delta_1d"] is None and site["health"]["delta_7d"] is None
    assert site["health"]["trend"][:7] == [None] * 7
    assert report["summary"]["changes"] == []


def test_a_new_critical_alert_is_a_change_a_critical_alert_and_a_recommendation(store):
    crit = alert("site_down", "critical", "s0002", "Site 0002", since=T0 + timedelta(days=1, hours=-2),
                 recommendation="Check the WAN circuit", summary="Site 0002 is down")
    report, _ = cycle(store, 1, alerts=[crit])
    assert [a["summary"] for a in report["summary"]["critical_alerts"]] == ["Site 0002 is down"]
    assert report["summary"]["recommendations"][0] == "Check the WAN circuit"
    assert any(c["text"].startswith("new critical alert") for c in report["summary"]["changes"])
    assert report["org"]["alerts_firing"]["critical"] == 1


def test_html_shows_a_hostile_site_name_as_text_never_markup(store):
    hostile = alert("x", "critical", "s0000", EVIL, summary=f"{EVIL} is <i>down</i>",
                    recommendation="<script>alert(1)</script>")
    report, _ = cycle(store, 0, names=[EVIL], alerts=[hostile])
    page = render_html(report)
    assert "<b>Dublin</b>" not in page
    assert "&lt;b&gt;Dublin&lt;/b&gt; &amp; &#34;HQ&#34;" in page
    assert page.count("<script") == 1 and "alert(1)</script>" not in page  # only our own inline script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_html_is_self_contained(store):
    report, _ = cycle(store, 0)
    page = render_html(report)
    assert "<svg" in page and "<style>" in page
    assert not re.search(r"<script[^>]*src|<link|<img|<iframe|@import|url\(", page, re.I)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page, re.I)


def test_html_shows_a_fast_cycles_duration_not_as_zero(store):
    report, _ = cycle(store, 0)
    report["run"]["duration_s"] = 0.044
    page = render_html(report)
    assert "0.04 s" in page and "0.0 s" not in page


def test_html_puts_the_executive_summary_before_the_site_sections(store):
    report, _ = cycle(store, 0)
    page = render_html(report)
    assert page.index("Executive summary") < page.index("Worst sites") < page.index('id="site-1"')


def test_write_reports_writes_latest_and_a_dated_copy(store, tmp_path):
    report, now = cycle(store, 0)
    paths = write_reports(report, tmp_path / "reports", now)
    assert json.loads(paths.json.read_text(encoding="utf-8")) == json.loads(json.dumps(report))
    assert paths.html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert paths.history_json.name == "report-2026-11-20.json"
    assert paths.history_html.read_bytes() == paths.html.read_bytes()
    assert not list((tmp_path / "reports").glob(".*.tmp"))


def test_ten_replayed_days_keep_the_last_seven_dated_copies(store, tmp_path):
    reports = tmp_path / "reports"
    (reports / "history").mkdir(parents=True)
    (reports / "history" / "notes.txt").write_text("mine", encoding="utf-8")
    for day in range(10):
        report, now = cycle(store, day)
        write_reports(report, reports, now, retention_days=7)
    names = sorted(p.name for p in (reports / "history").glob("report-*.json"))
    assert names == [f"report-2026-11-{d}.json" for d in range(23, 30)]
    assert len(list((reports / "history").glob("report-*.html"))) == 7
    assert (reports / "history" / "notes.txt").exists()  # not ours: left alone


def test_a_second_run_the_same_day_replaces_that_days_copy(store, tmp_path):
    report, now = cycle(store, 0)
    write_reports(report, tmp_path / "r", now)
    report2, _ = cycle(store, 0)
    report2["generated_at"] = "2026-11-20T09:00:00Z"
    paths = write_reports(report2, tmp_path / "r", now + timedelta(hours=1))
    assert len(list((tmp_path / "r" / "history").glob("*.json"))) == 1
    assert json.loads(paths.history_json.read_text(encoding="utf-8"))["generated_at"] == "2026-11-20T09:00:00Z"


def test_a_secret_in_a_collector_error_never_reaches_the_report(store):
    from mistwatch.secrets import register

    token = register("tok-REPORT-abcdef123456")
    err = CollectorError("mist", "stats/sites", f"HTTP 401 for token {token}")
    report, _ = cycle(store, 0, errors=[err])
    assert "tok-REPORT" not in json.dumps(report) + render_html(report)


def test_past_values_feed_a_console_sparkline(store):
    from mistwatch.report.build import past_values
    from mistwatch.report.sparkline import spark_unicode

    for day in range(3):
        cycle(store, day, degrade=0.1 * day)
    now = T0 + timedelta(days=3)
    past = past_values(store, "sle.wifi.capacity", now)["site:s0001"]
    assert past == [None, None, None, None, pytest.approx(0.92), pytest.approx(0.82), pytest.approx(0.72)]
    assert spark_unicode([*past, 0.62]) == "    █▆▃▁"


def test_sparklines_draw_gaps_as_gaps_never_as_zero():
    from mistwatch.report.sparkline import spark_svg, spark_unicode

    assert spark_unicode([1, 2, None, 8]) == "▁▂ █"
    assert spark_unicode([5, 5, 5]) == "▅▅▅"  # flat: mid height, not "all bad"
    assert spark_unicode([None, None]) == "  "
    svg = spark_svg([1, 2, None, 4, 5], label='coverage at <b>Dublin</b> & "HQ"')
    assert svg.count("<polyline") == 2  # split at the gap
    assert "&lt;b&gt;Dublin&lt;/b&gt; &amp; &quot;HQ&quot;" in svg and "<b>" not in svg


def test_spark_svg_refuses_a_colour_that_is_not_a_hex_colour():
    from mistwatch.report.sparkline import spark_svg

    with pytest.raises(ValueError):
        spark_svg([1, 2], color='red" onload="x')
