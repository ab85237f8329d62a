"""Failover benchmark: two `mistwatch daemon` processes on one PostgreSQL store, the active one
SIGKILLed again and again, a real SMTP server receiving every notification.

    python bench/failover.py --store auto --kills 50        # a throwaway PostgreSQL cluster (initdb)
    python bench/failover.py --store postgresql://user@host/db --kills 10

Setup: the Mist simulator (in this process, loopback HTTP), an SMTP server (aiosmtpd, loopback), two
daemons (``--interval 1s``) each with its own folder and config, sharing ``store.url``. A feeder
writes a notification into the outbox every ``--feed-every`` seconds all along, so messages are
always in flight when the kill lands. Each round: wait until there is an active daemon and a
standby, let it run a random 0.2-1.5 s, SIGKILL the active one, time until the standby holds the
store's lock (its session shows ``active``), start the killed one again (it becomes the standby).

At the end the outbox is drained and the daemons stopped, then every outbox row is compared with
what the SMTP server received (by Message-ID, which the email notifier derives from the
notification id): lost = sent or pending rows never received; twice = Message-IDs received more
than once. Takeover time: SIGKILL to the standby's session holding the lock, p50/p95/max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
TOKEN = "failover-token"


class Sink:
    """An SMTP server on loopback recording the Message-ID of every message accepted."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.ids: list[str] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                from email import message_from_bytes

                sink.ids.append(str(message_from_bytes(envelope.content)["Message-ID"]))
                return "250 Message accepted"

        from cycle import free_port  # the sibling benchmark's helper

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def write_config(folder: Path, sim_url: str, org_id: str, store_url: str, smtp_port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(json.dumps({
        "mist": {"base_url": sim_url, "token": TOKEN, "org_id": org_id},
        "state_dir": "var", "reports": {"dir": "reports"}, "store": {"url": store_url},
        "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                       "from": "mistwatch@example.com", "to": ["noc@example.com"], "timeout": 5}],
    }), encoding="utf-8")


def start_daemon(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (folder / "daemon.log").open("a") as log:
        return subprocess.Popen([sys.executable, "-m", "mistwatch", "daemon", "--config", "config.yaml",
                                 "--interval", "1s"], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=log)


def sessions(store: Any) -> list[dict[str, Any]]:
    return store.active_sessions()


def pid_of(session: dict[str, Any]) -> int:
    return int(str(session["application_name"]).split(" pid ")[1].split()[0])


def wait_for(check: Any, timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll)
    raise RuntimeError(f"timed out waiting for {what}")


def feeder(store_url: str, every: float, stop: threading.Event, fed: list[str]) -> None:
    from mistwatch.notify import outbox
    from mistwatch.notify.pipeline import sample_notification
    from mistwatch.store.database import Store

    with Store.open(store_url) as store:
        while not stop.is_set():
            message = replace(sample_notification("mail", datetime.now(timezone.utc)), id=outbox.new_id())
            outbox.enqueue(store, [message], datetime.now(timezone.utc))
            fed.append(message.id)
            stop.wait(every)


def run_failover(store_url: str, kills: int, *, sites: int = 12, feed_every: float = 0.1, seed: int = 1,
                 folder: Path | None = None, log: Any = print) -> dict[str, Any]:
    """The whole experiment; returns the figures (and raises if the daemons never take over)."""
    from mistwatch.notify import outbox
    from mistwatch.plugins.mist.simulator import SimulatedOrg, serve
    from mistwatch.store.database import Store

    rng = random.Random(seed)
    work = Path(folder or tempfile.mkdtemp(prefix="mistwatch-failover-"))
    sink = Sink()
    server = serve(SimulatedOrg(sites=sites), token=TOKEN)
    procs: dict[str, subprocess.Popen] = {}
    stop_feed = threading.Event()
    fed: list[str] = []
    takeovers: list[float] = []
    try:
        for name in ("a", "b"):
            write_config(work / name, server.url, server.org.org_id, store_url, sink.port)
        with Store.open(store_url):  # migrate once, before two daemons race to
            pass
        for name in ("a", "b"):
            procs[name] = start_daemon(work / name)
        feed = threading.Thread(target=feeder, args=(store_url, feed_every, stop_feed, fed), daemon=True)
        feed.start()
        with Store.open(store_url) as watch:
            for round_no in range(kills):
                both = wait_for(lambda: len(sessions(watch)) >= 2 and any(s["active"] for s in sessions(watch))
                                and sessions(watch), 120, "an active daemon and a standby")
                active_pid = pid_of(next(s for s in both if s["active"]))
                victim = next(n for n, p in procs.items() if p.pid == active_pid)
                time.sleep(rng.uniform(0.2, 1.5))
                killed_at = time.monotonic()
                os.kill(active_pid, signal.SIGKILL)
                wait_for(lambda pid=active_pid: any(s["active"] and pid_of(s) != pid for s in sessions(watch)),
                         60, "the standby to take over", poll=0.005)
                takeovers.append(time.monotonic() - killed_at)
                procs[victim].wait()
                procs[victim] = start_daemon(work / victim)
                log(f"kill {round_no + 1}/{kills}: takeover {takeovers[-1] * 1000:.0f} ms")
            stop_feed.set()
            feed.join()
            # drain: every message sent (or given up) before the daemons stop
            wait_for(lambda: outbox.counts(watch)["pending"] == 0, 120, "the outbox to drain", poll=0.2)
            rows = watch.db.execute("SELECT id, status, permanent FROM outbox").fetchall()
            runs = watch.runs(1000)
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=60)
        time.sleep(0.2)
    finally:
        stop_feed.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        server.close()
        sink.stop()
    received = Counter(sink.ids)
    expected = {f"<{row[0]}@example.com>" for row in rows}
    sent = {f"<{row[0]}@example.com>" for row in rows if row[1] == "sent"}
    lost = sorted(expected - set(received))
    twice = sorted(mid for mid, n in received.items() if n > 1)
    ms = sorted(t * 1000 for t in takeovers)
    return {
        "kills": kills, "outbox_rows": len(rows), "fed": len(fed), "sent": len(sent),
        "received": sum(received.values()), "lost": len(lost), "sent_twice": len(twice),
        "permanent_failures": sum(1 for row in rows if row[2]),
        "runs": len(runs), "runs_interrupted": sum(1 for r in runs if r.status == "failed"),
        "takeover_ms": {"p50": round(statistics.median(ms)) if ms else None,
                        "p95": round(ms[max(0, round(0.95 * len(ms)) - 1)]) if ms else None,
                        "max": round(ms[-1]) if ms else None},
        "folder": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="auto", help="a postgresql:// URL, or auto: a throwaway cluster")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--feed-every", type=float, default=0.1, help="seconds between outbox messages fed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    stop_cluster = None
    url = args.store
    if url == "auto":
        url, stop_cluster = start_cluster()
    try:
        figures = run_failover(url, args.kills, sites=args.sites, feed_every=args.feed_every, seed=args.seed)
    finally:
        if stop_cluster:
            stop_cluster()
    print(json.dumps({**figures, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                            f"Python {platform.python_version()}"}, indent=2))
    if figures["lost"] or figures["sent_twice"]:
        sys.exit(1)


def start_cluster() -> tuple[str, Any]:
    """A throwaway PostgreSQL cluster (the tests' fixture code): (database URL, stop function)."""
    import shutil

    sys.path.insert(0, str(REPO / "tests"))
    from fixtures_postgres import _start_cluster

    folder = Path(tempfile.mkdtemp(prefix="mistwatch-pg-"))
    server, stop = _start_cluster(folder)
    name = server.create_database()

    def stop_it() -> None:
        subprocess.run(stop, capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)

    return server.url(name), stop_it


if __name__ == "__main__":
    main()
