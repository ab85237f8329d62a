"""The console summary of `mistwatch run`: what a person reads in the terminal."""

from __future__ import annotations

from datetime import timedelta

from mistwatch.report.console import devices_up_text, health_sparkline


def test_device_totals_read_as_plain_english_plurals():
    devices = {"switch": {"connected": 29, "total": 30}, "ap": {"connected": 117, "total": 120},
               "gateway": {"connected": 30, "total": 30}}
    assert devices_up_text(devices) == "117/120 APs up, 30/30 gateways up, 29/30 switches up"


def test_the_console_shows_a_week_of_each_sites_health_as_a_unicode_sparkline(tmp_path):
    import io

    from fixtures_reports import T0, synthetic_org
    from rich.console import Console

    from mistwatch.engine import CycleResult
    from mistwatch.report.build import past_values
    from mistwatch.report.console import print_summary
    from mistwatch.report.health import compute_health, health_metrics
    from mistwatch.store.database import Store

    with Store.open(tmp_path / "state") as store:
        for day in range(8):  # every SLE drops from day 4 on; Site 0001 scores 100 before that
            now = T0 + timedelta(days=day)
            snap = synthetic_org(2, 3, at=now, degrade=0.3 if day >= 4 else 0.0)
            store.write_snapshot(store.start_run(now, "insights"), snap)
            health = compute_health(snap, [])
            store.write_metrics(now, health_metrics(health))
        result = CycleResult(run_id=None, mode="insights", started_at=now, snapshot=snap, health=health)
        out = io.StringIO()
        print_summary(Console(file=out, width=140), result,
                      health_past=past_values(store, "site.health", now))
    text = out.getvalue()
    assert "7 days" in text
    site0 = next(line for line in text.splitlines() if "Site 0000" in line)
    site1 = next(line for line in text.splitlines() if "Site 0001" in line)
    spark0 = site0.split("│")[-2].strip()
    assert len(spark0) == 8 and spark0[0] > spark0[-1]  # a week ago higher than today
    assert site1.split("│")[-2].strip().startswith("████")  # a 100 is a full bar, on the 0-100 scale


def test_health_sparklines_use_the_0_to_100_scale_and_leave_missing_days_blank():
    assert health_sparkline([None, 100.0, 50.0], 0.0) == " █▅▁"
    assert health_sparkline(None, 30.0) == "▃"


def _print_80(printer, *args, **kwargs) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    printer(Console(file=out, width=80, force_terminal=False), *args, **kwargs)
    return out.getvalue()


def _result(mode="insights", names=None, n_sites=4):
    from fixtures_reports import T0, synthetic_org

    from mistwatch.engine import CycleResult
    from mistwatch.report.health import compute_health

    snap = synthetic_org(n_sites, 3, names=names)
    health = compute_health(snap, []) if mode != "monitor" else None
    return CycleResult(run_id=None, mode=mode, started_at=T0, snapshot=snap, health=health)


SIMILAR = ["Seattle Branch 1", "Seattle Store 1", "Copenhagen Store 1", "Manchester Store 12"]


def test_at_80_columns_every_site_name_stays_whole_on_one_line():
    from mistwatch.report.console import print_summary

    text = _print_80(print_summary, _result(names=SIMILAR), health_past={})
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in SIMILAR:  # each on its own row, never cut to a shared prefix like "Seattle…"
        assert sum(1 for line in lines if name in line) == 1, name
    assert "…" not in text


def test_at_80_columns_the_insights_table_keeps_rule_ids_whole():
    from types import SimpleNamespace

    from fixtures_reports import T0, alert

    from mistwatch.report.insights import print_insights

    rules = ["wired-switch-throughput-low", "wifi-time-to-connect-drop", "site-ap-availability-low"]
    outcome = SimpleNamespace(notes=[], alerts=[
        alert(rule, "critical", "s1", "Manchester Store 12", device="ap-manchester-12-floor-3", since=T0)
        for rule in rules])
    text = _print_80(print_insights, outcome, now=T0)
    assert max(len(line) for line in text.splitlines()) <= 80
    for rule in rules:
        assert any(rule in line for line in text.splitlines()), rule


def test_insights_show_hostile_names_as_text_not_console_markup():
    from types import SimpleNamespace

    from fixtures_reports import T0, alert

    from mistwatch.report.insights import print_insights

    outcome = SimpleNamespace(notes=[], alerts=[alert("ap-offline", "major", "s1", "[bold red]Lab[/]", since=T0)])
    assert "[bold red]Lab[/]" in _print_80(print_insights, outcome, now=T0)


def test_the_sites_table_title_gives_a_short_local_time_with_its_zone():
    from datetime import datetime, timezone

    from mistwatch.report.console import local_time

    text = local_time(datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc))
    local = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc).astimezone()
    assert text == f"{local:%a %d %b %H:%M} {local.tzname()}"
    assert "2026-" not in text and "T08" not in text


def test_monitor_mode_lists_the_problem_devices_of_each_site():
    from mistwatch.report.console import print_summary

    text = _print_80(print_summary, _result(mode="monitor"))
    assert "Devices with problems" in text
    assert "Site 0000-AP0" in text and "disconnected" in text  # site 0's first AP is down
    assert "Site 0001-AP1" not in text  # healthy devices only with -v


def test_monitor_mode_lists_every_device_with_verbose():
    from mistwatch.report.console import print_summary

    text = _print_80(print_summary, _result(mode="monitor"), verbose=True)
    for site in range(4):
        for device in range(3):
            assert f"Site {site:04d}-AP{device}" in text


def test_other_modes_leave_the_devices_to_the_insights():
    from mistwatch.report.console import print_summary

    assert "Devices" not in _print_80(print_summary, _result(mode="insights"))


def test_the_console_notifier_keeps_its_words_together_at_80_columns():
    import io

    from fixtures_reports import T0, alert
    from rich.console import Console

    from mistwatch.model import Notification
    from mistwatch.notifiers.console import render

    summary = "Seattle Branch 1: wired Switch health SLE 12%, down 85.6 points from 98% 1d ago"
    n = Notification(id="n1", notifier="console", kind="alerts", title="[mistwatch] CRITICAL at Seattle Branch 1",
                     created_at=T0, alerts=(alert("wired-switch-health-drop", "critical", "s1", "Seattle Branch 1",
                                                  since=T0, summary=summary),))
    out = io.StringIO()
    console = Console(file=out, width=80)
    console.print(render(n, width=console.width))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line.strip("│ ").split("  ")[-1].strip() for line in lines[3:-1]]
    assert all(len(text.split()) >= 3 for text in body if text), body  # never one word per line


def test_run_shows_the_calls_of_the_cycle_and_the_hour_and_the_shortest_interval_the_budget_allows():
    import io

    from fixtures_reports import T0, synthetic_org
    from rich.console import Console

    from mistwatch.engine import CycleResult
    from mistwatch.report.console import budget_text, print_summary

    snap = synthetic_org(2, 3, at=T0)
    snap.api_budget["mist"] = {"calls_cycle": 132, "calls_hour": 396, "hourly_budget": 5000,
                               "min_interval_s": 120.0, "skipped": [], "blocked_until": None}
    out = io.StringIO()
    print_summary(Console(file=out, width=200), CycleResult(run_id=None, mode="monitor", started_at=T0,
                                                            snapshot=snap))
    assert ("API budget (mist): 132 calls this cycle, 396 this clock hour of 5000; "
            "shortest interval at this size 2 min") in out.getvalue()
    tight = {"calls_cycle": 9, "calls_hour": 4990, "hourly_budget": 5000, "min_interval_s": 60.0,
             "skipped": ["stats/bgp_peers/search"], "blocked_until": "2026-01-05T10:01:00+00:00"}
    assert budget_text(tight).endswith("skipped to save the budget: stats/bgp_peers/search; "
                                       "budget spent (HTTP 429): no calls until 2026-01-05T10:01:00+00:00")


def test_with_several_orgs_each_tokens_calls_are_checked_against_its_own_budget_not_the_total():
    import io

    from fixtures_reports import T0, synthetic_org
    from rich.console import Console

    from mistwatch.engine import CycleResult
    from mistwatch.report.console import print_summary, summary_json

    snap = synthetic_org(2, 3, at=T0)
    # three orgs of 1,000 calls a cycle: 12,000 an hour in all, but 4,000 per token, within each budget
    for name in ("A", "B", "C"):
        snap.api_budget[f"mist org {name}"] = {"calls_cycle": 1000, "calls_hour": 1000, "hourly_budget": 5000}
    result = CycleResult(run_id=None, mode="monitor", started_at=T0, snapshot=snap, api_calls=3000,
                         api_calls_per_hour_allowed=5000)
    out = io.StringIO()
    print_summary(Console(file=out, width=200), result, interval_s=900)
    text = out.getvalue()
    assert "12000 calls/hour" not in text and "of the 5000 allowed per token" not in text
    assert text.count("4000 calls/hour, within this token's budget") == 3
    budgets = summary_json(result, 900)["api_budget"]
    assert {name: b["within_budget"] for name, b in budgets.items()} == {
        "mist org A": True, "mist org B": True, "mist org C": True}


def test_a_token_whose_cycles_would_spend_more_than_its_hourly_budget_is_shown_over_it():
    from mistwatch.report.console import budget_check, budget_text

    budget = {"calls_cycle": 1300, "calls_hour": 1300, "hourly_budget": 5000}
    assert budget_check(budget, 900) == {"calls_per_hour": 5200, "within_budget": False}
    assert "5200 calls/hour, over this token's budget" in budget_text(budget, 900)
