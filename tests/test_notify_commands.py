"""`mistwatch silence ...` and `mistwatch notifiers test NAME`, through the real command line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from fixtures_cli import run_cli
from fixtures_notify import make_alert


@pytest.fixture
def cli_env(notify_env, smtp_sink, monkeypatch):
    monkeypatch.setenv("USER", "ana")
    notify_env.configure([smtp_sink.settings(), {"name": "console", "type": "console"}])
    notify_env.config_path = str(notify_env.dir / "config.yaml")
    notify_env.smtp = smtp_sink
    return notify_env


def _silences(capsys, env, *extra: str) -> list[dict]:
    code, out, _ = run_cli(["silence", "list", "--json", "--config", env.config_path, *extra], capsys)
    assert code == 0
    return json.loads(out)


def test_silence_add_records_matchers_expiry_reason_and_author(cli_env, capsys):
    code, out, _ = run_cli(["silence", "add", "--match", "site_name=Dublin HQ", "--match",
                           "severity=~critical|major", "--for", "2h", "--reason", "fibre work",
                           "--config", cli_env.config_path], capsys)
    assert code == 0 and "added" in out
    (s,) = _silences(capsys, cli_env)
    assert s["matchers"] == ["site_name=Dublin HQ", "severity=~critical|major"]
    assert (s["reason"], s["author"], s["status"]) == ("fibre work", "ana", "active")
    length = datetime.fromisoformat(s["ends_at"]) - datetime.fromisoformat(s["starts_at"])
    assert length == timedelta(hours=2)


def test_silence_add_requires_an_expiry(cli_env, capsys):
    code, _, err = run_cli(["silence", "add", "--match", "site_name=Lab", "--reason", "x",
                           "--config", cli_env.config_path], capsys)
    assert code == 2 and "must expire" in err
    assert _silences(capsys, cli_env) == []


def test_silence_add_accepts_until(cli_env, capsys):
    until = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    code, _, _ = run_cli(["silence", "add", "-m", "site_name=Lab", "--until", until.isoformat(),
                         "--reason", "lab move", "--config", cli_env.config_path], capsys)
    assert code == 0
    assert datetime.fromisoformat(_silences(capsys, cli_env)[0]["ends_at"]) == until


def test_silence_add_rejects_a_bad_matcher(cli_env, capsys):
    code, _, err = run_cli(["silence", "add", "-m", "site_name", "--for", "1h", "--reason", "x",
                           "--config", cli_env.config_path], capsys)
    assert code == 2 and "not a matcher" in err


def test_silence_expire_ends_it_and_list_all_still_shows_it(cli_env, capsys):
    run_cli(["silence", "add", "-m", "site_name=Lab", "--for", "1h", "--reason", "x",
            "--config", cli_env.config_path], capsys)
    (s,) = _silences(capsys, cli_env)
    code, out, _ = run_cli(["silence", "expire", s["id"][:4], "--config", cli_env.config_path], capsys)
    assert code == 0 and s["id"] in out
    assert _silences(capsys, cli_env) == []
    assert [x["status"] for x in _silences(capsys, cli_env, "--all")] == ["expired"]


def test_silence_expire_of_an_unknown_id_is_a_usage_error(cli_env, capsys):
    code, _, err = run_cli(["silence", "expire", "deadbeef", "--config", cli_env.config_path], capsys)
    assert code == 2 and "no silence with id" in err


def test_a_silence_added_on_the_command_line_mutes_the_pipeline(cli_env, capsys):
    run_cli(["silence", "add", "-m", "site_name=Dublin HQ", "--for", "1h", "--reason", "works",
            "--config", cli_env.config_path], capsys)
    cli_env.reopen()
    result = cli_env.notify([make_alert()], datetime.now(timezone.utc))
    assert result.sent == [] and cli_env.smtp.messages == []
    assert "works" in result.suppressed[0].reason


def test_silence_list_table_shows_the_silence(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    run_cli(["silence", "add", "-m", "site_name=Lab", "--for", "1h", "--reason", "lab move",
            "--config", cli_env.config_path], capsys)
    code, out, _ = run_cli(["silence", "list", "--config", cli_env.config_path], capsys)
    assert code == 0 and "site_name=Lab" in out and "lab move" in out and "ana" in out


def test_silence_list_on_a_narrow_terminal_wraps_matchers_instead_of_cutting_them(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    run_cli(["silence", "add", "-m", "site_name=~Stockholm.*", "-m", "severity=critical", "--for", "1h",
            "--reason", "AP swap", "--config", cli_env.config_path], capsys)
    code, out, _ = run_cli(["silence", "list", "--config", cli_env.config_path], capsys)
    # the matchers column (third), its wrapped pieces joined again
    column = "".join(line.split("│")[3].strip() for line in out.splitlines() if line.count("│") == 8)
    assert code == 0 and "…" not in out
    assert "site_name=~Stockholm.*" in column and "severity=critical" in column


def test_notifiers_test_sends_through_the_outbox(cli_env, capsys):
    code, out, _ = run_cli(["notifiers", "test", "mail", "--config", cli_env.config_path], capsys)
    assert code == 0 and "sent" in out
    (message,) = cli_env.smtp.messages
    assert message["Subject"] == "[mistwatch] TEST: notifier mail works"
    assert cli_env.outbox_rows() == [("mail", "sent", 1, 0, "")]


def test_notifiers_test_reports_a_failure_and_leaves_nothing_to_retry(cli_env, capsys):
    cli_env.smtp.stop()
    code, _, err = run_cli(["notifiers", "test", "mail", "--config", cli_env.config_path], capsys)
    assert code == 1 and "cannot reach the SMTP server" in err
    cli_env.smtp.start()
    assert cli_env.send_outbox(datetime.now(timezone.utc) + timedelta(hours=1)).sent == []
    assert cli_env.smtp.messages == []


def test_notifiers_test_of_an_unknown_name_is_a_usage_error(cli_env, capsys):
    code, _, err = run_cli(["notifiers", "test", "pager", "--config", cli_env.config_path], capsys)
    assert code == 2 and "no notifier named 'pager'" in err and "mail" in err


def test_config_check_reports_a_route_to_an_unknown_notifier(cli_env, capsys):
    path = cli_env.dir / "config.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "routes:\n- notifiers: [pager]\n", encoding="utf-8")
    code, _, err = run_cli(["config", "check", "--config", str(path)], capsys)
    assert code == 2
    assert err.strip().endswith("routes[0].notifiers[0]: unknown notifier 'pager' (known: console, mail)")
    assert len(err.strip().splitlines()) == 1
