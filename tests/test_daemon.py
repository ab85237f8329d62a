"""The daemon: fixed schedule under a fake clock, stop and reload requests, the digest at its time,
the state lock, the rotating log; and the real process: SIGTERM during a cycle, SIGHUP with a broken
config, a concurrent `run` refused by the lock."""

from __future__ import annotations

import io
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from mistwatch.daemon import Daemon, SystemClock
from mistwatch.errors import ConfigError, LockHeld
from mistwatch.lock import StateLock
from mistwatch.logsetup import setup_logging
from mistwatch.secrets import register

START = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


class FakeClock:
    """Time moves only when the daemon waits or a cycle says it took time."""

    def __init__(self, t: datetime = START) -> None:
        self.t = t
        self.waits: list[float] = []

    def now(self) -> datetime:
        return self.t

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.waits.append(seconds)
        self.t += timedelta(seconds=seconds)
        return False


def slow_cycle(clock: FakeClock, minutes: float):
    def cycle(now: datetime) -> None:
        clock.t += timedelta(minutes=minutes)
    return cycle


def offsets(daemon: Daemon) -> list[float]:
    return [(s - START) / MIN for s in daemon.stats.slots]


def test_cycles_start_on_a_fixed_schedule():
    clock = FakeClock()
    d = Daemon(slow_cycle(clock, 3), 15 * MIN, clock=clock)
    d.run(max_cycles=5)
    assert offsets(d) == [0, 15, 30, 45, 60]
    assert d.stats.skipped_slots == 0


def test_a_slow_cycle_skips_missed_slots_without_drift_or_pile_up():
    clock = FakeClock()
    durations = iter([3, 40, 3, 3])

    def cycle(now):
        clock.t += timedelta(minutes=next(durations))

    d = Daemon(cycle, 15 * MIN, clock=clock)
    d.run(max_cycles=4)
    # the 40-minute cycle ran from 15 to 55: slots 30 and 45 are skipped, the next starts at 60
    assert offsets(d) == [0, 15, 60, 75]
    assert d.stats.skipped_slots == 2


def test_waits_are_capped_so_a_clock_jump_cannot_oversleep():
    clock = FakeClock()
    d = Daemon(slow_cycle(clock, 0), 5 * MIN, clock=clock, max_wait_s=60)
    d.run(max_cycles=2)
    assert offsets(d) == [0, 5]
    assert clock.waits == [60.0] * 5


def test_a_stop_request_during_a_cycle_lets_it_finish_then_the_loop_ends():
    clock = FakeClock()
    finished = []

    def cycle(now):
        d.request_stop("SIGTERM")
        clock.t += 2 * MIN
        finished.append(now)

    d = Daemon(cycle, 15 * MIN, clock=clock)
    assert d.run() == 0
    assert finished == [START]
    assert d.stop_reason == "SIGTERM"


def test_a_failing_cycle_is_logged_and_the_schedule_goes_on(caplog):
    clock = FakeClock()
    calls = []

    def cycle(now):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("boom")

    d = Daemon(cycle, 10 * MIN, clock=clock)
    with caplog.at_level(logging.ERROR, logger="mistwatch.daemon"):
        d.run(max_cycles=2)
    assert offsets(d) == [0, 10]
    assert d.stats.failed_cycles == 1
    assert "cycle failed: RuntimeError: boom" in caplog.text


def test_a_reload_that_fails_keeps_the_old_configuration(caplog):
    clock = FakeClock()
    config = {"name": "old"}

    def reload():
        raise ConfigError("unknown key 'notifers'", file="config.yaml", line=7)

    def cycle(now):
        if len(d.stats.slots) == 1:
            d.request_reload()
        seen.append(config["name"])

    seen: list[str] = []
    d = Daemon(cycle, 10 * MIN, clock=clock, reload=reload)
    with caplog.at_level(logging.ERROR, logger="mistwatch.daemon"):
        d.run(max_cycles=3)
    assert seen == ["old", "old", "old"]
    assert d.stats.failed_reloads == 1
    assert "reload failed, keeping the previous configuration: config.yaml:7: unknown key" in caplog.text
    assert offsets(d) == [0, 10, 20]


def test_a_reload_with_a_new_interval_counts_it_from_the_last_cycle():
    clock = FakeClock()

    def cycle(now):
        if len(d.stats.slots) == 2:
            d.request_reload()

    d = Daemon(cycle, 10 * MIN, clock=clock, reload=lambda: 30 * MIN)
    d.run(max_cycles=4)
    assert offsets(d) == [0, 10, 40, 70]
    assert d.stats.reloads == 1


class Digest:
    def __init__(self, due: datetime) -> None:
        self.due, self.sent = due, []

    def next_due(self, now):
        return self.due if not self.sent else self.due + timedelta(days=1)

    def send(self, now):
        self.sent.append(now)
        return True


def test_the_digest_goes_out_at_its_time_between_cycles():
    clock = FakeClock()
    digest = Digest(START + 25 * MIN)
    d = Daemon(slow_cycle(clock, 1), 60 * MIN, clock=clock, digest=digest)
    d.run(max_cycles=2)
    assert digest.sent == [START + 25 * MIN]
    assert offsets(d) == [0, 60]


def test_a_digest_that_cannot_be_sent_is_retried_once_per_cycle_not_in_a_busy_loop():
    clock = FakeClock()

    class Broken(Digest):
        def send(self, now):
            self.sent.append(now)
            raise OSError("reports dir missing")

        def next_due(self, now):
            return self.due

    digest = Broken(START + 5 * MIN)
    d = Daemon(slow_cycle(clock, 1), 10 * MIN, clock=clock, digest=digest)
    d.run(max_cycles=3)
    # tried at its time, then once after each cycle (the cycle may have fixed it), never in between
    assert digest.sent == [START + 5 * MIN, START + 11 * MIN]
    assert offsets(d) == [0, 10, 20]


def test_idle_waiting_uses_no_cpu_and_a_stop_wakes_it_at_once():
    d = Daemon(lambda now: None, timedelta(hours=1), clock=SystemClock())
    thread = threading.Thread(target=d.run)
    cpu0 = time.process_time()
    thread.start()
    time.sleep(1.0)
    idle_cpu = time.process_time() - cpu0
    t0 = time.monotonic()
    d.request_stop("test")
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 1.0
    assert idle_cpu < 0.1
    assert d.stats.cycles == 1


# -- the state lock ------------------------------------------------------------------------------

def test_a_second_holder_of_the_state_lock_is_refused_naming_the_first(tmp_path):
    with StateLock(tmp_path, purpose="daemon"), pytest.raises(LockHeld) as err:
        StateLock(tmp_path, purpose="run").acquire()
    message = str(err.value)
    assert "in use by a mistwatch daemon (pid " in message
    assert "stop it or wait for it to finish" in message


def test_the_state_lock_is_free_again_after_release(tmp_path):
    with StateLock(tmp_path):
        pass
    with StateLock(tmp_path) as again:
        assert again.held
    assert StateLock(tmp_path).holder() == {}


# -- logging -------------------------------------------------------------------------------------

def test_the_log_file_rotates_and_never_holds_a_secret(tmp_path):
    token = register("tok-SECRET-1234567890")
    handlers = setup_logging({"file": "logs/mw.log", "level": "info", "max_bytes": 2048, "backups": 2},
                             resolve=lambda p: tmp_path / p, stream=io.StringIO())
    try:
        logger = logging.getLogger("mistwatch.test")
        for i in range(100):
            logger.info("cycle %d used token %s", i, token)
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            logger.exception("failed")
    finally:
        for h in handlers:
            h.close()
        setup_logging({})
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["mw.log", "mw.log.1", "mw.log.2"]
    text = "".join((tmp_path / "logs" / f).read_text(encoding="utf-8") for f in files)
    assert "tok-SECRET" not in text and "***" in text
