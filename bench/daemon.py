"""Daemon benchmark: steady memory over 1,000 cycles, CPU while idle, report time at 1,000 sites.

    python bench/daemon.py                       # all three, default sizes
    python bench/daemon.py --cycles 200          # a shorter soak
    python bench/daemon.py --skip-soak --idle-seconds 10

1. Soak: the daemon loop (mistwatch.service.daemon.Daemon) drives ``run_cycle(mode="all")`` against the
   simulator (100 sites, its own process) back to back, on a replayed clock that advances 15 minutes
   per cycle (so 1,000 cycles are ~10 days of history: pruning and report retention take part).
   RSS is read at cycle 100 and at the last cycle. Budget: growth <= 5 %.
2. Idle: a real ``mistwatch daemon --interval 1h`` process; after its first cycle, its CPU time is
   sampled over a few seconds of waiting for the next slot. Budget: ~0.
3. Report: 8 replayed days against a 1,000-site simulator, then ``build_report`` + ``write_reports``
   timed on the last cycle (with 7 days of trends to read). Budget: <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cycle import TOKEN, start_simulator  # the sibling benchmark's simulator helpers

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Current resident set size (not the peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best portable figure
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def write_config(folder: Path, url: str, org_id: str) -> Path:
    config = folder / "config.yaml"
    config.write_text(json.dumps({
        "mist": {"base_url": url, "token": TOKEN, "org_id": org_id},
        "state_dir": "var", "reports": {"dir": "reports"},
        "rules": [str(REPO / "rules")], "notifiers": [{"name": "console", "type": "console"}],
    }), encoding="utf-8")
    return config


class ReplayClock:
    """Time moves by the interval per cycle and waits return at once: cycles run back to back."""

    def __init__(self, start) -> None:
        self.t = start

    def now(self):
        return self.t

    def wait(self, event, seconds: float) -> bool:
        from datetime import timedelta

        self.t += timedelta(seconds=seconds)
        return event.is_set()


def child_soak(config: str, cycles: int) -> None:
    import gc
    from datetime import datetime, timedelta, timezone

    from mistwatch.engine import close_app, open_app, run_cycle
    from mistwatch.service.daemon import Daemon

    app = open_app(config)
    interval = timedelta(minutes=15)
    clock = ReplayClock(datetime.now(timezone.utc).replace(microsecond=0))
    figures: dict[str, float] = {}
    walls: list[float] = []
    statuses: dict[str, int] = {}

    def cycle(now) -> None:
        t0 = time.perf_counter()
        result = run_cycle(app, mode="all", now=now)
        walls.append(time.perf_counter() - t0)
        statuses[result.status] = statuses.get(result.status, 0) + 1
        clock.t += timedelta(seconds=walls[-1])
        n = len(walls)
        if n in (1, 10, 100, 250, 500, 750) or n == cycles:
            gc.collect()
            figures[str(n)] = round(rss_mb(), 2)

    daemon = Daemon(cycle, interval, clock=clock)
    t0 = time.perf_counter()
    daemon.run(max_cycles=cycles)
    total = time.perf_counter() - t0
    close_app(app)
    walls.sort()
    print(json.dumps({"rss_mb": figures, "cycles": len(walls), "statuses": statuses, "total_s": round(total, 1),
                      "median_cycle_s": round(walls[len(walls) // 2], 4),
                      "p95_cycle_s": round(walls[int(len(walls) * 0.95)], 4),
                      "skipped_slots": daemon.stats.skipped_slots}))


def child_report(config: str, days: int) -> None:
    from datetime import datetime, timedelta, timezone

    from mistwatch.engine import close_app, open_app, run_cycle
    from mistwatch.report.build import build_report, render_html, write_reports

    app = open_app(config)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=days)
    result = None
    for day in range(days + 1):
        result = run_cycle(app, mode="report", now=start + timedelta(days=day))
    assert result is not None and result.health is not None
    now = result.started_at
    alerts = result.rules.alerts if result.rules else []
    notes = result.rules.notes if result.rules else []
    run = {"started_at": now, "duration_s": result.duration_s, "api_calls": result.api_calls, "errors": [],
           "mode": "report"}
    timings: dict[str, list[float]] = {"build": [], "render": [], "write": [], "cpu": []}
    for _ in range(5):
        c0, t0 = time.process_time(), time.perf_counter()
        report = build_report(app.store, result.snapshot, result.health, alerts, notes, run, now)
        t1 = time.perf_counter()
        paths = write_reports(report, app.config.reports_dir, now, 7)  # renders the HTML, writes 4 files
        t2, c2 = time.perf_counter(), time.process_time()
        render_html(report)
        t3 = time.perf_counter()
        timings["build"].append(t1 - t0)
        timings["write"].append(t2 - t1)
        timings["render"].append(t3 - t2)
        timings["cpu"].append(c2 - c0)
    close_app(app)
    kinds: dict[str, int] = {}
    for e in result.snapshot.entities:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    print(json.dumps({
        "entities": kinds, "alerts": len(alerts),
        "build_s": round(min(timings["build"]), 3), "render_s": round(min(timings["render"]), 3),
        "write_s": round(min(timings["write"]), 3),
        "build_plus_write_s": round(min(b + w for b, w in zip(timings["build"], timings["write"], strict=True)), 3),
        "build_plus_write_cpu_s": round(min(timings["cpu"]), 3),
        "json_kb": round(paths.json.stat().st_size / 1024), "html_kb": round(paths.html.stat().st_size / 1024),
        "history_files": len(list(paths.history_json.parent.iterdir())),
    }))


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except OSError:
        return None


def idle_cpu(url: str, org_id: str, seconds: float) -> dict:
    from mistwatch.store.database import Store

    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), url, org_id)
        proc = subprocess.Popen([sys.executable, "-m", "mistwatch", "daemon", "--config", str(config),
                                 "--interval", "1h"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                db = Path(tmp) / "var" / "mistwatch.db"
                if db.exists():
                    with Store.open(db.parent) as store:
                        if store.last_successful_run() is not None:
                            break
                time.sleep(0.2)
            else:
                raise SystemExit("the daemon did not finish its first cycle")
            time.sleep(0.5)  # let it settle into the wait
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            if c0 is None:
                return {"note": "no /proc: idle CPU not measured on this platform"}
            time.sleep(seconds)
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
            proc.terminate()
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    return {"cpu_s": round(c1 - c0, 3), "wall_s": round(t1 - t0, 1),
            "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 3), "exit_code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000, help="soak cycles (default 1000)")
    parser.add_argument("--soak-sites", type=int, default=100)
    parser.add_argument("--report-sites", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--child", choices=["soak", "report"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "soak":
        child_soak(args.config, args.cycles)
        return
    if args.child == "report":
        child_report(args.config, 7)
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    proc, url, org_id = start_simulator(args.soak_sites)
    try:
        if not args.skip_soak:
            with tempfile.TemporaryDirectory() as tmp:
                config = write_config(Path(tmp), url, org_id)
                soak = run_child("--child", "soak", "--config", str(config), "--cycles", str(args.cycles))
            rss = soak["rss_mb"]
            base, last = rss.get("100") or rss["1"], rss[str(soak["cycles"])]
            growth = 100 * (last - base) / base
            print(f"soak: {soak['cycles']} cycles at {args.soak_sites} sites in {soak['total_s']} s "
                  f"(median {soak['median_cycle_s']} s, p95 {soak['p95_cycle_s']} s), statuses {soak['statuses']}")
            print(f"soak: RSS by cycle {rss} MB")
            print(f"soak: RSS growth cycle 100 -> {soak['cycles']}: {growth:+.2f} % (budget <= 5 %) "
                  f"{'OK' if growth <= 5 else 'OVER BUDGET'}")
        idle = idle_cpu(url, org_id, args.idle_seconds)
        if "cpu_s" in idle:
            print(f"idle: `mistwatch daemon --interval 1h` used {idle['cpu_s']} s CPU over {idle['wall_s']} s "
                  f"of waiting ({idle['cpu_percent']} %); SIGTERM exit code {idle['exit_code']}")
        else:
            print(f"idle: {idle['note']}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    proc, url, org_id = start_simulator(args.report_sites)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(Path(tmp), url, org_id)
            rep = run_child("--child", "report", "--config", str(config))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"report: {rep['entities']} entities, {rep['alerts']} alerts, 7 days of history: build {rep['build_s']} s, "
          f"render {rep['render_s']} s, write (render + 4 files) {rep['write_s']} s")
    print(f"report: build + write {rep['build_plus_write_s']} s wall, {rep['build_plus_write_cpu_s']} s CPU "
          f"(best of 5; budget <= 1 s) "
          f"{'OK' if rep['build_plus_write_s'] <= 1 else 'OVER BUDGET'}; "
          f"latest.json {rep['json_kb']} KB, latest.html {rep['html_kb']} KB, history files {rep['history_files']}")


if __name__ == "__main__":
    main()
