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
