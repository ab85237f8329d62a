"""The daily digest: due from its local time, sent once per local day even across restarts, by mail
with the executive summary and both reports attached."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fixtures_reports import alert, synthetic_org

from mistwatch.errors import ConfigError
from mistwatch.notify import outbox
from mistwatch.notify.digest import digest_due, next_due, send_digest
from mistwatch.report.build import build_report, write_reports
from mistwatch.report.health import compute_health

# 07:30 in Dublin is 07:30 UTC in winter; Sydney is UTC+11 in November
BEFORE = datetime(2026, 11, 20, 7, 29, tzinfo=timezone.utc)
AT = datetime(2026, 11, 20, 7, 30, tzinfo=timezone.utc)


def email(sink) -> dict:
    return {"name": "noc-email", "type": "email", "smtp_host": sink.host, "smtp_port": sink.port,
            "from": "mistwatch@example.com", "to": ["noc@example.com"]}


def configure(env, sink, **digest):
    settings = {"time": "07:30", "timezone": "Europe/Dublin", "notifiers": ["noc-email"], **digest}
    return env.configure([email(sink)], reports={"dir": "reports", "digest": settings})


def report_for(env, now):
    snap = synthetic_org(3, 2, at=now, names=["Cork <Quay>"])
    alerts = [alert("site_down", "critical", "s0000", "Cork <Quay>", since=now, summary="Cork <Quay> is down")]
    health = compute_health(snap, alerts)
    run = {"started_at": now, "duration_s": 0.4, "api_calls": 9, "errors": [], "mode": "report"}
    report = build_report(env.store, snap, health, alerts, [], run, now)
    return report, write_reports(report, env.dir / "reports", now)


def digests(env) -> list:
    return [i for i in outbox.items(env.store, limit=100) if i.kind == "digest"]


def test_the_digest_is_due_from_its_local_time_until_sent(notify_env, smtp_sink):
    config = configure(notify_env, smtp_sink)
    assert not digest_due(config, notify_env.store, BEFORE)
    assert digest_due(config, notify_env.store, AT)
    assert next_due(config, notify_env.store, BEFORE) == AT


def test_the_digest_time_is_local_to_its_timezone(notify_env, smtp_sink):
    config = configure(notify_env, smtp_sink, timezone="Australia/Sydney")
    # 07:30 in Sydney on the 21st is 20:30 UTC on the 20th
    assert not digest_due(config, notify_env.store, datetime(2026, 11, 20, 20, 29, tzinfo=timezone.utc))
    assert digest_due(config, notify_env.store, datetime(2026, 11, 20, 20, 30, tzinfo=timezone.utc))


def test_the_digest_mail_carries_the_summary_and_both_reports(notify_env, smtp_sink):
    config = configure(notify_env, smtp_sink)
    report, paths = report_for(notify_env, AT)
    assert send_digest(config, notify_env.host, notify_env.store, report, paths, AT)
    [message] = smtp_sink.messages
    assert "Daily digest: Acme — 2026-11-20" in message["Subject"]
    names = sorted(part.get_filename() for part in message.iter_attachments())
    assert names == ["mistwatch-report-2026-11-20.html", "mistwatch-report-2026-11-20.json"]
    html = message.get_body(("html",)).get_content()
    assert "Executive summary" in html and "Cork &lt;Quay&gt;" in html
    assert "Cork <Quay> is down" in message.get_body(("plain",)).get_content()
    [item] = digests(notify_env)
    assert item.status == "sent"


def test_the_digest_summary_names_the_worst_site_and_escapes_it(notify_env, smtp_sink):
    config = configure(notify_env, smtp_sink)
    report, paths = report_for(notify_env, AT)
    smtp_sink.fail = "451"  # keep it in the outbox so the queued notification can be read back
    send_digest(config, notify_env.host, notify_env.store, report, paths, AT)
    [(_, n)] = outbox.due(notify_env.store, AT + timedelta(hours=1))
    assert n.kind == "digest" and n.title == "[mistwatch] Daily digest: Acme — 2026-11-20"
    assert "Cork &lt;Quay&gt;" in n.html and "<Quay>" not in n.html
    assert "Worst sites" in n.html and "Cork <Quay> is down" in n.text


def test_the_digest_is_sent_once_per_day_even_across_a_restart(notify_env, smtp_sink):
    config = configure(notify_env, smtp_sink)
    report, paths = report_for(notify_env, AT)
    assert send_digest(config, notify_env.host, notify_env.store, report, paths, AT)
    assert not send_digest(config, notify_env.host, notify_env.store, report, paths, AT + timedelta(hours=2))
    notify_env.reopen()  # a new process: the daemon restarted, or a scheduled `run --mode report`
    later = AT + timedelta(hours=5)
    assert not digest_due(config, notify_env.store, later)
    assert not send_digest(config, notify_env.host, notify_env.store, report, paths, later)
    assert len(smtp_sink.messages) == 1
    assert len(digests(notify_env)) == 1
    tomorrow = AT + timedelta(days=1)
    assert send_digest(config, notify_env.host, notify_env.store, report, paths, tomorrow)
    assert len(smtp_sink.messages) == 2


def test_a_failed_digest_send_is_retried_by_the_outbox_not_queued_again(notify_env, smtp_sink):
    config = configure(notify_env, smtp_sink)
    report, paths = report_for(notify_env, AT)
    smtp_sink.fail = "451"
    assert send_digest(config, notify_env.host, notify_env.store, report, paths, AT)
    assert smtp_sink.messages == []
    smtp_sink.fail = None
    assert not send_digest(config, notify_env.host, notify_env.store, report, paths, AT + timedelta(minutes=5))
    notify_env.send_outbox(AT + timedelta(minutes=5))
    assert len(smtp_sink.messages) == 1
    assert len(digests(notify_env)) == 1


def test_no_digest_without_the_setting(notify_env, smtp_sink):
    config = notify_env.configure([email(smtp_sink)])
    report, paths = report_for(notify_env, AT)
    assert not digest_due(config, notify_env.store, AT)
    assert not send_digest(config, notify_env.host, notify_env.store, report, paths, AT)


@pytest.mark.parametrize(("digest", "key", "message"), [
    ({"timezone": "Mars/Olympus"}, "reports.digest.timezone", "unknown time zone 'Mars/Olympus'"),
    ({"notifiers": ["pager"]}, "reports.digest.notifiers", "not defined under notifiers: pager"),
])
def test_a_bad_digest_setting_is_one_clear_config_error_at_load(notify_env, smtp_sink, digest, key, message):
    with pytest.raises(ConfigError) as err:
        configure(notify_env, smtp_sink, **digest)
    assert err.value.key == key
    assert err.value.line is not None and err.value.file.endswith("config.yaml")
    assert message in str(err.value)


def test_the_daemon_sends_the_digest_at_its_time_from_the_latest_report(notify_env, smtp_sink):
    from types import SimpleNamespace

    from mistwatch.cli.daemon import _DigestHook

    config = configure(notify_env, smtp_sink)
    app = SimpleNamespace(config=config, host=notify_env.host, store=notify_env.store)
    hook = _DigestHook({"app": app}, interval=timedelta(minutes=15))
    report_for(notify_env, AT - timedelta(minutes=10))  # the daemon's last cycle wrote this
    assert hook.next_due(BEFORE) == AT
    assert hook.send(AT)
    assert "Daily digest: Acme — 2026-11-20" in smtp_sink.messages[0]["Subject"]
    assert not hook.send(AT + timedelta(minutes=1))
    assert hook.next_due(AT + timedelta(minutes=1)) == AT + timedelta(days=1)


def test_the_daemon_leaves_the_digest_to_the_next_cycle_when_the_report_is_stale(notify_env, smtp_sink):
    from types import SimpleNamespace

    from mistwatch.cli.daemon import _DigestHook

    config = configure(notify_env, smtp_sink)
    app = SimpleNamespace(config=config, host=notify_env.host, store=notify_env.store)
    hook = _DigestHook({"app": app}, interval=timedelta(minutes=15))
    assert not hook.send(AT)  # no report at all yet
    report_for(notify_env, AT - timedelta(hours=3))
    assert not hook.send(AT)
    assert smtp_sink.messages == []
    assert digest_due(config, notify_env.store, AT)  # still due: the next cycle's report sends it
