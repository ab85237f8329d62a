"""Never a stale state after a newer one: a newer message of a group supersedes its older unsent
ones, so after a relay outage the group gets its current state once, not its history out of order."""

from __future__ import annotations

from datetime import timedelta

from fixtures_notify import T0, make_alert, resolved


def _statuses(env) -> list[str]:
    return [row[0] for row in env.store.db.execute("SELECT status FROM outbox ORDER BY created_at, id")]


def test_a_resolved_message_supersedes_the_unsent_firing_one_of_its_group(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    alert = make_alert(site="Lab", severity="major")
    smtp_sink.stop()
    notify_env.notify([alert], T0)  # MAJOR: 1 firing at Lab, fails: retry at T0 + 1 min
    notify_env.notify([resolved(alert, T0 + timedelta(seconds=30))], T0 + timedelta(seconds=30))
    smtp_sink.start()
    for minutes in (1, 5, 10):  # the old retry comes due: nothing older may follow the newer state
        notify_env.send_outbox(T0 + timedelta(minutes=minutes))
    assert [m["Subject"] for m in smtp_sink.messages] == ["[mistwatch] RESOLVED: 1 alert at Lab"]
    assert _statuses(notify_env) == ["superseded", "sent"]


def test_a_superseded_message_is_recorded_with_the_message_that_replaced_it(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    smtp_sink.stop()
    notify_env.notify([make_alert(device_id="d1")], T0)
    notify_env.notify([make_alert(device_id="d1"), make_alert(device_id="d2")], T0 + timedelta(minutes=5))
    old, new = notify_env.store.db.execute("SELECT id, status, last_error FROM outbox ORDER BY created_at")
    assert old[1:] == ("superseded", f"superseded by {new[0]}")
    assert new[1] == "failed"


def test_a_newer_message_carries_the_resolutions_only_the_superseded_one_had(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    first = make_alert(device_id="d1", device="AP-01")
    notify_env.notify([first], T0)  # delivered
    smtp_sink.stop()
    notify_env.notify([resolved(first, T0 + timedelta(minutes=5))], T0 + timedelta(minutes=5))  # not delivered
    second = make_alert(device_id="d2", device="AP-02", firing_since=T0 + timedelta(minutes=10))
    notify_env.notify([second], T0 + timedelta(minutes=10))
    smtp_sink.start()
    notify_env.send_outbox(T0 + timedelta(minutes=20))
    subjects = [m["Subject"] for m in smtp_sink.messages]
    assert subjects == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ",
                        "[mistwatch] CRITICAL: 1 firing, 1 resolved at Dublin HQ"]


def test_when_the_first_message_of_a_group_is_superseded_the_newer_one_starts_the_thread(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    smtp_sink.stop()
    notify_env.notify([make_alert(device_id="d1")], T0)
    notify_env.notify([make_alert(device_id="d1"), make_alert(device_id="d2")], T0 + timedelta(minutes=5))
    smtp_sink.start()
    notify_env.send_outbox(T0 + timedelta(minutes=10))
    (first,) = smtp_sink.messages
    assert first["In-Reply-To"] is None
    notify_env.notify([make_alert(device_id="d1"), make_alert(device_id="d3")], T0 + timedelta(minutes=20))
    follow_up = smtp_sink.messages[-1]
    assert follow_up["In-Reply-To"] == first["Message-ID"]


def test_other_groups_are_not_superseded(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    smtp_sink.stop()
    notify_env.notify([make_alert(site="Cork", site_id="s-cork")], T0)
    notify_env.notify([make_alert(site="Cork", site_id="s-cork"), make_alert(site="Lab", site_id="s-lab")],
                      T0 + timedelta(minutes=5))
    smtp_sink.start()
    notify_env.send_outbox(T0 + timedelta(minutes=10))
    assert sorted(m["Subject"] for m in smtp_sink.messages) == [
        "[mistwatch] CRITICAL: 1 firing at Cork", "[mistwatch] CRITICAL: 1 firing at Lab"]
