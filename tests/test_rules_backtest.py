"""`mistwatch rules backtest`: stored history replayed through rule files, on a real store on disk."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from fixtures_cli import run_cli

from mistwatch.model import Alert, Entity, Snapshot
from mistwatch.store.database import Store

END = datetime(2026, 3, 13, 0, 0, tzinfo=timezone.utc)  # a Friday, midnight
HOUR = timedelta(hours=1)
# Dublin's clients drop to 10 on Wednesday 11 March from 10:00 to 13:00; Cork is always 50
OUTAGE = (datetime(2026, 3, 11, 10, tzinfo=timezone.utc), datetime(2026, 3, 11, 13, tzinfo=timezone.utc))

RULE = """
rules:
  - id: clients-low
    kind: threshold
    scope: site
    metric: site.clients
    below: {below}
    severity: major
    for: 30m
    summary: "{{{{ labels.site_name }}}}: {{{{ value | num(0) }}}} clients"
"""




@pytest.fixture
def state(tmp_path):
    """Four days of 30-minute cycles for two sites, rolled up, and one live alert state."""
    state_dir = tmp_path / "state"
    with Store.open(state_dir) as store:
        at = END - timedelta(days=4)
        while at < END:
            dublin = 10.0 if OUTAGE[0] <= at < OUTAGE[1] else 100.0
            snapshot = Snapshot(taken_at=at, entities=[
                Entity("site:s1", "site", {"site_id": "s1", "site_name": "Dublin"}, {"site.clients": dublin}),
                Entity("site:s2", "site", {"site_id": "s2", "site_name": "Cork"}, {"site.clients": 50.0})])
            store.write_snapshot(store.start_run(at, "monitor"), snapshot)
            at += timedelta(minutes=30)
        store.roll_up(END)
        store.save_alerts([Alert(key="live{site_id=s9}", rule_id="live", labels={"site_id": "s9"},
                                 state="firing", severity="major", firing_since=END - HOUR)])
    return state_dir


def rules_file(tmp_path, name: str = "rules.yaml", below: float = 20) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(RULE.format(below=below)), encoding="utf-8")
    return str(path)


def backtest(tmp_path, state, capsys, *extra: str) -> tuple[int, str, str]:
    return run_cli(["rules", "backtest", rules_file(tmp_path), "--state-dir", str(state), "--since", "3d",
                    "--until", END.isoformat(), *extra], capsys)


def test_backtest_shows_when_each_alert_would_have_fired_and_resolved(tmp_path, state, capsys):
    code, out, err = backtest(tmp_path, state, capsys, "--json")
    assert code == 0, err
    data = json.loads(out)
    replayed = data["rules"]["clients-low"]
    # held for 30m: fires on the second cycle below 20, resolves on the first cycle back at 100
    assert [(e["fired_at"], e["resolved_at"], e["site"]) for e in replayed["episodes"]] == [
        ("2026-03-11T10:30:00+00:00", "2026-03-11T13:00:00+00:00", "Dublin")]
    assert replayed["per_day"] == {"2026-03-11": 2}  # the firing and the resolved notification
    assert replayed["sites"] == ["Dublin"]
    assert data["steps"] == 3 * 24 * 2  # one stored cycle per 15 minutes: each 30-minute cycle


def test_backtest_never_touches_the_live_alert_states(tmp_path, state, capsys):
    with Store.open(state) as store:
        before = store.load_alerts()
        transitions = store.transitions()
    assert backtest(tmp_path, state, capsys)[0] == 0
    with Store.open(state) as store:
        assert store.load_alerts() == before
        assert store.transitions() == transitions


def test_backtest_prints_per_rule_alerts_notifications_and_sites(tmp_path, state, capsys):
    code, out, _ = backtest(tmp_path, state, capsys)
    assert code == 0
    assert "clients-low (threshold): 1 alert(s), 2 notification(s) (0.7/day), 1 site(s): Dublin" in out
    assert "2026-03-11 10:30 -> 03-11 13:00  major    Dublin: 10 clients" in out


def test_backtest_compare_shows_the_alerts_only_one_version_raises(tmp_path, state, capsys):
    stricter = rules_file(tmp_path, "stricter.yaml", below=5)
    code, out, _ = backtest(tmp_path, state, capsys, "--compare", stricter, "--json")
    assert code == 0
    (difference,) = json.loads(out)["compare"]["differences"]
    assert (difference["alerts_before"], difference["alerts_after"]) == (1, 0)
    assert [e["site"] for e in difference["only_before"]] == ["Dublin"]


def test_backtest_shows_hostile_names_on_one_line_without_control_characters(tmp_path, state, capsys):
    with Store.open(state) as store:
        at = END - timedelta(minutes=60)
        for _ in range(2):
            store.write_snapshot(store.start_run(at, "monitor"), Snapshot(taken_at=at, entities=[Entity(
                "site:s3", "site", {"site_id": "s3", "site_name": "Evil\x1b[2J\nname"}, {"site.clients": 1.0})]))
            at += timedelta(minutes=30)
    code, out, _ = backtest(tmp_path, state, capsys)
    assert code == 0
    assert "\x1b" not in out
    assert "Evil?[2J?name: 1 clients" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--rule", "nope"], "no rule 'nope'"),
    (["--since", "a week"], "--since"),
])
def test_backtest_bad_options_exit_2_with_one_line(tmp_path, state, capsys, args, message):
    code, _, err = backtest(tmp_path, state, capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_backtest_without_history_exits_2_naming_the_directory(tmp_path, capsys):
    code, _, err = run_cli(["rules", "backtest", rules_file(tmp_path), "--state-dir", str(tmp_path / "none")],
                           capsys)
    assert code == 2
    assert "no mistwatch history in" in err and str(tmp_path / "none") in err
