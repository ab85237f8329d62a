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
from mistwatch.report.build import build_report, render_html, report_json, write_reports
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
    jsonschema.Draft202012Validator(schema()).validate(json.loads(report_json(report)))
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
    assert json.loads(paths.json.read_text(encoding="utf-8")) == json.loads(report_json(report))
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
    assert "tok-REPORT" not in report_json(report) + render_html(report)


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


# -- the executive report (issue 11) --------------------------------------------------------------

def test_problem_sites_get_a_section_and_healthy_sites_only_a_row_of_one_table(store):
    report, _ = cycle(store, 0, n_sites=4)  # site 0 has a device down; sites 1-3 are healthy
    page = render_html(report)
    assert page.count('<div class="site" id="site-') == 1
    assert 'id="site-1"' in page and "<h3>Site 0000" in page
    healthy = page[page.index("Healthy sites (3)"):]
    assert all(f"Site {i:04d}" in healthy for i in (1, 2, 3)) and "Site 0000" not in healthy
    assert "<h3>Site 0001" not in page


def test_metric_ids_are_shown_by_their_human_names(store):
    cycle(store, 0)
    report, _ = cycle(store, 1, degrade=0.2)  # every SLE drops: "what changed" names them
    page = render_html(report)
    assert "Wi-Fi coverage" in page and "Wired switch health" in page
    assert not re.search(r"(sle\.)?(wifi|wired|wan)\.[a-z_]+", page.split("</style>")[1].split("<script>")[0])


def test_alert_times_show_in_the_sites_own_zone_with_the_zone_named(store):
    crit = alert("site_down", "critical", "s0000", "Site 0000", since=T0 - timedelta(hours=2))
    report, _ = cycle(store, 0, alerts=[crit])
    report["sites"][0]["timezone"] = "America/Los_Angeles"  # T0 - 2 h = 06:00 UTC = 22:00 PST the day before
    page = render_html(report)
    assert "since Thu 19 Nov 22:00 PST" in page
    assert "2026-11-20T06:00:00Z" not in page and "T06:00" not in page


def test_a_site_without_a_known_zone_shows_times_in_utc_and_says_so(store):
    crit = alert("site_down", "critical", "s0000", "Site 0000", since=T0 - timedelta(hours=2))
    report, _ = cycle(store, 0, alerts=[crit])
    report["sites"][0]["timezone"] = "Mars/Olympus_Mons"
    page = render_html(report)
    assert "since Fri 20 Nov 06:00 UTC" in page and "Time zone UTC" in page


def test_client_sparklines_draw_on_a_fixed_scale_from_zero_with_the_range_labelled():
    from mistwatch.report.labels import nice_ceiling
    from mistwatch.report.sparkline import spark_svg

    assert nice_ceiling(64) == 100 and nice_ceiling(292) == 500 and nice_ceiling(0) == 1
    svg = spark_svg([64.0, 63.0], lo=0, hi=nice_ceiling(64), axis=("100", "0"), width=110)
    ys = [float(p.split(",")[1]) for p in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert abs(ys[0] - ys[1]) < 0.5  # a 64 -> 63 dip is a dip, not a crash across the whole height
    assert ">100</text>" in svg and ">0</text>" in svg


def test_the_client_sparkline_of_a_site_section_uses_that_scale(store):
    report, _ = cycle(store, 0)
    page = render_html(report)
    assert "Clients at Site 0000, last 7 days, 0 to 50" in page  # 40 clients: axis 0-50


def test_the_org_health_has_a_30_day_trend_in_the_json_and_a_chart(store):
    from mistwatch.report.health import compute_health, health_metrics

    old = T0 - timedelta(days=20)
    snap = synthetic_org(3, 3, at=old)
    store.write_metrics(old, health_metrics(compute_health(snap, [])))
    report, _ = cycle(store, 0)
    trend = report["org"]["health_30d"]
    assert len(trend) == 31 and trend[-1] == report["org"]["health"]["value"]
    assert trend[10] is not None and trend[9] is None  # 20 days ago, and nothing the day before
    assert "Org health, last 30 days" in render_html(report)


def test_the_page_has_print_and_dark_stylesheets(store):
    report, _ = cycle(store, 0)
    page = render_html(report)
    assert "@media print" in page and "size: A4" in page and "break-inside: avoid" in page
    assert "prefers-color-scheme: dark" in page


def test_tables_sort_and_filter_only_as_an_enhancement_every_row_is_in_the_page(store):
    report, _ = cycle(store, 0, n_sites=5)
    page = render_html(report)
    script = page[page.index("<script>"):]
    assert "<input" not in page.replace(script, "")  # the filter box is made by the script, no dead control
    assert all(f"Site {i:04d}" in page.replace(script, "") for i in range(5))
    assert "Site 0" not in script  # the script carries no report data


def test_the_digest_summary_has_no_script(store):
    from mistwatch.report.build import summary_html

    report, _ = cycle(store, 0)
    assert "<script" not in summary_html(report)


def test_a_long_list_of_healthy_sites_is_left_out_of_print_but_kept_on_screen(store):
    from mistwatch.report.build import PRINT_HEALTHY_ROWS

    report, _ = cycle(store, 0, n_sites=PRINT_HEALTHY_ROWS + 2)
    page = render_html(report)
    assert '<div class="scroll noprint"><table class="sortable" data-filter="healthy sites">' in page
    assert "left out of print" in page
    assert f"Site {PRINT_HEALTHY_ROWS + 1:04d}" in page  # still on screen
    short, _ = cycle(store, 1, n_sites=4)
    assert "left out of print" not in render_html(short)


def test_upgrading_and_never_connected_devices_cost_no_health_and_the_report_lists_the_latter(
        store, make_simulator):
    # Real parts: the Mist collector over HTTP against the simulator's upgrade wave.
    from datetime import datetime, timezone

    from mistwatch.hookspecs import CollectContext
    from mistwatch.plugins.mist.collector import MistCollector

    now = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    server = make_simulator(sites=6, devices_per_site=6, scenario="upgrade-wave", now=now)
    settings = {"base_url": server.url, "token": server.token, "org_id": server.org.org_id}
    snap = MistCollector().collect(CollectContext(settings=settings, now=now))
    health = compute_health(snap, [])
    run = {"started_at": now, "duration_s": 0.5, "api_calls": snap.api_calls, "errors": [], "mode": "all"}
    report = build_report(store, snap, health, [], [], run, now)
    jsonschema.Draft202012Validator(schema()).validate(json.loads(report_json(report)))
    sites = {s["id"]: s for s in report["sites"]}
    ids = server.org.site_ids()
    for sid in ids[1:4]:  # upgrading APs, a stuck switch, a restarting AP, a failed upgrade, a new AP
        availability = [c for c in sites[sid]["health"]["components"] if "availability" in c["name"]]
        assert all(c["points_lost"] == 0 for c in availability)
        assert sites[sid]["devices"]["disconnected"] == []
    (never,) = [d for d in snap.entities if d.metrics.get("device.never_connected")]
    assert sites[ids[3]]["devices"]["not_yet_connected"] == [never.labels["device_name"]]
    assert report["org"]["devices_not_connected_yet"] == 1
    assert report["org"]["devices"] == 35 and report["org"]["devices_unknown"] == 0
    html = render_html(report)
    assert "Not yet connected" in html and never.labels["device_name"] in html


def test_sites_with_equal_sle_weeks_share_one_entry_and_the_json_says_the_same(store):
    # ~160,000 SLE entries at 10,000 sites: equal ones are one dict (read-only once built)
    for day in range(3):
        report, _ = cycle(store, day, n_sites=4)
    by_name = [{e["name"]: e for e in s["sles"]} for s in report["sites"] if s["id"] != "s0000"]
    assert by_name[0]["wifi.capacity"] is by_name[1]["wifi.capacity"] is by_name[2]["wifi.capacity"]
    assert by_name[0]["wifi.capacity"] == {"name": "wifi.capacity", "value": 0.92, "delta_1d": 0.0,
                                           "delta_7d": None, "trend": [None] * 5 + [0.92, 0.92, 0.92]}
    worst = next(s for s in report["sites"] if s["id"] == "s0000")
    assert {e["name"]: e["value"] for e in worst["sles"]}["wifi.coverage"] == 0.7  # its own, not shared
