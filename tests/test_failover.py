"""Active/standby: two real daemon processes on one real PostgreSQL store, a real SMTP server.
The long version (50 kills, takeover percentiles) is bench/failover.py; this is its short run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL/SIGTERM are POSIX")


def test_killing_the_active_daemon_loses_no_message_and_repeats_at_most_the_one_in_flight(pg_database_url,
                                                                                         tmp_path):
    """Each message is claimed, sent and marked in one transaction: a SIGKILL between the SMTP
    server's "250 accepted" and the commit (a few milliseconds) repeats that one message, never
    a batch, and nothing is ever lost."""
    from failover import run_failover

    figures = run_failover(pg_database_url, kills=3, feed_every=0.1, folder=tmp_path, log=lambda *_: None)
    assert figures["fed"] > 0 and figures["sent"] == figures["outbox_rows"]
    assert figures["lost"] == 0
    assert figures["sent_twice"] <= figures["kills"]
    # the standby tries every 0.2 s; 3 s leaves room for a loaded CI machine (bench/failover.py measures)
    assert figures["takeover_ms"]["max"] < 3000


def test_the_standby_writes_nothing_and_status_shows_which_daemon_is_active(pg_database_url, tmp_path):
    from failover import Sink, start_daemon, wait_for, write_config

    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve
    from mistwatch.store.database import Store

    sink = Sink()
    procs: list[subprocess.Popen] = []
    with serve(SimulatedOrg(sites=3), token="failover-token") as server, Store.open(pg_database_url) as watch:
        try:
            for name in ("a", "b"):
                write_config(tmp_path / name, server.url, server.org.org_id, pg_database_url, sink.port)
                procs.append(start_daemon(tmp_path / name))
            wait_for(lambda: len(watch.active_sessions()) == 2, 60, "two daemons")
            wait_for(lambda: len(watch.runs()) >= 2, 60, "two cycles")
            status = subprocess.run([sys.executable, "-m", "mistwatch", "status", "--config", "config.yaml", "--json"],
                                    cwd=tmp_path / "a", capture_output=True, text=True, timeout=60, check=False)
            daemons = json.loads(status.stdout)["store"]["daemons"]
            assert sorted(d["active"] for d in daemons) == [False, True]
            standby = next(d for d in daemons if not d["active"])
            assert "standby" in standby["application_name"]
            standby_folder = next(tmp_path / n for n, p in zip("ab", procs, strict=True)
                                  if f"pid {p.pid} " in standby["application_name"])
            assert not (standby_folder / "reports" / "latest.json").exists()  # it ran no cycle
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
            sink.stop()
    assert codes == [0, 0]


def test_an_active_daemon_that_loses_its_connection_stops_and_the_standby_takes_over(pg_database_url, tmp_path):
    import psycopg
    from failover import Sink, pid_of, start_daemon, wait_for, write_config

    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve
    from mistwatch.store.database import Store

    sink = Sink()
    procs: dict[int, subprocess.Popen] = {}
    with serve(SimulatedOrg(sites=3), token="failover-token") as server, Store.open(pg_database_url) as watch:
        try:
            for name in ("a", "b"):
                write_config(tmp_path / name, server.url, server.org.org_id, pg_database_url, sink.port)
                proc = start_daemon(tmp_path / name)
                procs[proc.pid] = proc
            sessions = wait_for(lambda: len(watch.active_sessions()) == 2 and watch.active_sessions(), 60,
                                "two daemons")
            active = next(s for s in sessions if s["active"])
            with psycopg.connect(pg_database_url, autocommit=True) as admin:  # cut the active one off
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                              (active["application_name"],))
            lost = procs[pid_of(active)]
            assert lost.wait(timeout=30) == 1  # it noticed before its next cycle and stopped
            wait_for(lambda: any(s["active"] and pid_of(s) != lost.pid for s in watch.active_sessions()), 30,
                     "the standby to take over")
            logs = [(tmp_path / n / "daemon.log").read_text() for n in "ab"]
            assert sum("lost the store's active lock" in log for log in logs) == 1
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
            sink.stop()
