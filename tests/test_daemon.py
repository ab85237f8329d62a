"""The daemon: fixed schedule under a fake clock, stop and reload requests, the digest at its time,
the state lock, the rotating log; and the real process: SIGTERM during a cycle, SIGHUP with a broken
config, a concurrent `run` refused by the lock."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from mistwatch.errors import ConfigError, LockHeld
from mistwatch.secrets import register
from mistwatch.service.daemon import Daemon, SystemClock
from mistwatch.service.lock import StateLock
from mistwatch.service.logsetup import setup_logging

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


def test_the_log_names_the_interval_as_an_operator_would_write_it(caplog):
    clock = FakeClock()
    durations = iter([3, 40, 3])

    def cycle(now):
        clock.t += timedelta(minutes=next(durations))

    with caplog.at_level(logging.INFO, logger="mistwatch.service.daemon"):
        Daemon(cycle, 15 * MIN, clock=clock).run(max_cycles=3)
    assert "a cycle every 15m from" in caplog.text
    assert "longer than the 15m interval: skipping 2 slot(s)" in caplog.text
    assert "0:15:00" not in caplog.text


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
    with caplog.at_level(logging.ERROR, logger="mistwatch.service.daemon"):
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
    with caplog.at_level(logging.ERROR, logger="mistwatch.service.daemon"):
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


# -- the real process -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SLOW_DAEMON = """
import sys, time
from datetime import timedelta
from pathlib import Path
from mistwatch.service.daemon import Daemon, install_signal_handlers
from mistwatch.service.logsetup import setup_logging

setup_logging({"level": "info"})
marks = Path(sys.argv[1])

def cycle(now):
    with marks.open("a") as fh:
        fh.write("start\\n")
    time.sleep(2.0)
    with marks.open("a") as fh:
        fh.write("end\\n")

d = Daemon(cycle, timedelta(hours=1))
install_signal_handlers(d)
sys.exit(d.run())
"""


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses SIGBREAK")
def test_sigterm_during_a_slow_cycle_finishes_it_and_exits_0(tmp_path):
    marks = tmp_path / "marks"
    script = tmp_path / "slow_daemon.py"
    script.write_text(SLOW_DAEMON, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marks.exists() and "start" in marks.read_text(), what="the cycle to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert time.monotonic() - t0 < 5
    assert marks.read_text().split() == ["start", "end"]  # the cycle finished, no new one began
    assert "SIGTERM received: finishing the current cycle" in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals; Windows uses SIGBREAK")
def test_sigterm_while_idle_between_cycles_exits_0_at_once(tmp_path):
    marks = tmp_path / "marks"
    script = tmp_path / "slow_daemon.py"
    script.write_text(SLOW_DAEMON, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: marks.exists() and "end" in marks.read_text(), what="the first cycle to end")
        time.sleep(0.3)  # now waiting for the next slot, an hour away
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - t0 < 2


def write_config(folder: Path, simulator, **extra) -> Path:
    config = {
        "mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id},
        "state_dir": "var",
        "reports": {"dir": "reports"},
        "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "console", "type": "console"}],
        **extra,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_daemon(folder: Path, simulator, *args: str) -> tuple[subprocess.Popen, Path]:
    log = folder / "daemon.log"
    env = {**os.environ, "MIST_API_TOKEN": simulator.token, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "mistwatch", "daemon", "--config", "config.yaml", *args],
                            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    return proc, log


def mistwatch_cli(folder: Path, simulator, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIST_API_TOKEN": simulator.token, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mistwatch", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def finished_runs(folder: Path) -> int:
    from mistwatch.store.database import Store

    if not (folder / "var" / "mistwatch.db").exists():
        return 0
    with Store.open(folder / "var") as store:
        return sum(1 for r in store.runs(100) if r.finished_at is not None)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM/SIGHUP are POSIX")
def test_the_daemon_stops_mid_cycle_on_sigterm_after_finishing_it(tmp_path, simulator):
    write_config(tmp_path, simulator)
    simulator.inject("*/stats/devices*", "slow", count=1, delay=2.0)
    proc, log = start_daemon(tmp_path, simulator, "--interval", "1h")
    try:
        wait_for(lambda: simulator.calls >= 3, what="the first cycle to be collecting")
        t0 = time.monotonic()
        code = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()
    assert time.monotonic() - t0 < 10
    assert finished_runs(tmp_path) == 1  # the interrupted cycle completed and was recorded
    assert (tmp_path / "reports" / "latest.html").exists()
    assert "daemon stopped (SIGTERM) after 1 cycle(s)" in log.read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP is POSIX")
def test_sighup_with_a_broken_config_keeps_the_old_one_and_a_second_writer_is_refused(tmp_path, simulator):
    config = write_config(tmp_path, simulator)
    # Cycles every 2 s would spend 16,200 calls an hour: with Mist's 5,000 the collector would skip
    # its optional endpoints (a partial cycle). A token with a bigger budget keeps these cycles whole.
    config.write_text(config.read_text(encoding="utf-8").replace(
        "org_id:", "hourly_budget: 100000\n  org_id:", 1), encoding="utf-8")
    simulator.hourly_budget = None
    proc, log = start_daemon(tmp_path, simulator, "--interval", "2s")
    try:
        wait_for(lambda: finished_runs(tmp_path) >= 1, what="the first cycle")
        config.write_text(config.read_text(encoding="utf-8") + "notifers: []\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the previous configuration" in log.read_text(),
                 what="the reload to fail")
        before = finished_runs(tmp_path)
        wait_for(lambda: finished_runs(tmp_path) > before, what="a cycle after the failed reload")
        assert proc.poll() is None

        config.write_text(config.read_text(encoding="utf-8").replace("notifers: []\n", ""), encoding="utf-8")
        concurrent = mistwatch_cli(tmp_path, simulator, "run", "--config", "config.yaml")
        assert concurrent.returncode == 1
        assert "is in use by a mistwatch daemon (pid " in concurrent.stderr
        assert "Traceback" not in concurrent.stderr
        second = mistwatch_cli(tmp_path, simulator, "daemon", "--config", "config.yaml")
        assert second.returncode == 1
        assert "is in use by a mistwatch daemon (pid " in second.stderr
        status = mistwatch_cli(tmp_path, simulator, "status", "--config", "config.yaml", "--json")
        data = json.loads(status.stdout)
        assert data["running"]["purpose"] == "daemon"
        assert data["last_successful_run"]["status"] == "ok"
        assert data["interval_s"] == 2  # the daemon's --interval, not the config's 15m: staleness by it
    finally:
        code = stop(proc)
    assert code == 0
    assert "notifers" in log.read_text()  # the reload error names the bad key


def test_status_shows_the_last_successful_cycle_alerts_and_outbox(notify_env):
    from click.testing import CliRunner

    from mistwatch.cli.daemon import status

    config = notify_env.configure([{"name": "console", "type": "console"}])
    runner = CliRunner()
    empty = runner.invoke(status, ["--config", str(config.path)])
    assert empty.exit_code == 0, empty.output
    assert "No successful cycle yet." in empty.output

    store = notify_env.store
    then = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    ok = store.start_run(then, "all")
    store.finish_run(ok, finished_at=then + MIN, status="ok", api_calls=9)
    bad = store.start_run(then + 15 * MIN, "all")
    store.finish_run(bad, finished_at=then + 16 * MIN, status="failed", errors=["collection failed: timeout"])
    shown = runner.invoke(status, ["--config", str(config.path), "--json"])
    data = json.loads(shown.output)
    assert data["last_successful_run"]["id"] == ok
    assert [r["status"] for r in data["runs"]] == ["failed", "ok"]
    assert data["stale"] is True  # more than three intervals ago
    assert data["outbox"] == {"sent": 0, "pending": 0, "failed": 0, "superseded": 0}
    assert data["running"] is None
    text = runner.invoke(status, ["--config", str(config.path)]).output
    assert "Last successful cycle: 2026-01-05T08:01:00+00:00" in text
    assert data["runs"][0]["errors"] == ["collection failed: timeout"]
    assert "failed" in text and "Outbox: 0 pending, 0 failed, 0 sent" in text


def test_status_shows_the_api_budget_of_the_last_cycle_that_recorded_one(notify_env):
    from click.testing import CliRunner

    from mistwatch.cli.daemon import status

    config = notify_env.configure([{"name": "console", "type": "console"}])
    store = notify_env.store
    then = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    run = store.start_run(then, "all")
    budget = {"calls_cycle": 9, "calls_hour": 4992, "hourly_budget": 5000, "min_interval_s": 60.0,
              "skipped": ["stats/bgp_peers/search", "stats/vpn_peers/search"], "blocked_until": None}
    store.finish_run(run, finished_at=then + MIN, status="partial", api_calls=9,
                     summary={"api_budget": {"mist": budget}})
    data = json.loads(CliRunner().invoke(status, ["--config", str(config.path), "--json"]).output)
    assert data["runs"][0]["api_budget"]["mist"].items() >= budget.items()
    text = " ".join(CliRunner().invoke(status, ["--config", str(config.path)]).output.split())
    assert "9 calls this cycle, 4992 this clock hour of 5000" in text
    assert "skipped to save the budget: stats/bgp_peers/search, stats/vpn_peers/search" in text


def test_status_checks_each_orgs_token_against_its_own_hourly_budget(notify_env):
    from click.testing import CliRunner

    from mistwatch.cli.daemon import status

    config = notify_env.configure([{"name": "console", "type": "console"}])
    store = notify_env.store
    then = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    run = store.start_run(then, "all")
    north = {"calls_cycle": 40, "calls_hour": 80, "hourly_budget": 5000, "org_id": "o-1", "org_name": "North"}
    south = {"calls_cycle": 1300, "calls_hour": 2600, "hourly_budget": 5000, "org_id": "o-2", "org_name": "South"}
    store.finish_run(run, finished_at=then + MIN, status="ok", api_calls=1340,
                     summary={"api_budget": {"mist org North": north, "mist org South": south}})
    data = json.loads(CliRunner().invoke(status, ["--config", str(config.path), "--json"]).output)
    budgets = data["runs"][0]["api_budget"]
    interval = data["interval_s"]
    assert budgets["mist org North"]["calls_per_hour"] == round(40 * 3600 / interval)
    assert budgets["mist org North"]["within_budget"] is True
    assert budgets["mist org South"]["within_budget"] is False  # 1,300 calls every 15 min: 5,200 an hour
    text = " ".join(CliRunner().invoke(status, ["--config", str(config.path)]).output.split())
    assert "API budget (mist org North," in text and "API budget (mist org South," in text
    assert "5200 calls/hour, over this token's budget" in text


def test_status_judges_staleness_by_the_daemons_own_interval(notify_env):
    from mistwatch.cli.daemon import KV_DAEMON_INTERVAL, status_data

    config = notify_env.configure([{"name": "console", "type": "console"}])
    store = notify_env.store
    then = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    ok = store.start_run(then, "all")
    store.finish_run(ok, finished_at=then, status="ok", api_calls=9)
    ten_minutes_on = then + 10 * MIN
    assert status_data(config, store, ten_minutes_on)["stale"] is False  # the config's 15m
    store.kv_set(KV_DAEMON_INTERVAL, 120.0)  # what `mistwatch daemon --interval 2m` records
    data = status_data(config, store, ten_minutes_on)
    assert data["interval_s"] == 120 and data["stale"] is True


def test_the_systemd_unit_lets_the_daemon_write_where_its_install_notes_point_the_config():
    unit = (Path(__file__).resolve().parents[1] / "contrib" / "mistwatch.service").read_text(encoding="utf-8")
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["ExecStart"].endswith("mistwatch daemon --config /etc/mistwatch/config.yaml")
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["ProtectSystem"] == "strict"  # everything outside the writable paths is read-only
    writable = ["/var/lib/" + settings["StateDirectory"], *settings["ReadWritePaths"].split()]
    # the config lines the install notes ask for, under "point everything mistwatch writes at ..."
    notes = unit[unit.index("point everything mistwatch writes"):unit.index("[Unit]")].splitlines()[2:5]
    config = yaml.safe_load("\n".join(line.removeprefix("#   ").split("  #")[0] for line in notes))
    written = [config["state_dir"], config["reports"]["dir"], str(Path(config["log"]["file"]).parent)]
    for folder in written:
        assert any(folder == w or folder.startswith(w + "/") for w in writable), folder


class SteppingClock(FakeClock):
    """A wall clock an operator (or NTP) can step, and a monotonic clock that never goes back."""

    def __init__(self, t: datetime = START) -> None:
        super().__init__(t)
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if not super().wait(event, seconds):
            self.mono += seconds
            return False
        return True


def test_a_backward_step_of_the_wall_clock_does_not_stop_the_cycles():
    clock = SteppingClock()

    def cycle(now):
        if now == START:
            clock.t -= timedelta(hours=1)  # stepped back during the first cycle

    d = Daemon(cycle, 15 * MIN, clock=clock)
    d.run(max_cycles=3)
    # cycles keep coming every 15 minutes; they get the (stepped) wall-clock time
    assert offsets(d) == [0, -45, -30]


def test_a_forward_step_of_the_wall_clock_runs_no_burst_of_cycles():
    clock = SteppingClock()

    def cycle(now):
        if now == START:
            clock.t += timedelta(hours=2)

    d = Daemon(cycle, 15 * MIN, clock=clock)
    d.run(max_cycles=3)
    assert offsets(d) == [0, 135, 150]
    assert d.stats.skipped_slots == 0
