"""`mistwatch run --mode report --now ...` replayed over days against the simulator, as a scheduled job
would run it: dated report copies pruned after retention_days, trends filled from history, and the
digest sent once per day."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def mistwatch(folder: Path, simulator, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIST_API_TOKEN": simulator.token, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mistwatch", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def report_at(folder: Path, simulator, when: datetime, scenario: str = "healthy") -> subprocess.CompletedProcess:
    """`mistwatch run --mode report --now WHEN` in a subprocess, as cron or the Task Scheduler runs it."""
    simulator.org.set_scenario(scenario)
    simulator.org.now = when
    done = mistwatch(folder, simulator, "run", "--config", "config.yaml", "--mode", "report",
                     "--now", when.isoformat())
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def report_in_process(folder: Path, simulator, monkeypatch, *whens: datetime) -> list[bool]:
    """The same cycles as ``run --mode report --now WHEN`` for each time, in this process (to keep the
    test fast); returns whether each sent the digest."""
    from mistwatch.engine import close_app, open_app, run_cycle

    monkeypatch.setenv("MIST_API_TOKEN", simulator.token)
    app = open_app(folder / "config.yaml")
    sent = []
    try:
        for when in whens:
            simulator.org.set_scenario("healthy")
            simulator.org.now = when
            result = run_cycle(app, mode="report", now=when)
            assert result.status == "ok", result.errors
            sent.append(result.digest_sent)
    finally:
        close_app(app)
    return sent


@pytest.fixture
def replay_dir(tmp_path, simulator):
    config = {
        "mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id},
        "state_dir": "var",
        "reports": {"dir": "reports", "retention_days": 7,
                    "digest": {"time": "08:00", "timezone": "Europe/Dublin", "notifiers": ["console"]}},
        "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "console", "type": "console"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return tmp_path


def test_ten_replayed_days_keep_seven_dated_reports_with_trends(replay_dir, simulator, monkeypatch):
    report_in_process(replay_dir, simulator, monkeypatch, *(DAY1 + timedelta(days=day) for day in range(9)))
    report_at(replay_dir, simulator, DAY1 + timedelta(days=9), "degraded")
    history = sorted(p.name for p in (replay_dir / "reports" / "history").iterdir())
    assert history == [f"report-2026-11-{d:02d}.{ext}" for d in range(5, 12) for ext in ("html", "json")]
    report = json.loads((replay_dir / "reports" / "latest.json").read_text(encoding="utf-8"))
    schema = json.loads((REPO / "core" / "schemas" / "report.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(report)
    assert report["generated_at"] == "2026-11-11T09:00:00Z"
    site = report["sites"][0]
    assert None not in site["health"]["trend"]  # a week of history behind every point
    assert site["health"]["delta_1d"] is not None and site["health"]["delta_7d"] is not None
    affected = {simulator.org.site_name(s) for s in simulator.org.affected_sites("degraded")}
    assert report["summary"]["worst_sites"][0]["name"] in affected
    assert {c["site_name"] for c in report["summary"]["changes"]} & affected


def test_a_scheduled_report_run_sends_the_digest_once_per_day(replay_dir, simulator, monkeypatch):
    assert report_in_process(replay_dir, simulator, monkeypatch,
                             datetime(2026, 11, 2, 7, 45, tzinfo=timezone.utc)) == [False]
    first = report_at(replay_dir, simulator, datetime(2026, 11, 2, 8, 5, tzinfo=timezone.utc))
    again = report_at(replay_dir, simulator, datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc))
    assert "Daily digest: " in first.stdout and "Daily digest sent." in first.stdout
    assert "Daily digest" not in again.stdout
    assert report_in_process(replay_dir, simulator, monkeypatch,
                             datetime(2026, 11, 3, 8, 0, tzinfo=timezone.utc)) == [True]


def test_insights_runs_keep_health_history_for_the_next_reports_trends(replay_dir, simulator, monkeypatch):
    from mistwatch.engine import close_app, open_app, run_cycle

    monkeypatch.setenv("MIST_API_TOKEN", simulator.token)
    app = open_app(replay_dir / "config.yaml")
    try:
        for day in range(8):  # a week of hourly-style checks without reports, then one report
            when = DAY1 + timedelta(days=day)
            simulator.org.now = when
            mode = "report" if day == 7 else "insights"
            result = run_cycle(app, mode=mode, now=when)
            assert result.status == "ok", result.errors
            assert result.health is not None  # insights shows and stores the scores too
    finally:
        close_app(app)
    report = json.loads((replay_dir / "reports" / "latest.json").read_text(encoding="utf-8"))
    assert None not in report["org"]["health"]["trend"]
    assert report["sites"][0]["health"]["delta_7d"] is not None
