"""Email delivery through real SMTP servers on loopback, and the outbox guarantees around it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fixtures_notify import T0, make_alert, resolved

from mistwatch import secrets


def _html(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def _text(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def test_plain_relay_without_auth_gets_multipart_text_and_html(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    result = notify_env.notify([make_alert()], T0)
    assert [item.notifier for item in result.sent] == ["mail"]
    (message,) = smtp_sink.messages
    assert message["Subject"] == "[mistwatch] CRITICAL: 1 firing at Dublin HQ"
    assert message.get_content_type() == "multipart/alternative"
    assert "AP-01 is offline" in _text(message)
    assert "AP-01 is offline" in _html(message)
    assert smtp_sink.envelopes[0]["to"] == ["noc@example.com"]


def test_starttls_with_a_test_certificate_and_login(notify_env, make_smtp_sink):
    sink = make_smtp_sink(starttls=True, login=("relay-user", "relay-pass-123"))
    notify_env.configure([sink.settings()])
    result = notify_env.notify([make_alert()], T0)
    assert len(result.sent) == 1 and not result.failed
    assert len(sink.messages) == 1
    assert sink.logins == ["relay-user"]


def test_implicit_tls(notify_env, make_smtp_sink):
    sink = make_smtp_sink(implicit_tls=True)
    notify_env.configure([sink.settings()])
    result = notify_env.notify([make_alert()], T0)
    assert len(result.sent) == 1
    assert len(sink.messages) == 1


def test_wrong_password_is_a_permanent_failure_that_does_not_show_the_password(notify_env, make_smtp_sink):
    sink = make_smtp_sink(starttls=True, login=("relay-user", "right-pass-123"))
    notify_env.configure([sink.settings(password="wrong-pass-456")])
    result = notify_env.notify([make_alert()], T0)
    (failure,) = result.permanent_failures
    assert "535" in failure.last_error
    assert "wrong-pass-456" not in failure.last_error
    assert sink.messages == []


def test_smtp_down_then_up_delivers_exactly_once(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    alert = make_alert()
    smtp_sink.stop()
    first = notify_env.notify([alert], T0)
    assert first.sent == [] and len(first.failed) == 1
    assert first.pending == 1
    smtp_sink.start()
    # the next cycles: the retry goes out once, the unchanged alert adds nothing
    notify_env.notify([alert], T0 + timedelta(minutes=5))
    notify_env.notify([alert], T0 + timedelta(minutes=10))
    assert len(smtp_sink.messages) == 1
    assert notify_env.outbox_rows() == [("mail", "sent", 2, 0, "")]


def test_status_shows_a_message_waiting_for_a_retry_and_why(notify_env, smtp_sink):
    import json

    from click.testing import CliRunner

    from mistwatch.cli.daemon import status

    notify_env.configure([smtp_sink.settings()])
    smtp_sink.stop()
    notify_env.notify([make_alert()], T0)
    notify_env.store.close()
    runner = CliRunner()
    data = json.loads(runner.invoke(status, ["--config", str(notify_env.config.path), "--json"]).output)
    (waiting,) = data["outbox_retrying"]
    assert (waiting["notifier"], waiting["attempts"]) == ("mail", 1)
    assert "cannot reach the SMTP server" in waiting["error"]
    text = runner.invoke(status, ["--config", str(notify_env.config.path)], terminal_width=200).output
    assert "retrying mail: [mistwatch] CRITICAL: 1 firing at Dublin HQ (attempt 1" in text


def test_a_failed_message_waits_for_its_backoff_before_the_retry(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    smtp_sink.stop()
    notify_env.notify([make_alert()], T0)
    smtp_sink.start()
    early = notify_env.send_outbox(T0 + timedelta(seconds=30))
    assert early.sent == [] and smtp_sink.messages == []
    later = notify_env.send_outbox(T0 + timedelta(minutes=1))
    assert len(later.sent) == 1


def test_451_is_retried_until_delivered(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    smtp_sink.fail = "451"
    result = notify_env.notify([make_alert()], T0)
    (failed,) = result.failed
    assert "451" in failed.last_error and not failed.permanent
    smtp_sink.fail = None
    retry = notify_env.send_outbox(T0 + timedelta(minutes=2))
    assert len(retry.sent) == 1
    assert len(smtp_sink.messages) == 1


def test_550_is_recorded_as_a_permanent_failure_and_shown(notify_env, smtp_sink):
    from io import StringIO

    from rich.console import Console

    from mistwatch.report.console import print_notify_summary

    notify_env.configure([smtp_sink.settings()])
    smtp_sink.fail = "550"
    result = notify_env.notify([make_alert()], T0)
    (failure,) = result.permanent_failures
    assert "550" in failure.last_error
    assert notify_env.outbox_rows()[0][:4] == ("mail", "failed", 1, 1)
    smtp_sink.fail = None
    assert notify_env.send_outbox(T0 + timedelta(hours=2)).sent == []  # never retried
    out = StringIO()
    print_notify_summary(Console(file=out, width=200), result)
    assert "FAILED permanently" in out.getvalue() and "550" in out.getvalue()


def test_a_crash_between_writing_and_sending_sends_after_restart(notify_env, smtp_sink):
    from mistwatch.notify import outbox
    from mistwatch.notify.pipeline import plan
    from mistwatch.notify.settings import load_settings

    notify_env.configure([smtp_sink.settings()])
    alert = make_alert()
    # the cycle writes the outbox and the log, then "crashes" before sending
    p = plan(load_settings(notify_env.config), [alert], outbox.load_log(notify_env.store), [], T0)
    with notify_env.store.transaction() as db:
        outbox.insert_notifications(db, p.notifications, T0)
        outbox.save_log(db, p.log)
    notify_env.reopen()
    assert smtp_sink.messages == []
    notify_env.notify([alert], T0 + timedelta(minutes=15))
    notify_env.notify([alert], T0 + timedelta(minutes=30))
    assert len(smtp_sink.messages) == 1


def test_the_same_alert_over_five_cycles_then_the_repeat_interval_then_resolved(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], routes=[{"notifiers": ["mail"], "repeat_interval": "4h"}])
    alert = make_alert()
    for cycle in range(5):
        notify_env.notify([alert], T0 + timedelta(minutes=15 * cycle))
    assert len(smtp_sink.messages) == 1
    notify_env.notify([alert], T0 + timedelta(hours=4))
    assert len(smtp_sink.messages) == 2
    assert smtp_sink.messages[1]["Subject"] == "[mistwatch] CRITICAL: 1 firing at Dublin HQ (reminder)"
    done = resolved(alert, T0 + timedelta(hours=4, minutes=20), value=1.0)
    notify_env.notify([done], T0 + timedelta(hours=4, minutes=30))
    notify_env.notify([done], T0 + timedelta(hours=4, minutes=45))  # still listed as resolved: no repeat
    assert len(smtp_sink.messages) == 3
    first, _reminder, last = smtp_sink.messages
    assert last["Subject"] == "[mistwatch] RESOLVED: 1 alert at Dublin HQ"
    assert last["In-Reply-To"] == first["Message-ID"]
    assert last["References"] == first["Message-ID"]
    assert "value at resolution: 1 (threshold 1)" in _text(last)
    assert "lasted 4h20m" in _text(last)


def test_the_html_of_a_resolved_mail_says_when_it_started_when_it_ended_and_how_long_it_lasted(
        notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    alert = make_alert()
    notify_env.notify([alert], T0)
    notify_env.notify([resolved(alert, T0 + timedelta(hours=1, minutes=10))], T0 + timedelta(hours=1, minutes=15))
    html = _html(smtp_sink.messages[1])
    assert "From / to" in html
    assert "2026-11-23 09:00 UTC<br>to 2026-11-23 10:10 UTC" in html and "lasted 1h10m" in html


def test_a_new_alert_in_the_group_sends_the_whole_group_and_names_both_counts(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    a = make_alert()
    b = make_alert("switch_port_errors", device="SW-1", device_id="dev-2", severity="major")
    notify_env.notify([a], T0)
    notify_env.notify([resolved(a, T0 + timedelta(minutes=10)), b], T0 + timedelta(minutes=15))
    assert smtp_sink.messages[1]["Subject"] == "[mistwatch] MAJOR: 1 firing, 1 resolved at Dublin HQ"


def test_a_follow_up_mail_marks_the_alerts_it_adds_as_new(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    a = make_alert()
    b = make_alert("switch_port_errors", device="SW-1", device_id="dev-2", severity="major", summary="SW-1 errors")
    notify_env.notify([a], T0)
    notify_env.notify([a, b], T0 + timedelta(minutes=15))
    first, follow_up = smtp_sink.messages
    assert "NEW" not in _text(first) and "NEW" not in _html(first)  # the first message: everything is new
    assert "- [MAJOR, NEW] SW-1 errors" in _text(follow_up)
    assert "- [CRITICAL] AP-01 is offline" in _text(follow_up)
    assert _html(follow_up).count(">NEW</span>") == 1


def test_one_email_per_site_and_none_naming_another_site(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([make_alert(), make_alert(site="Cork", site_id="site-2", device_id="dev-9")], T0)
    subjects = sorted(m["Subject"] for m in smtp_sink.messages)
    assert subjects == ["[mistwatch] CRITICAL: 1 firing at Cork", "[mistwatch] CRITICAL: 1 firing at Dublin HQ"]
    for message in smtp_sink.messages:
        other = "Cork" if "Dublin" in message["Subject"] else "Dublin"
        assert other not in _html(message) and other not in _text(message)


def test_site_name_with_markup_is_escaped_in_html(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([make_alert(site='<b>Dublin</b> & "HQ"', summary='<script>x</script> down')], T0)
    html = _html(smtp_sink.messages[0])
    assert "<b>Dublin</b>" not in html and "<script>" not in html
    assert "&lt;b&gt;Dublin&lt;/b&gt; &amp; &#34;HQ&#34;" in html
    assert "&lt;script&gt;" in html


def test_severity_colours_the_html_table(notify_env, smtp_sink):
    from mistwatch.render import SEVERITY_COLORS

    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([make_alert(severity="critical"), make_alert("x", device_id="d2", severity="minor")], T0)
    html = _html(smtp_sink.messages[0])
    assert f"border-left:4px solid {SEVERITY_COLORS['critical']}" in html
    assert f"border-left:4px solid {SEVERITY_COLORS['minor']}" in html


def test_a_registered_token_appears_in_no_message(notify_env, smtp_sink, http_receiver):
    token = "fake-mist-token-0123456789abcdef"
    secrets.register(token)
    notify_env.configure([smtp_sink.settings(),
                          {"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    alert = make_alert(description=f"GET failed with Authorization: Token {token}",
                       recommendation=f"token was {token}")
    notify_env.notify([alert], T0)
    raw = smtp_sink.envelopes[0]["raw"]
    assert token.encode() not in raw
    assert b"***" in raw or b"=2A=2A=2A" in raw
    assert token.encode() not in http_receiver.requests[0].body
    payloads = notify_env.store.db.execute("SELECT payload FROM outbox").fetchall()
    assert all(token not in p for (p,) in payloads)


def test_the_latest_report_is_attached_when_configured(notify_env, smtp_sink):
    from mistwatch.model import Attachment

    notify_env.configure([smtp_sink.settings(attach_report=True)])
    report = Attachment("mistwatch-report.html", b"<html>report</html>", "text/html")
    notify_env.notify([make_alert()], T0, attachments=(report,))
    message = smtp_sink.messages[0]
    (part,) = list(message.iter_attachments())
    assert part.get_filename() == "mistwatch-report.html"
    assert part.get_content() == "<html>report</html>"


def test_no_attachment_without_attach_report(notify_env, smtp_sink):
    from mistwatch.model import Attachment

    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([make_alert()], T0, attachments=(Attachment("r.html", b"x", "text/html"),))
    assert list(smtp_sink.messages[0].iter_attachments()) == []


def test_users_can_override_the_templates(notify_env, smtp_sink, tmp_path):
    templates = tmp_path / "my-templates"
    templates.mkdir()
    (templates / "email.txt").write_text("Custom: {{ headline }} / {{ firing|length }}\n", encoding="utf-8")
    notify_env.configure([smtp_sink.settings(templates_dir=str(templates), subject_prefix="[NOC]")])
    notify_env.notify([make_alert()], T0)
    message = smtp_sink.messages[0]
    assert message["Subject"] == "[NOC] CRITICAL: 1 firing at Dublin HQ"
    assert _text(message).strip() == "Custom: CRITICAL: 1 firing at Dublin HQ / 1"
    assert "AP-01 is offline" in _html(message)  # the HTML template falls back to the shipped one


def test_send_resolved_false_sends_no_resolved_mail(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings(send_resolved=False)])
    alert = make_alert()
    notify_env.notify([alert], T0)
    notify_env.notify([resolved(alert, T0 + timedelta(minutes=10))], T0 + timedelta(minutes=15))
    assert len(smtp_sink.messages) == 1
    # and the group is closed: the same alert firing again is news again
    notify_env.notify([alert], T0 + timedelta(minutes=30))
    assert len(smtp_sink.messages) == 2


def test_a_prerendered_notification_like_the_digest_is_sent_as_it_is(notify_env, smtp_sink):
    from mistwatch.model import Attachment, Notification
    from mistwatch.notify import outbox

    notify_env.configure([smtp_sink.settings()])
    digest = Notification(id="digest0001", notifier="mail", kind="digest", title="[mistwatch] Daily digest: Org",
                          created_at=T0, text="Org health 91", html="<p>Org health <b>91</b></p>",
                          attachments=(Attachment("r.json", b"{}", "application/json"),),
                          data={"headline": "Daily digest: Org", "group_key": "digest:2026-11-23"})
    outbox.enqueue(notify_env.store, [digest], T0)
    result = notify_env.send_outbox(T0)
    assert [item.title for item in result.sent] == ["[mistwatch] Daily digest: Org"]
    message = smtp_sink.messages[0]
    assert message["Subject"] == "[mistwatch] Daily digest: Org"
    assert _html(message).strip() == "<p>Org health <b>91</b></p>"
    assert _text(message).strip() == "Org health 91"
    assert [p.get_filename() for p in message.iter_attachments()] == ["r.json"]


def test_config_check_catches_a_broken_user_template(notify_env, smtp_sink):
    from mistwatch.errors import ConfigError
    from mistwatch.host import make_host
    from mistwatch.notify.pipeline import check_config

    (notify_env.dir / "tpl").mkdir()
    (notify_env.dir / "tpl" / "email.html").write_text("<p>{{ headline }}</p>\n<p>{{ no_such_thing }}</p>",
                                                       encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        notify_env.configure([smtp_sink.settings(templates_dir="tpl")])  # relative to the config file
    assert info.value.key == "notifiers[0].templates_dir"
    assert "no_such_thing" in info.value.message
    (notify_env.dir / "tpl" / "email.html").write_text("<p>{% if %}</p>", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        notify_env.configure([smtp_sink.settings(templates_dir="tpl")])
    assert "template email.html line 1" in info.value.message
    (notify_env.dir / "tpl" / "email.html").write_text("<p>{{ headline }}</p>", encoding="utf-8")
    check_config(notify_env.configure([smtp_sink.settings(templates_dir="tpl")]), make_host().notifiers())


def test_display_names_stay_in_headers_and_the_envelope_gets_bare_addresses(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings(**{"from": "Mistwatch <mw@example.org>",
                                                "to": ["NOC Team <noc@example.com>"]})])
    notify_env.notify([make_alert()], T0)
    assert smtp_sink.envelopes[0]["from"] == "mw@example.org"
    assert smtp_sink.envelopes[0]["to"] == ["noc@example.com"]
    message = smtp_sink.messages[0]
    assert message["From"] == "Mistwatch <mw@example.org>"
    assert message["Message-ID"].endswith("@example.org>")


def test_a_report_too_big_for_mail_is_left_out_and_the_mail_says_so(notify_env, smtp_sink):
    from mistwatch.model import Attachment

    notify_env.configure([smtp_sink.settings(attach_report=True)])
    report = Attachment("mistwatch-report.html", b"<html>" + b"x" * 14_500_000 + b"</html>", "text/html")
    result = notify_env.notify([make_alert()], T0, attachments=(report,))
    assert len(result.sent) == 1
    message = smtp_sink.messages[0]
    assert list(message.iter_attachments()) == []
    assert len(smtp_sink.envelopes[0]["raw"]) < 1_000_000
    text = message.get_body(("plain",)).get_content()
    assert "Not attached, too big for mail (mistwatch-report.html, 14.5 MB)" in text


def test_a_100_kb_site_name_makes_a_small_mail_with_the_name_cut(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    huge = "Dublin " + "x" * 100_000
    notify_env.notify([make_alert(site=huge, device=huge, summary=f"AP-01 at {huge} is offline")], T0)
    raw = smtp_sink.envelopes[0]["raw"]
    assert len(raw) < 30_000
    assert "…" in smtp_sink.messages[0].get_body(("plain",)).get_content()


# every character str.splitlines() breaks on, plus other controls: none may reach a header
LINE_BREAKERS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00",
                 "\x1b", "\x7f"]


@pytest.mark.parametrize("sep", LINE_BREAKERS, ids=lambda s: f"U+{ord(s[0]):04X}{'+' if len(s) > 1 else ''}")
def test_a_line_break_in_a_site_name_is_folded_to_a_space_in_the_subject_and_the_mail_is_sent(
        notify_env, smtp_sink, sep):
    notify_env.configure([smtp_sink.settings()])
    result = notify_env.notify([make_alert(site=f"Lab{sep}Annex")], T0)
    assert len(result.sent) == 1 and not result.failed and not result.permanent_failures
    (message,) = smtp_sink.messages
    assert message["Subject"] == "[mistwatch] CRITICAL: 1 firing at Lab Annex"
    assert all(name.lower() not in ("annex", "bcc") for name in message)


@pytest.mark.parametrize("sep", ["\u2028", "\x85", "\u2029"], ids=["U+2028", "U+0085", "U+2029"])
def test_a_site_name_with_a_line_separator_stays_intact_in_the_body(notify_env, smtp_sink, sep):
    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([make_alert(site=f"Lab{sep}Annex")], T0)
    (message,) = smtp_sink.messages
    assert f"Lab{sep}Annex" in _text(message)


def test_a_site_name_cannot_add_a_header(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    notify_env.notify([make_alert(site="Lab\r\nBcc: attacker@example.net\r\n")], T0)
    (message,) = smtp_sink.messages
    assert message["Bcc"] is None
    assert message["Subject"] == "[mistwatch] CRITICAL: 1 firing at Lab Bcc: attacker@example.net"
    assert smtp_sink.envelopes[0]["to"] == ["noc@example.com"]


def test_header_value_leaves_an_ordinary_value_alone():
    from mistwatch.notifiers.email import header_value

    assert header_value("[mistwatch] MAJOR: 2 firing at Café  Zürich") == "[mistwatch] MAJOR: 2 firing at Café  Zürich"


def test_a_tls_failure_says_which_certificate_check_failed(notify_env, make_smtp_sink):
    sink = make_smtp_sink(implicit_tls=True)
    settings = sink.settings()
    del settings["ca_file"]  # the test CA is not trusted
    notify_env.configure([settings])
    (failed,) = notify_env.notify([make_alert()], T0).failed
    assert "TLS certificate check failed: unable to get local issuer certificate" in failed.last_error
