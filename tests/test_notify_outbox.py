"""The outbox: what happens to a message whatever the notifier does, and the summary that shows it."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from fixtures_notify import T0, NotifyEnv, make_alert, resolved

from mistwatch import hookimpl
from mistwatch.hookspecs import Notifier
from mistwatch.model import Attachment, Delivery
from mistwatch.notify import outbox


class Flaky:
    """A notifier plugin that raises for the first ``failures`` batches, then delivers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[str] = []

    def send(self, settings, notifications):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend unavailable")
        self.delivered += [n.title for n in notifications]
        return [Delivery(n.id, ok=True) for n in notifications]

    @hookimpl
    def mistwatch_notifiers(self):
        yield Notifier(type="flaky", send=self.send)


@pytest.fixture
def notify_env(tmp_path, store_target):
    """The outbox behaves the same on both store backends (``store_target``: SQLite, PostgreSQL)."""
    env = NotifyEnv(tmp_path, store_target)
    yield env
    env.store.close()


def _with_plugin(env, plugin):
    from mistwatch.host import make_host

    env.host = make_host(entry_points=False, extra=[("flaky", plugin)])
    env.configure([{"name": "f", "type": "flaky"}])


def test_a_notifier_that_raises_fails_temporarily_and_is_retried(notify_env):
    plugin = Flaky(failures=2)
    _with_plugin(notify_env, plugin)
    first = notify_env.notify([make_alert()], T0)
    assert "backend unavailable" in first.failed[0].last_error
    assert notify_env.send_outbox(T0 + timedelta(minutes=1)).failed[0].attempts == 2
    assert notify_env.send_outbox(T0 + timedelta(minutes=2)).sent == []  # backoff now 2 minutes
    assert len(notify_env.send_outbox(T0 + timedelta(minutes=3)).sent) == 1
    assert plugin.delivered == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]


def test_backoff_doubles_up_to_an_hour():
    assert [outbox.backoff(n) for n in (1, 2, 3, 7, 8, 20)] == [
        timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4), timedelta(minutes=60),
        timedelta(hours=1), timedelta(hours=1)]


def test_a_message_still_failing_after_a_day_is_given_up_and_shown(notify_env):
    _with_plugin(notify_env, Flaky(failures=10_000))
    notify_env.notify([make_alert()], T0)
    result = None
    now = T0
    while result is None or not result.permanent_failures:
        now += timedelta(hours=1)
        result = notify_env.send_outbox(now)
        assert now < T0 + timedelta(hours=26)
    assert "gave up after" in result.permanent_failures[0].last_error
    assert outbox.counts(notify_env.store) == {"sent": 0, "pending": 0, "failed": 1, "superseded": 0}


def test_a_message_for_a_notifier_removed_from_the_config_fails_permanently(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    smtp_sink.stop()
    notify_env.notify([make_alert()], T0)
    notify_env.configure([{"name": "console", "type": "console"}])
    result = notify_env.send_outbox(T0 + timedelta(minutes=5))
    assert "'mail' is no longer configured" in result.permanent_failures[0].last_error


def test_a_message_for_a_notifier_type_not_loaded_waits_in_the_outbox(notify_env):
    from mistwatch.host import make_host

    _with_plugin(notify_env, Flaky(failures=0))
    notify_env.host = make_host(entry_points=False)  # the plugin is gone by the time of sending
    result = notify_env.notify([make_alert()], T0)
    assert "notifier type 'flaky' is not available" in result.failed[0].last_error
    assert result.warnings and "retry at" in result.warnings[0]


def test_the_outbox_payload_round_trips_the_notification(notify_env):
    from mistwatch.notify.pipeline import build_notification

    alert = resolved(make_alert(value=3.25, baseline=10.0, threshold=None), T0 + timedelta(hours=1), value=9.5)
    n = build_notification("n1", "mail", [make_alert(device_id="d2")], [alert], {"site_id": "site-1"},
                           "route1|site_id=site-1", T0 + timedelta(hours=2), thread_id="n0",
                           attachments=[Attachment("r.html", b"\x00\xffbytes", "text/html")])
    outbox.enqueue(notify_env.store, [n], T0)
    ((_, back),) = outbox.due(notify_env.store, T0 + timedelta(hours=2))
    assert back == n


def test_console_notifier_prints_a_panel_per_notification(notify_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    notify_env.configure([{"name": "console", "type": "console"}])
    result = notify_env.notify([make_alert(value=0.0, threshold=1.0)], T0 + timedelta(minutes=30))
    out = capsys.readouterr().out
    assert len(result.sent) == 1
    assert "[mistwatch] CRITICAL: 1 firing at Dublin HQ" in out
    assert "AP-01 is offline" in out and "threshold 1" in out and "for 30m" in out


def test_summary_lists_sent_failures_and_warnings(notify_env, smtp_sink):
    from rich.console import Console

    from mistwatch.report.console import print_notify_summary

    notify_env.configure([smtp_sink.settings()])
    smtp_sink.fail = "451"
    failed = notify_env.notify([make_alert()], T0)
    smtp_sink.fail = None
    sent = notify_env.send_outbox(T0 + timedelta(minutes=1))
    out = StringIO()
    console = Console(file=out, width=200)
    print_notify_summary(console, failed)
    print_notify_summary(console, sent)
    text = out.getvalue()
    assert "0 sent, 1 failed (will retry), 1 pending in outbox" in text
    assert "warning:" in text and "451" in text
    assert "1 sent, 0 failed, 0 pending in outbox" in text


def test_dry_run_summary_says_what_would_be_sent(notify_env):
    from rich.console import Console

    from mistwatch.report.console import print_notify_summary

    notify_env.configure([{"name": "console", "type": "console"}])
    result = notify_env.notify([make_alert()], T0, dry_run=True)
    out = StringIO()
    print_notify_summary(Console(file=out, width=200), result)
    assert "1 would be sent" in out.getvalue()
    assert "would send to console: [mistwatch] CRITICAL: 1 firing at Dublin HQ" in out.getvalue()


def test_sent_messages_and_ended_silences_are_forgotten_after_30_days(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    outbox.add_silence(notify_env.store, ["site_name=Lab"], starts_at=T0, ends_at=T0 + timedelta(hours=1),
                       reason="r", author="a", now=T0)
    alert = make_alert()
    notify_env.notify([alert], T0)
    notify_env.notify([alert], T0 + timedelta(days=29))  # a reminder, kept
    assert outbox.counts(notify_env.store)["sent"] == 2
    notify_env.notify([alert], T0 + timedelta(days=30, hours=2))
    assert outbox.counts(notify_env.store)["sent"] == 2  # the first one went, the newest came
    assert outbox.silences(notify_env.store, include_ended=True) == []


def _report_notifications(count: int, report: bytes, prefix: str = "n") -> list:
    from mistwatch.model import Notification

    return [Notification(id=f"{prefix}{i}", notifier="mail", kind="alerts", title=f"t{i}", created_at=T0,
                         attachments=(Attachment("mistwatch-report.html", report, "text/html"),))
            for i in range(count)]


def test_an_attachment_carried_by_many_notifications_is_stored_once(notify_env):
    report = b"<html>" + b"x" * 1_000_000 + b"</html>"
    outbox.enqueue(notify_env.store, _report_notifications(5, report), T0)
    db = notify_env.store.db
    assert db.execute("SELECT count(*), sum(size) FROM attachments").fetchone() == (1, len(report))
    assert db.execute("SELECT max(length(payload)) FROM outbox").fetchone()[0] < 2_000
    assert all(n.attachments[0].content == report for _, n in outbox.due(notify_env.store, T0))


def test_an_attachment_no_outbox_row_references_is_pruned(notify_env):
    outbox.enqueue(notify_env.store, _report_notifications(2, b"report one"), T0)
    outbox.enqueue(notify_env.store, _report_notifications(1, b"report two", "m"), T0 + timedelta(days=40))
    with notify_env.store.transaction() as db:
        db.execute("UPDATE outbox SET status = 'sent', sent_at = next_attempt_at")
        outbox.prune(db, T0 + timedelta(days=40))
    contents = [bytes(r[0]) for r in notify_env.store.db.execute("SELECT content FROM attachments")]
    assert contents == [b"report two"]


def test_an_outbox_row_written_with_its_attachment_inline_is_still_sent_with_it(notify_env):
    import base64
    import json

    (n,) = _report_notifications(1, b"old report")
    outbox.enqueue(notify_env.store, [n], T0)
    payload = json.loads(notify_env.store.db.execute("SELECT payload FROM outbox").fetchone()[0])
    payload["attachments"] = [{"filename": "r.html", "mimetype": "text/html",
                               "content": base64.b64encode(b"old report").decode()}]
    with notify_env.store.transaction() as db:
        db.execute("UPDATE outbox SET payload = ?", (json.dumps(payload),))
        db.execute("DELETE FROM attachments")
    ((_, back),) = outbox.due(notify_env.store, T0)
    assert back.attachments[0].content == b"old report"


def test_a_retry_is_due_at_once_when_the_clock_stepped_back(notify_env):
    plugin = Flaky(failures=1)
    _with_plugin(notify_env, plugin)
    assert len(notify_env.notify([make_alert()], T0).failed) == 1  # retry due at T0 + 1 min
    # the clock steps back an hour: the retry must not wait for the clock to catch up again
    assert len(notify_env.send_outbox(T0 - timedelta(hours=1)).sent) == 1


def test_a_message_written_after_now_is_due_at_once_when_the_clock_stepped_back(notify_env, smtp_sink):
    from mistwatch.notify.pipeline import test_notification as make_test_message

    notify_env.configure([smtp_sink.settings()])
    outbox.enqueue(notify_env.store, [make_test_message("mail", T0)], T0 + timedelta(minutes=5))
    assert len(notify_env.send_outbox(T0 - timedelta(hours=1)).sent) == 1


def test_a_resolved_alert_never_shows_a_negative_duration():
    from mistwatch.notify.pipeline import build_notification
    from mistwatch.render import alert_rows

    # resolved "before" it fired: the wall clock stepped back two hours in between
    gone = resolved(make_alert(firing_since=T0), T0 - timedelta(hours=2))
    n = build_notification("n1", "mail", [], [gone], {}, "g", T0)
    (row,) = alert_rows(n)
    assert row.duration == "lasted 0s"
    assert "-" not in n.text.split("lasted", 1)[1].split()[0]


def test_the_webhook_payload_never_has_a_negative_duration():
    from mistwatch.notifiers.webhook import payload
    from mistwatch.notify.pipeline import build_notification

    gone = resolved(make_alert(firing_since=T0), T0 - timedelta(hours=2))
    n = build_notification("n1", "hook", [], [gone], {}, "g", T0)
    assert payload(n)["alerts"][0]["duration_seconds"] == 0


def test_on_a_shared_store_a_message_claimed_by_one_sender_is_skipped_by_another(tmp_path, pg_url):
    from mistwatch.notify.pipeline import sample_notification
    from mistwatch.store.database import Store

    env = NotifyEnv(tmp_path, pg_url)
    plugin = Flaky(failures=0)
    _with_plugin(env, plugin)
    message = sample_notification("f", T0)
    outbox.enqueue(env.store, [message], T0)
    with Store.open(pg_url) as other, other.transaction() as db:
        assert outbox.claim_locked(other, db, message.id, T0) is not None  # the other sender is mid-send
        assert env.send_outbox(T0).sent == []
    assert len(env.send_outbox(T0).sent) == 1
    assert env.send_outbox(T0).sent == []
    assert plugin.delivered == [message.title]
    env.store.close()
