"""`mistwatch simulate --backfill`: weeks of seasonal history with injected drops, written into a new
state directory through the CLI, then replayed by `mistwatch rules backtest` (a real store on disk)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fixtures_cli import run_cli

REPO = Path(__file__).resolve().parent.parent
UNTIL = "2026-11-27T00:00:00Z"  # a Friday




@pytest.fixture
def history(tmp_path, capsys):
    """Three weeks of a six-site org, with its ground truth."""
    state, truth = tmp_path / "history", tmp_path / "truth.json"
    code, out, err = run_cli(["simulate", "--backfill", "21d", "--sites", "6", "--state-dir", str(state),
                              "--truth", str(truth), "--until", UNTIL], capsys)
    assert code == 0, err
    return state, json.loads(truth.read_text(encoding="utf-8")), out


def test_backfill_writes_the_span_asked_for_ending_at_until(history):
    _, truth, out = history
    start, end = datetime.fromisoformat(truth["start"]), datetime.fromisoformat(truth["end"])
    assert end == datetime.fromisoformat(UNTIL.replace("Z", "+00:00"))
    assert end - start == timedelta(days=21)
    assert "504 hourly snapshots of 6 sites" in out


def test_backfill_truth_lists_the_injected_drops_in_business_hours_of_the_span(history):
    _, truth, _ = history
    assert truth["anomalies"], "no drop injected"
    for anomaly in truth["anomalies"]:
        assert truth["start"] <= anomaly["start"] < anomaly["end"] <= truth["end"]
        assert anomaly["shape"] in ("outage", "major", "moderate")
    assert {t["metric"] for t in truth["trends"]} == {"device.memory", "sle.wifi.successful_connect"}


def test_backtest_of_the_backfilled_history_finds_an_injected_outage(history, capsys):
    state, truth, _ = history
    code, out, err = run_cli(["rules", "backtest", str(REPO / "rules"), "--state-dir", str(state), "--since", "14d",
                              "--until", UNTIL, "--rule", "site-clients-drop", "--json"], capsys)
    assert code == 0, err
    episodes = json.loads(out)["rules"]["site-clients-drop"]["episodes"]
    outages = [a for a in truth["anomalies"] if a["shape"] == "outage" and a["start"] >= "2026-11-13"]
    assert outages
    found = [a for a in outages for e in episodes
             if e["key"].endswith(f"site_id={a['key'].removeprefix('site:')}}}")
             and a["start"] <= e["fired_at"] <= a["end"]]
    assert found, (outages, episodes)


def test_backfill_refuses_a_state_directory_that_holds_anything(tmp_path, capsys):
    state = tmp_path / "var"
    state.mkdir()
    (state / "mistwatch.db").write_text("live", encoding="utf-8")
    code, _, err = run_cli(["simulate", "--backfill", "7d", "--state-dir", str(state)], capsys)
    assert code == 2
    assert "--state-dir" in err and "not empty" in err
    assert (state / "mistwatch.db").read_text(encoding="utf-8") == "live"


@pytest.mark.parametrize(("args", "hint"), [
    (["--backfill", "soon"], "--backfill"),
    (["--backfill", "1d"], "--backfill"),
    (["--backfill", "7d"], "--state-dir"),
    (["--state-dir", "x"], "--backfill"),
    (["--backfill", "7d", "--state-dir", "new", "--until", "yesterday"], "--until"),
])
def test_backfill_bad_options_exit_2_naming_the_option(tmp_path, capsys, monkeypatch, args, hint):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["simulate", *args], capsys)
    assert code == 2
    assert hint in err
    assert "Traceback" not in err
