"""Crash benchmark: kill -9 at random moments of `run` and `daemon`; count notifications lost and doubled.

    python bench/crash.py                      # 40 kills of `run`, 25 of `daemon` (a few minutes)
    python bench/crash.py --runs 5 --daemons 3 # a quick look

Setup: the Mist simulator (scenario ``degraded``, its own process), a slow SMTP server on loopback
(aiosmtpd in this process; each DATA waits ``--data-delay`` seconds before it answers 250) and an
email notifier pointing at it. Before each start, ``--queued`` alert notifications are written to the
outbox (as a relay outage would leave them), so every process has a batch to send while it may be
killed. Each `run` evaluates as of a time 15 minutes after the previous one (``--now``), so alerts
move from pending to firing and add their own notifications. Each process is killed (SIGKILL) after a
random delay; one that finished first is counted as not killed. ``PRAGMA integrity_check`` runs after
every kill. At the end one `run` is left to finish, which sends whatever is still due.

Reported: notifications (outbox rows), lost (a row never received by the server: must be 0),
duplicated (copies beyond the first: at most one per kill), integrity checks not "ok" (must be 0).
Message-IDs are derived from the outbox row id, which is how copies are matched to rows.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cycle import TOKEN, free_port, start_simulator  # the sibling benchmark's simulator helpers

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)


class SlowSink:
    """An SMTP server that takes ``delay`` seconds over each DATA and counts Message-IDs it accepted."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = None

    async def handle_DATA(self, server, session, envelope) -> str:
        from email import message_from_bytes
        from email.policy import default

        await asyncio.sleep(self.delay)
        message = message_from_bytes(envelope.content, policy=default)
        with self.lock:
            self.received[str(message["Message-ID"]).strip("<>").split("@")[0]] += 1
        return "250 Message accepted"

    def start(self) -> SlowSink:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()


def write_config(folder: Path, url: str, org_id: str, smtp_port: int) -> Path:
    config = folder / "config.yaml"
    config.write_text(json.dumps({
        "mist": {"base_url": url, "token": TOKEN, "org_id": org_id},
        "state_dir": "var", "reports": {"dir": "reports"}, "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                       "from": "mistwatch@example.com", "to": ["noc@example.com"], "timeout": 30}],
    }), encoding="utf-8")
    return config


def queue_messages(state_dir: Path, count: int, now: datetime) -> None:
    """Write ``count`` alert notifications to the outbox, due now (what a relay outage leaves)."""
    from mistwatch.notify import outbox
    from mistwatch.notify.pipeline import sample_notification
    from mistwatch.store.database import Store

    messages = [replace(sample_notification("mail", now), id=outbox.new_id()) for _ in range(count)]
    with Store.open(state_dir) as store:
        outbox.enqueue(store, messages, now)


def integrity(db_path: Path) -> str:
    with sqlite3.connect(db_path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def kill_at_random(command: list[str], cwd: Path, within: float, rng: random.Random) -> bool:
    """Start ``command``, SIGKILL it after a random delay; True if it was still running (killed)."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=rng.uniform(0.2, within))
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="kills of `mistwatch run` (default 40)")
    parser.add_argument("--daemons", type=int, default=25, help="kills of `mistwatch daemon` (default 25)")
    parser.add_argument("--queued", type=int, default=5, help="messages queued before each start (default 5)")
    parser.add_argument("--data-delay", type=float, default=0.3, help="seconds the server takes per DATA")
    parser.add_argument("--within", type=float, default=None,
                        help="kill within this many seconds of start (default: 1.2 x a measured run)")
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run_bench(args.runs, args.daemons, queued=args.queued, data_delay=args.data_delay,
                       within=args.within, sites=args.sites, seed=args.seed)
    print(json.dumps(result, indent=2))
    if result["lost"] or result["integrity_failures"] or result["duplicated"] > result["kills"]:
        raise SystemExit(1)


def run_bench(runs: int, daemons: int, *, queued: int = 5, data_delay: float = 0.3, within: float | None = None,
              sites: int = 12, seed: int = 1) -> dict:
    rng = random.Random(seed)
    sink = SlowSink(data_delay).start()
    sim, url, org_id = start_simulator(sites)
    started = time.monotonic()
    kills = {"run": 0, "daemon": 0}
    bad_checks = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            config = write_config(folder, url, org_id, sink.port)
            state_dir, db_path = folder / "var", folder / "var" / "mistwatch.db"
            mistwatch = [sys.executable, "-m", "mistwatch"]
            now = T0
            if within is None:  # calibrate: kills spread over a whole run, from start-up to the last send
                queue_messages(state_dir, queued, now)
                began = time.monotonic()
                subprocess.run([*mistwatch, "run", "--config", str(config), "--now", now.isoformat()], cwd=folder,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                within = 1.2 * (time.monotonic() - began)
                now += timedelta(minutes=15)
            for i in range(runs + daemons):
                as_run = i < runs
                queue_messages(state_dir, queued, now)
                if as_run:
                    command = [*mistwatch, "run", "--config", str(config), "--now", now.isoformat()]
                else:
                    command = [*mistwatch, "daemon", "--config", str(config), "--interval", "1m"]
                if kill_at_random(command, folder, within, rng):
                    kills["run" if as_run else "daemon"] += 1
                    if integrity(db_path) != "ok":
                        bad_checks += 1
                now += timedelta(minutes=15)
            # the last run is left to finish: it sends whatever the killed ones left due
            last = now + timedelta(hours=2)
            subprocess.run([*mistwatch, "run", "--config", str(config), "--now", last.isoformat()], cwd=folder,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if integrity(db_path) != "ok":
                bad_checks += 1
            with sqlite3.connect(db_path) as db:
                rows = dict(db.execute("SELECT id, status FROM outbox").fetchall())
    finally:
        sim.terminate()
        sim.wait()
        sink.stop()
    received = sink.received
    lost = sorted(i for i in rows if received[i] == 0)
    return {
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        "seconds": round(time.monotonic() - started, 1),
        "kill_within_s": round(within or 0, 1), "processes": runs + daemons, "kills": sum(kills.values()),
        "kills_of_run": kills["run"],
        "kills_of_daemon": kills["daemon"], "notifications": len(rows), "lost": len(lost),
        "lost_statuses": collections.Counter(rows[i] for i in lost),
        "duplicated": sum(c - 1 for c in received.values() if c > 1),
        "mails_received": sum(received.values()), "unknown_mails": sum(c for i, c in received.items() if i not in rows),
        "integrity_failures": bad_checks,
    }


if __name__ == "__main__":
    main()
