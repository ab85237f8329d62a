"""End to end: the CLI as a user runs it, against the simulator on loopback, in a fresh folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def mistwatch(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """Run the installed CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mistwatch", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def org_config(tmp_path, simulator):
    """A config.yaml pointing at the simulator, the default rule pack and the console notifier."""
    config = {
        "mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id},
        "state_dir": "var",
        "reports": {"dir": "reports"},
        "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "console", "type": "console"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return tmp_path


def run_at(folder: Path, simulator, when: datetime, scenario: str, *extra: str):
    simulator.org.set_scenario(scenario)
    simulator.org.now = when
    return mistwatch("run", "--now", when.isoformat(), *extra, cwd=folder,
                     env={"MIST_API_TOKEN": simulator.token})


def firing_sites(result) -> set[str]:
    insights = json.loads(result.stdout)["insights"]
    return {a["labels"].get("site_id") for a in insights["alerts"] if a["state"] == "firing"}


def test_help_lists_every_command():
    done = mistwatch("--help", cwd=REPO)
    assert done.returncode == 0
    for command in ("demo", "run", "daemon", "simulate", "rules", "config", "plugins", "silence", "status"):
        assert command in done.stdout


def test_demo_runs_the_whole_job_on_the_simulated_org(tmp_path):
    done = mistwatch("demo", "--out", str(tmp_path / "demo"), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Sites at" in done.stdout
    assert "Open the report" in done.stdout
    assert (tmp_path / "demo" / "reports" / "latest.html").is_file()
    assert (tmp_path / "demo" / "reports" / "degraded-day.html").is_file()


def test_run_monitor_prints_json_for_scripts(org_config, simulator):
    done = run_at(org_config, simulator, DAY1, "healthy", "--mode", "monitor", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["status"] == "ok"
    assert out["totals"]["sites"] == len(simulator.org.site_ids())
    assert 0 < out["api_calls"] <= 15


def test_the_token_never_appears_in_output(org_config, simulator):
    done = run_at(org_config, simulator, DAY1, "degraded", "-vv")
    assert simulator.token not in done.stdout + done.stderr


def test_a_refused_token_exits_1_with_a_clear_message(org_config, simulator):
    done = mistwatch("run", cwd=org_config, env={"MIST_API_TOKEN": "not-the-token"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "token" in done.stderr.lower()
    assert "not-the-token" not in done.stderr + done.stdout


def test_a_missing_config_exits_2_naming_the_file(tmp_path):
    done = mistwatch("run", "--config", "nope.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "nope.yaml" in done.stderr
    assert "Traceback" not in done.stderr


def test_degraded_day_alerts_only_the_affected_sites_then_recovery_resolves(org_config, simulator):
    for minutes in (0, 15, 30):
        healthy = run_at(org_config, simulator, DAY1 + timedelta(minutes=minutes), "healthy", "--json")
        assert healthy.returncode == 0, healthy.stderr[-2000:]
        assert firing_sites(healthy) == set()

    day2 = DAY1 + timedelta(days=1)
    for minutes in (0, 15, 30):
        degraded = run_at(org_config, simulator, day2 + timedelta(minutes=minutes), "degraded", "--json")
        assert degraded.returncode == 0, degraded.stderr[-2000:]
    affected = set(simulator.org.affected_sites("degraded"))
    assert firing_sites(degraded) == affected

    recovered = run_at(org_config, simulator, day2 + timedelta(hours=2), "recovered", "--json")
    insights = json.loads(recovered.stdout)["insights"]
    assert firing_sites(recovered) == set()
    assert {a["labels"].get("site_id") for a in insights["alerts"] if a["state"] == "resolved"} == affected


def test_status_and_silences_need_no_mist_token(org_config, simulator):
    assert run_at(org_config, simulator, DAY1, "healthy", "--mode", "monitor").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "MIST_API_TOKEN"}
    for args in (("status",), ("silence", "list")):
        done = subprocess.run([sys.executable, "-m", "mistwatch", *args], cwd=org_config, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr


def test_one_shot_runs_count_the_hours_calls_in_the_store_and_ask_self_once_a_day(org_config, simulator):
    # Separate processes, as cron would start them: only the store carries the count and the /self check.
    first = run_at(org_config, simulator, DAY1, "healthy", "--json")
    dry = run_at(org_config, simulator, DAY1 + timedelta(minutes=15), "healthy", "--json", "--dry-run")
    third = run_at(org_config, simulator, DAY1 + timedelta(minutes=30), "healthy", "--json")
    assert first.returncode == dry.returncode == third.returncode == 0, third.stderr
    budgets = [json.loads(done.stdout)["api_budget"]["mist"] for done in (first, dry, third)]
    assert [b["calls_cycle"] for b in budgets] == [10, 9, 9]  # /self only in the first
    assert [b["calls_hour"] for b in budgets] == [10, 19, 28]  # a dry run spends real calls too
    assert simulator.calls_by_path["/api/v1/self"] == 1
    assert budgets[-1]["calls_hour"] == simulator.calls_this_hour()
    next_hour = run_at(org_config, simulator, DAY1 + timedelta(hours=1), "healthy", "--json")
    assert json.loads(next_hour.stdout)["api_budget"]["mist"]["calls_hour"] == 9
    state = (org_config / "var").rglob("*")
    assert not any(simulator.token.encode() in p.read_bytes() for p in state if p.is_file())
