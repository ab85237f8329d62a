"""Cycle benchmark: API calls, wall time and peak RSS of a cycle at 1,000 and 10,000 sites.

The simulator runs in its own process (`mistwatch simulate`), so the figures are mistwatch's own:
collection over loopback HTTP, the store, and (mode `all`) the rules, the report and notifications.

    python bench/cycle.py                 # 1,000 and 10,000 sites, modes monitor and all
    python bench/cycle.py --sites 1000 --mode monitor
    python bench/cycle.py --mode all --history-days 7   # a store holding a week of history

``--history-days N`` first fills the store (in its own process, not measured) with N days of the
cycles' history at the density ``Store.prune`` keeps (every cycle of the last 48 hours, then one per
hour), each run holding the snapshot collected from the simulator and its health scores (the oldest
and newest written through the Store API, those between copied as rows), so the
measured cycles read real trends, day-over-day baselines and health history. The hourly roll-ups
are written up to the hour before the last, so the first measured cycle rolls up one hour, as the
first cycle of every hour does.

``--store postgresql://...`` (or ``--store auto``: a throwaway cluster started with initdb) runs the
same cycles on a PostgreSQL store (a fresh schema per measurement), to compare with SQLite:

    python bench/cycle.py --sites 1000 --sites 10000 --mode monitor --store auto --compare

``--compare`` measures SQLite too and prints the ratio of the warm cycle's wall time (target <= 1.5).

``--orgs N`` runs N orgs of ``--sites`` sites each (each its own simulator process, token and hourly
budget) through ``mist: {orgs: [...]}``, to compare with one org of N times the sites:

    python bench/cycle.py --orgs 3 --sites 1000 --mode all; python bench/cycle.py --sites 3000 --mode all

Budgets (design.md): calls <= 15 + pages; 1,000 sites <= 2 s and <= 80 MB; 10,000 sites <= 15 s and <= 250 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_simulator(sites: int, seed: int = 7, token: str = TOKEN) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mistwatch", "simulate", "--port", str(port), "--sites", str(sites),
         "--token", token, "--seed", str(seed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{url}/api/v1/self", headers={"Authorization": f"Token {token}"}, timeout=2)
            org_id = answer.json()["privileges"][0]["org_id"]
            return proc, url, org_id
        except (requests.RequestException, ValueError, KeyError):
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("simulator did not start")


def fill(config: str, days: float, now: datetime) -> None:
    """Runs in its own process before the measured one: ``days`` days of history before ``now``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from evaluate import copy_history, history_times, write_history

    from mistwatch.engine import close_app, collect, open_app
    from mistwatch.report.health import compute_health, health_metrics

    app = open_app(config)
    history = app.config.data.get("history", {}) or {}
    raw_hours = float(history.get("raw_hours", 48))
    snapshot = collect(app, now - timedelta(days=days))
    scores = health_metrics(compute_health(snapshot, [], (app.config.data.get("health") or {}).get("weights")))
    times = history_times(now, days, raw_hours=raw_hours)
    # the oldest and the newest run through the Store API (entities first and last seen then), the
    # ones between copied from the oldest: the same sample rows, as fast as SQLite copies them
    write_history(app.store, times[:1], lambda at: snapshot.entities, lambda at: scores)
    copy_history(app.store, times[0], times[1:-1])
    write_history(app.store, times[-1:], lambda at: snapshot.entities, lambda at: scores)
    # what the daemon's daily prune would leave (nothing to delete if the density is right), and
    # the measured cycles then do not prune (a cycle prunes once a day)
    pruned = app.store.prune(now, **{k: history[k] for k in ("raw_hours", "hourly_days", "retention_days")
                                     if k in history})
    app.store.kv_set("last_prune", now.timestamp())
    # and the hourly roll-ups the daemon's cycles would have written as each hour completed
    # (otherwise the first measured cycle catches up on all of them at once, a one-off of minutes),
    # but the last hour's: the first cycle of each hour rolls up the hour before, which the first
    # measured cycle then does (at 10,000 sites, four cycles of samples, ~60 MB of blobs)
    app.store.roll_up(now - timedelta(hours=1))
    close_app(app)
    print(json.dumps({"runs": len(times), "pruned_samples": pruned["samples"]}))


def child(config: str, mode: str, cycles: int, now: datetime) -> None:
    """Runs in a fresh process: measure cycles and the peak RSS."""
    import resource

    from mistwatch.engine import close_app, open_app, run_cycle

    app = open_app(config)
    out = []
    for i in range(cycles):
        start = time.perf_counter()
        result = run_cycle(app, mode=mode, now=now + timedelta(minutes=15 * i))
        budgets = result.snapshot.api_budget if result.snapshot else {}
        out.append({"cycle": i + 1, "wall_s": round(time.perf_counter() - start, 3), "api_calls": result.api_calls,
                    "calls_by_token": {name: b.get("calls_cycle") for name, b in sorted(budgets.items())},
                    "status": result.status, "entities": len(result.snapshot.entities) if result.snapshot else 0,
                    "rules": len(app.ruleset.rules)})
        # Like the daemon, keep nothing of a cycle into the next: otherwise the peak would be this
        # cycle's snapshot plus the next one's, which no real run holds at once.
        del result
    close_app(app)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"cycles": out, "peak_rss_mb": round(rss_kb / 1024, 1)}))


def fresh_schema(url: str) -> str:
    """A new empty schema in the PostgreSQL database at ``url``; the URL that uses it."""
    import secrets

    import psycopg

    name = "bench_" + secrets.token_hex(4)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{name}"


def measure(sites: int, mode: str, cycles: int, history_days: float = 0, store: str | None = None,
            orgs: int = 1) -> dict:
    """``orgs`` > 1: that many orgs of ``sites`` sites each, each its own simulator process (own seed,
    so own ids), token and budget, collected through ``mist: {orgs: [...]}``."""
    sims = [start_simulator(sites, seed=7 + i, token=TOKEN if i == 0 else f"{TOKEN}-{i + 1}")
            for i in range(orgs)]
    _, url, org_id = sims[0]
    mist: dict = {"base_url": url, "token": TOKEN, "org_id": org_id}
    if orgs > 1:
        mist = {"orgs": [{"name": f"Org {i + 1}", "base_url": sim_url, "org_id": sim_org,
                          "token": TOKEN if i == 0 else f"{TOKEN}-{i + 1}"}
                         for i, (_, sim_url, sim_org) in enumerate(sims)]}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            rules = Path(__file__).resolve().parents[1] / "rules"
            config.write_text(json.dumps({
                "mist": mist,
                "state_dir": str(Path(tmp) / "var"), "reports": {"dir": str(Path(tmp) / "reports")},
                "rules": [str(rules)], "notifiers": [{"name": "console", "type": "console"}],
                **({"store": {"url": fresh_schema(store)}} if store else {}),
            }), encoding="utf-8")
            now = str(datetime.now(timezone.utc).timestamp())
            filled = None
            if history_days:
                started = time.perf_counter()
                done = subprocess.run([sys.executable, __file__, "--fill", str(config), "--history-days",
                                       str(history_days), "--now", now], capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"history fill failed:\n{done.stderr[-3000:]}")
                filled = {**json.loads(done.stdout.strip().splitlines()[-1]),
                          "seconds": round(time.perf_counter() - started, 1)}
                # the fill leaves gigabytes of dirty pages at 10k sites; flushed now, not while measuring
                if hasattr(os, "sync"):
                    os.sync()
            done = subprocess.run([sys.executable, __file__, "--child", str(config), "--mode", mode,
                                   "--cycles", str(cycles), "--now", now], capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
            return {**json.loads(done.stdout.strip().splitlines()[-1]), "filled": filled}
    finally:
        for sim, _, _ in sims:
            sim.terminate()
        for sim, _, _ in sims:
            sim.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, action="append", help="sites (repeatable; default 1000 and 10000)")
    parser.add_argument("--mode", action="append", choices=["monitor", "insights", "report", "all"])
    parser.add_argument("--cycles", type=int, default=2, help="cycles per process (the first is cold)")
    parser.add_argument("--orgs", type=int, default=1,
                        help="orgs of --sites sites each, own token and budget each (mist: {orgs: [...]})")
    parser.add_argument("--history-days", type=float, default=0,
                        help="days of history in the store before the measured cycles (default 0: empty)")
    parser.add_argument("--store", metavar="URL", help="a postgresql:// URL, or auto (a throwaway cluster)")
    parser.add_argument("--compare", action="store_true", help="with --store: measure SQLite too, print the ratio")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--fill", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill or args.child:
        now = datetime.fromtimestamp(args.now, timezone.utc)
        if args.fill:
            fill(args.fill, args.history_days, now)
        else:
            child(args.child, (args.mode or ["monitor"])[0], args.cycles, now)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    budgets = {1000: (2.0, 80), 10000: (15.0, 250)}
    store, stop_cluster = args.store, None
    if store == "auto":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from failover import start_cluster

        store, stop_cluster = start_cluster()
    try:
        _run(args, budgets, store)
    finally:
        if stop_cluster:
            stop_cluster()


def _run(args: argparse.Namespace, budgets: dict, store: str | None) -> None:
    for sites in args.sites or [1000, 10000]:
        # stats/sites, stats/devices (6 devices a site), 3 SLEs; then the WAN path and BGP peer searches,
        # whose rows grow with gateways (here one a site, with two WAN links), not with calls per site
        pages = (-(-sites // 1000) + -(-sites * 6 // 1000) + 3 * -(-sites // 1000)
                 + -(-sites * 2 // 1000) + -(-sites // 1000))
        for mode in args.mode or ["monitor", "all"]:
            if store and args.compare:
                base = measure(sites, mode, args.cycles, args.history_days)
            figures = measure(sites, mode, args.cycles, args.history_days, store, orgs=args.orgs)
            if store:
                print(f"sites={sites:>6} mode={mode:<8} store=postgresql")
            if figures["filled"]:
                print(f"sites={sites:>6} history: {args.history_days:g} days, {figures['filled']['runs']} runs "
                      f"written in {figures['filled']['seconds']} s (not measured; prune then removed "
                      f"{figures['filled']['pruned_samples']} sample rows)")
            wall_budget, rss_budget = budgets.get(sites * args.orgs, (None, None))
            wall_text = "none" if wall_budget is None else f"{wall_budget}s"
            rss_text = "none" if rss_budget is None else f"{rss_budget} MB"
            tag = f"orgs={args.orgs} x " if args.orgs > 1 else ""
            for cycle in figures["cycles"]:
                print(f"{tag}sites={sites:>6} mode={mode:<8} cycle={cycle['cycle']} calls={cycle['api_calls']:>3} "
                      f"(budget {15 + pages}{' per token' if args.orgs > 1 else ''}) wall={cycle['wall_s']:>6.2f}s "
                      f"(budget {wall_text}) entities={cycle['entities']} rules={cycle['rules']} "
                      f"status={cycle['status']}")
                if args.orgs > 1:
                    print("    calls per token: " + ", ".join(f"{name} {calls}" for name, calls
                                                         in cycle["calls_by_token"].items()))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(f"{tag}sites={sites:>6} mode={mode:<8} load average {load:.1f}; "
                  f"peak RSS={figures['peak_rss_mb']} MB (budget {rss_text})")
            if store and args.compare:
                sq, pg = base["cycles"][-1]["wall_s"], figures["cycles"][-1]["wall_s"]
                print(f"sites={sites:>6} mode={mode:<8} last cycle: sqlite {sq:.2f}s, postgresql {pg:.2f}s, "
                      f"ratio {pg / sq:.2f} (target <= 1.5); sqlite peak RSS {base['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
