"""`mistwatch alerts`: the store's alerts filtered like `amtool alert query`, readable while a daemon
holds the state lock, without any token."""

from __future__ import annotations

import json

from click.testing import CliRunner
from fixtures_notify import make_alert

from mistwatch.cli import main
from mistwatch.service.lock import StateLock


def seed(notify_env):
    config = notify_env.configure([{"name": "console", "type": "console"}])
    notify_env.store.save_alerts([
        make_alert("ap-offline", site="Dublin HQ", device_id="d1"),
        make_alert("switch-down", site="Cork", site_id="s2", device_id="d2", severity="major"),
        make_alert("weak-signal", site="Cork", site_id="s2", device_id="d3", severity="minor", state="pending"),
        make_alert("old-one", site="Cork", site_id="s2", device_id="d4", state="resolved"),
    ])
    return config


def run(*args: str):
    from mistwatch.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def rule_ids(result) -> list[str]:
    return [a["rule_id"] for a in json.loads(result.output)["alerts"]]


def test_without_filters_it_lists_open_alerts_most_severe_first(notify_env):
    config = seed(notify_env)
    result = run("alerts", "--config", str(config.path), "--json")
    assert result.exit_code == 0, result.output
    assert rule_ids(result) == ["ap-offline", "switch-down", "weak-signal"]


def test_filters_combine_state_severity_and_site(notify_env):
    config = seed(notify_env)
    assert rule_ids(run("alerts", "--config", str(config.path), "--json", "--state", "firing",
                        "--site", "cork")) == ["switch-down"]
    assert rule_ids(run("alerts", "--config", str(config.path), "--json", "--state", "resolved")) == ["old-one"]
    assert rule_ids(run("alerts", "--config", str(config.path), "--json", "--severity", "minor",
                        "--severity", "major")) == ["switch-down", "weak-signal"]


def test_a_bad_state_is_a_usage_error(notify_env, capsys):
    config = seed(notify_env)
    try:
        main(["alerts", "--config", str(config.path), "--state", "open"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "'open' is not one of" in capsys.readouterr().err


def test_it_reads_while_the_daemon_holds_the_lock_and_needs_no_mist_token(notify_env, monkeypatch):
    config = seed(notify_env)
    monkeypatch.delenv("MIST_API_TOKEN", raising=False)
    with StateLock(config.state_dir, purpose="daemon"):
        result = run("alerts", "--config", str(config.path))
    assert result.exit_code == 0, result.output
    assert "ap-offline" in result.output and "Dublin HQ" in result.output


def test_the_table_shows_a_hostile_site_name_as_text(notify_env):
    config = notify_env.configure([{"name": "console", "type": "console"}])
    notify_env.store.save_alerts([make_alert("x", site="[bold red]Evil[/]\nline", device_id="d1")])
    result = run("alerts", "--config", str(config.path))
    assert "[bold red]Evil[/] line" in result.output


def test_mistwatch_config_names_the_config_when_no_option_is_given(notify_env, monkeypatch):
    config = seed(notify_env)
    monkeypatch.setenv("MISTWATCH_CONFIG", str(config.path))
    assert rule_ids(run("alerts", "--json")) == ["ap-offline", "switch-down", "weak-signal"]
