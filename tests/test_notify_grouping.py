"""Incidents build up quietly: group_wait holds a group's first message for the group to fill, and
group_interval batches its later changes (Alertmanager's timers)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fixtures_notify import T0, make_alert

from mistwatch.errors import ConfigError

MIN = timedelta(minutes=1)


def _alert(n: int):
    return make_alert(device_id=f"d{n}", device=f"AP-0{n}")


def _subjects(sink) -> list[str]:
    return [m["Subject"] for m in sink.messages]


def test_the_first_message_of_a_group_waits_group_wait_then_goes(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], group_wait="30s", group_interval="15m")
    assert notify_env.notify([_alert(1)], T0).sent == []
    assert notify_env.send_outbox(T0 + timedelta(seconds=29)).sent == []
    assert len(notify_env.send_outbox(T0 + timedelta(seconds=30)).sent) == 1
    assert _subjects(smtp_sink) == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]


def test_a_held_message_survives_a_new_process_and_goes_with_a_later_run(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], group_wait="30s", group_interval="15m")
    notify_env.notify([_alert(1)], T0)  # a one-shot `run`: the message is held when it exits
    notify_env.reopen()
    notify_env.notify([_alert(1)], T0 + 15 * MIN)  # the next run: nothing new, the held one goes
    assert _subjects(smtp_sink) == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ"]


def test_an_incident_maturing_over_three_cycles_makes_one_follow_up_not_one_per_cycle(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], group_wait="30s", group_interval="15m")
    notify_env.notify([_alert(1)], T0)
    notify_env.send_outbox(T0 + timedelta(seconds=30))  # the daemon, between cycles
    notify_env.notify([_alert(1), _alert(2)], T0 + 5 * MIN)
    notify_env.notify([_alert(1), _alert(2), _alert(3)], T0 + 10 * MIN)
    notify_env.notify([_alert(1), _alert(2), _alert(3)], T0 + 15 * MIN)
    notify_env.notify([_alert(1), _alert(2), _alert(3)], T0 + 20 * MIN)
    assert _subjects(smtp_sink) == ["[mistwatch] CRITICAL: 1 firing at Dublin HQ",
                                    "[mistwatch] CRITICAL: 3 firing at Dublin HQ"]
    assert smtp_sink.messages[1]["In-Reply-To"] == smtp_sink.messages[0]["Message-ID"]


def test_a_route_can_send_at_once(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()], group_wait="30s",
                         routes=[{"name": "pager", "notifiers": ["mail"], "group_wait": 0}])
    assert len(notify_env.notify([_alert(1)], T0).sent) == 1


def test_the_defaults_hold_the_first_message_briefly(notify_env, smtp_sink):
    from mistwatch.notify.settings import DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT, load_settings

    config = notify_env.configure([smtp_sink.settings()])
    config.data.pop("group_wait")
    config.data.pop("group_interval")
    (route,) = load_settings(config).routes
    assert (route.group_wait, route.group_interval) == (DEFAULT_GROUP_WAIT, DEFAULT_GROUP_INTERVAL)
    assert timedelta(0) < DEFAULT_GROUP_WAIT < 5 * MIN <= DEFAULT_GROUP_INTERVAL <= 15 * MIN


def test_a_bad_group_interval_is_a_config_error_naming_the_key(notify_env, smtp_sink):
    with pytest.raises(ConfigError) as err:
        notify_env.configure([smtp_sink.settings()], routes=[{"name": "r", "group_interval": "soon"}])
    assert "routes[0].group_interval: not a duration" in str(err.value)


def test_the_daemon_sends_a_held_message_between_cycles():
    import threading
    from datetime import datetime, timezone

    from mistwatch.service.daemon import Daemon

    start = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)

    class Clock:
        t = start

        def now(self):
            return self.t

        def wait(self, event: threading.Event, seconds: float) -> bool:
            self.t += timedelta(seconds=seconds)
            return False

    clock = Clock()
    held = {"due": None}
    flushed = []

    def cycle(now):
        held["due"] = now + timedelta(seconds=30)  # the cycle queued a message held by group_wait

    def flush(now):
        if held["due"] is not None and held["due"] <= now:
            flushed.append(now)
            held["due"] = None
        return held["due"]

    d = Daemon(cycle, 15 * MIN, clock=clock, flush=flush)
    d.run(max_cycles=2)
    assert flushed == [start + timedelta(seconds=30)]
    assert d.stats.flushes == 1
