"""Hostile names from Mist (markup, terminal escapes, 100 KB) through every channel, with real
notifiers: Slack and Teams to an HTTP server on loopback, the console notifier to stdout."""

from __future__ import annotations

import json

import pytest
from fixtures_notify import T0, make_alert

from mistwatch import sanitize

HUGE = "Dublin " + "x" * 100_000  # a 100 KB site name
ESCAPES = "Lab\x1b]0;owned\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\\x9b31m"


# -- the helpers ----------------------------------------------------------------------------------

def test_cap_ends_a_cut_text_with_an_ellipsis_and_keeps_short_ones():
    assert sanitize.cap("x" * 200, 10) == "x" * 9 + "…"
    assert sanitize.cap("short", 10) == "short"


def test_cap_bytes_never_cuts_inside_a_character():
    capped = sanitize.cap_bytes("é" * 100, 11)
    assert len(capped.encode("utf-8")) <= 11 and capped.endswith("…") and "\ufffd" not in capped


@pytest.mark.parametrize("sequence", [
    "\x1b]0;window title\x07", "\x1b[2J", "\x1b]52;c;ZXZpbA==\x07", "\x1b]8;;https://evil.example\x1b\\",
    "\x9b2J", "\x07", "\x08", "\u202e"])
def test_terminal_removes_escape_sequences_and_controls_whole(sequence):
    assert sanitize.terminal(f"a{sequence}b") == "ab"


def test_terminal_makes_a_name_one_line():
    assert sanitize.terminal("a\r\nb\tc") == "a b c"


def test_slack_escapes_mentions_and_links():
    assert sanitize.slack("<!channel> <https://x|Click> & co") == (
        "&lt;!channel&gt; &lt;https://x|Click&gt; &amp; co")


def test_markdown_escapes_links_and_emphasis_but_keeps_names_readable():
    assert sanitize.markdown("[Click](https://x) **b**") == "[Click]\\(https://x) \\*\\*b\\*\\*"
    assert sanitize.markdown("ap-01 10.0.0.1 [mistwatch]") == "ap-01 10.0.0.1 [mistwatch]"


def test_html_escapes_markup_and_quotes():
    assert sanitize.html("<b onclick=\"x\">&</b>") == "&lt;b onclick=&quot;x&quot;&gt;&amp;&lt;/b&gt;"


# -- Slack ----------------------------------------------------------------------------------------

def test_slack_top_level_text_cannot_mention_the_channel_or_hide_a_link(notify_env, http_receiver):
    notify_env.configure([{"name": "chat", "type": "slack", "webhook_url": http_receiver.url("/slack")}])
    notify_env.notify([make_alert(site="<!channel> <https://x.example|Click>")], T0)
    body = http_receiver.requests[0].json()
    assert "<!channel>" not in body["text"] and "<https://" not in body["text"]
    assert "&lt;!channel&gt;" in body["text"]


def test_slack_message_with_a_100_kb_site_name_keeps_within_slacks_block_limits(notify_env, http_receiver):
    notify_env.configure([{"name": "chat", "type": "slack", "webhook_url": http_receiver.url("/slack")}])
    notify_env.notify([make_alert(site=HUGE, summary=f"AP-01 at {HUGE} is offline")], T0)
    body = http_receiver.requests[0].json()
    header, *sections = body["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert all(len(s["text"]["text"]) <= 3000 for s in sections if s["type"] == "section")
    assert len(body["text"]) <= 1000 and "…" in body["text"]
    assert len(http_receiver.requests[0].body) < 10_000


# -- Teams ----------------------------------------------------------------------------------------

def _card(http_receiver) -> dict:
    return http_receiver.requests[0].json()["attachments"][0]["content"]


def test_teams_escapes_markdown_links_in_every_field_from_data(notify_env, http_receiver):
    http_receiver.respond(202)
    notify_env.configure([{"name": "teams", "type": "teams", "webhook_url": http_receiver.url("/teams")}])
    link = "[Click](https://evil.example)"
    notify_env.notify([make_alert(site=f"HQ {link}", device=f"AP {link}", summary=f"**down** {link}",
                                  recommendation=f"see {link}")], T0)
    text = json.dumps(_card(http_receiver))
    assert "](https://evil.example)" not in text
    assert "[Click]\\\\(https://evil.example)" in text
    assert "**down**" not in text


def test_teams_card_with_a_100_kb_site_name_stays_under_the_28_kb_teams_accepts(notify_env, http_receiver):
    http_receiver.respond(202)
    notify_env.configure([{"name": "teams", "type": "teams", "webhook_url": http_receiver.url("/teams")}])
    notify_env.notify([make_alert(site=HUGE, device=HUGE, summary=f"AP-01 at {HUGE} is offline",
                                  recommendation="y" * 100_000)], T0)
    assert len(http_receiver.requests[0].body) < 28 * 1024
    title, container = _card(http_receiver)["body"]
    assert title["text"].endswith("…") and container["type"] == "Container"  # the first alert is shown


# -- console --------------------------------------------------------------------------------------

def test_console_notifier_prints_no_terminal_escape_from_data(notify_env, capsys):
    notify_env.configure([{"name": "console", "type": "console", "width": 200}])
    notify_env.notify([make_alert(site=ESCAPES, device=ESCAPES, summary=f"{ESCAPES} is offline")], T0)
    out = capsys.readouterr().out
    assert "Lab" in out
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out


def test_console_notifier_caps_a_100_kb_name_with_an_ellipsis(notify_env, capsys):
    notify_env.configure([{"name": "console", "type": "console", "width": 200}])
    notify_env.notify([make_alert(site="Dublin " * 15_000, summary="AP-01 is offline")], T0)  # wraps
    out = capsys.readouterr().out
    assert len(out) < 20_000 and "…" in out


# -- the run summary and status -------------------------------------------------------------------

MARKUP = "[link=https://evil.example]Cork[/link]"


def _summary_text(site_name: str) -> str:
    import io

    from fixtures_reports import T0 as R0
    from fixtures_reports import alert, site_entity
    from rich.console import Console

    from mistwatch.engine import CycleResult
    from mistwatch.model import Snapshot
    from mistwatch.report.console import print_summary
    from mistwatch.report.insights import print_insights
    from mistwatch.rules.lifecycle import RulesOutcome

    snap = Snapshot(taken_at=R0, entities=[site_entity("s1", site_name)])
    out = io.StringIO()
    console = Console(file=out, width=120)
    print_summary(console, CycleResult(run_id=None, mode="insights", started_at=R0, snapshot=snap))
    found = alert("site_down", "critical", "s1", site_name, device="ap-01")
    print_insights(console, RulesOutcome(alerts=[found]), now=R0)
    return out.getvalue()


def test_run_summary_and_insights_print_no_terminal_escape_from_names():
    text = _summary_text(ESCAPES)
    assert "Lab" in text
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text


def test_run_insights_show_rich_markup_in_a_name_as_text():
    assert _summary_text(MARKUP).count("[link=https://evil.example]") == 2  # sites table and insights


def test_run_summary_caps_a_100_kb_site_name_with_an_ellipsis():
    text = _summary_text("Dublin " * 15_000)
    assert len(text) < 20_000 and "…" in text


def test_status_prints_no_terminal_escape_from_an_outbox_title(notify_env, http_receiver):
    from click.testing import CliRunner

    from mistwatch.cli.daemon import status
    from mistwatch.model import Notification
    from mistwatch.notify import outbox

    http_receiver.respond(404)  # a permanent failure: status lists it with its title
    config = notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    outbox.enqueue(notify_env.store, [Notification(id="n1", notifier="hook", kind="test", title=ESCAPES,
                                                   created_at=T0, text="")], T0)
    notify_env.send_outbox(T0)
    output = CliRunner().invoke(status, ["--config", str(config.path)]).output
    assert "FAILED" in output.upper() and "Lab" in output
    assert "\x1b" not in output and "\x9b" not in output and "\x07" not in output


def test_log_lines_quoting_a_name_carry_no_terminal_escape(capsys):
    import logging

    from mistwatch.service.logsetup import setup_console_logging

    setup_console_logging(1)
    try:
        logging.getLogger("mistwatch.test").warning("site %s is unreachable", ESCAPES)
    finally:
        logging.getLogger("mistwatch").handlers.clear()
    err = capsys.readouterr().err
    assert "site Lab" in err and "unreachable" in err
    assert "\x1b" not in err and "\x9b" not in err and "\x07" not in err
