"""Nothing doubled: senders claim outbox rows before sending, and record each message on its own, so
a crash repeats at most the message in flight and two processes never send the same row."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from fixtures_notify import T0, make_alert

from mistwatch import hookimpl
from mistwatch.hookspecs import Notifier
from mistwatch.model import Delivery
from mistwatch.notify import outbox, pipeline
from mistwatch.store.database import Store

SITES = ["Cork", "Dublin HQ", "Galway"]


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, not even ``except Exception``."""


class DiesAfterSecondSend:
    """A notifier that delivers the first message, hands the second to its server and dies before
    it can say so; later it delivers normally."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.dying = True

    def send(self, settings, notifications):
        for i, n in enumerate(notifications):
            self.delivered.append(n.title)
            if self.dying and i == 1:
                self.dying = False
                raise Killed
            yield Delivery(n.id, ok=True)

    @hookimpl
    def mistwatch_notifiers(self):
        yield Notifier(type="dies", send=self.send)


def _three_sites():
    return [make_alert(site=name, site_id=f"site-{i}") for i, name in enumerate(SITES)]


def test_a_crash_in_the_middle_of_a_batch_repeats_only_the_message_in_flight(notify_env):
    from mistwatch.host import make_host

    plugin = DiesAfterSecondSend()
    notify_env.host = make_host(entry_points=False, extra=[("dies", plugin)])
    notify_env.configure([{"name": "d", "type": "dies"}])
    with pytest.raises(Killed):
        notify_env.notify(_three_sites(), T0)
    notify_env.reopen()
    assert sorted(row[1] for row in notify_env.outbox_rows()) == ["pending", "pending", "sent"]
    # our own claim still holds in this (living) process until the lease is over
    assert notify_env.send_outbox(T0).sent == []
    later = notify_env.send_outbox(T0 + outbox.CLAIM_LEASE + timedelta(seconds=1))
    assert len(later.sent) == 2
    titles = [f"[mistwatch] CRITICAL: 1 firing at {name}" for name in SITES]
    in_flight = plugin.delivered[1]
    assert sorted(plugin.delivered) == sorted([*titles, in_flight])


def _queue_test_messages(env, count: int) -> list[str]:
    messages = [pipeline.test_notification("mail", T0, notification_id=f"{i:04d}") for i in range(count)]
    outbox.enqueue(env.store, messages, T0)
    return [n.id for n in messages]


def test_a_row_claimed_by_another_process_is_left_to_it(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    _queue_test_messages(notify_env, 1)
    with Store.open(notify_env.dir / "var") as other:
        assert len(outbox.claim(other, T0, "elsewhere:4242:aaaa")) == 1
    assert notify_env.send_outbox(T0).sent == []
    assert smtp_sink.messages == []


def test_a_claim_is_retried_when_its_lease_is_over(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    _queue_test_messages(notify_env, 1)
    outbox.claim(notify_env.store, T0, "elsewhere:4242:aaaa")
    assert len(notify_env.send_outbox(T0 + outbox.CLAIM_LEASE + timedelta(seconds=1)).sent) == 1
    assert len(smtp_sink.messages) == 1


def test_a_claim_left_by_a_killed_process_of_this_host_lapses_at_once(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    _queue_test_messages(notify_env, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    outbox.claim(notify_env.store, T0, f"{socket.gethostname()}:{dead.pid}:aaaa")
    assert len(notify_env.send_outbox(T0).sent) == 1


def test_a_claim_taken_after_now_lapses_because_the_clock_stepped_back(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    _queue_test_messages(notify_env, 1)
    outbox.claim(notify_env.store, T0, "elsewhere:4242:aaaa")
    assert len(notify_env.send_outbox(T0 - timedelta(hours=1)).sent) == 1


def test_two_senders_at_once_deliver_each_message_exactly_once(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    ids = _queue_test_messages(notify_env, 30)
    start = threading.Barrier(2)
    sent: list[int] = []

    def sender() -> None:
        with Store.open(notify_env.dir / "var") as store:
            start.wait()
            sent.append(len(pipeline.send_outbox(notify_env.config, notify_env.host, store, T0).sent))

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(sent) == 30
    assert sorted(m["Message-ID"].split("@")[0].strip("<") for m in smtp_sink.messages) == ids


class SlowSink:
    """A real SMTP server on loopback that takes ``delay`` seconds over each DATA; ``started`` counts
    the DATA commands begun, ``received`` the Message-IDs accepted."""

    def __init__(self, delay: float) -> None:
        from fixtures_smtp import free_port

        self.delay, self.port = delay, free_port()
        self.started = 0
        self.received: list[str] = []
        self.controller = None

    async def handle_DATA(self, server, session, envelope) -> str:
        import asyncio
        from email import message_from_bytes
        from email.policy import default

        self.started += 1
        await asyncio.sleep(self.delay)
        self.received.append(str(message_from_bytes(envelope.content, policy=default)["Message-ID"]))
        return "250 Message accepted"


@pytest.fixture
def slow_sink():
    from aiosmtpd.controller import Controller

    sink = SlowSink(delay=0.5)
    sink.controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    sink.controller.start()
    yield sink
    sink.controller.stop()


def test_kill_9_of_run_while_it_sends_loses_nothing_and_repeats_at_most_one_message(tmp_path, simulator, slow_sink):
    import os
    import signal
    import sqlite3
    import time

    import yaml
    from test_e2e import REPO, mistwatch

    config = {"mist": {"base_url": simulator.url, "token": simulator.token, "org_id": simulator.org.org_id},
              "state_dir": "var", "reports": {"dir": "reports"}, "rules": [str(REPO / "rules")],
              "group_wait": 0, "group_interval": 0,
              "notifiers": [{"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": slow_sink.port,
                             "from": "mistwatch@example.com", "to": ["noc@example.com"], "timeout": 10}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    from dataclasses import replace

    with Store.open(tmp_path / "var") as store:  # what a relay outage left behind
        outbox.enqueue(store, [replace(pipeline.sample_notification("mail", T0), id=f"queued{i}") for i in range(4)],
                       T0)
    proc = subprocess.Popen([sys.executable, "-m", "mistwatch", "run", "--now", T0.isoformat()], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 60
    while slow_sink.started < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # while the server holds the third message's DATA
    proc.wait()
    assert slow_sink.started == 3

    done = mistwatch("run", "--now", (T0 + timedelta(minutes=15)).isoformat(), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    ids = [r.strip("<>").split("@")[0] for r in slow_sink.received]
    assert sorted(set(ids)) == [f"queued{i}" for i in range(4)]  # nothing lost
    assert len(ids) <= 5  # at most the one in flight again
    with sqlite3.connect(tmp_path / "var" / "mistwatch.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_newer_message_of_a_group_never_overtakes_an_older_one_in_flight_elsewhere(notify_env, smtp_sink):
    notify_env.configure([smtp_sink.settings()])
    firing = pipeline.build_notification("older", "mail", [make_alert(site="Lab")], [], {}, "g|site_id=lab", T0)
    outbox.enqueue(notify_env.store, [firing], T0)
    outbox.claim(notify_env.store, T0, "elsewhere:4242:aaaa")  # another process is sending it
    later = pipeline.build_notification("newer", "mail", [], [make_alert(site="Lab")], {}, "g|site_id=lab",
                                        T0 + timedelta(minutes=5))
    outbox.enqueue(notify_env.store, [later], T0 + timedelta(minutes=5))
    assert notify_env.send_outbox(T0 + timedelta(minutes=5)).sent == []
    sent = notify_env.send_outbox(T0 + outbox.CLAIM_LEASE + timedelta(minutes=1)).sent
    assert [item.id for item in sent] == ["older", "newer"]
