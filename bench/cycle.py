"""Cycle benchmark: API calls, wall time and peak RSS of a cycle at 1,000 and 10,000 sites.

The simulator runs in its own process (`mistwatch simulate`), so the figures are mistwatch's own:
collection over loopback HTTP, the store, and (mode `all`) the rules, the report and notifications.

    python bench/cycle.py                 # 1,000 and 10,000 sites, modes monitor and all
    python bench/cycle.py --sites 1000 --mode monitor

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
from pathlib import Path

import requests

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_simulator(sites: int) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mistwatch", "simulate", "--port", str(port), "--sites", str(sites),
         "--token", TOKEN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{url}/api/v1/self", headers={"Authorization": f"Token {TOKEN}"}, timeout=2)
            org_id = answer.json()["privileges"][0]["org_id"]
            return proc, url, org_id
        except (requests.RequestException, ValueError, KeyError):
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("simulator did not start")


def child(config: str, mode: str, cycles: int) -> None:
    """Runs in a fresh process: measure cycles and the peak RSS."""
    import resource
    from datetime import datetime, timedelta, timezone

    from mistwatch.engine import close_app, open_app, run_cycle

    app = open_app(config)
    now = datetime.now(timezone.utc)
    out = []
    for i in range(cycles):
        start = time.perf_counter()
        result = run_cycle(app, mode=mode, now=now + timedelta(minutes=15 * i))
        out.append({"cycle": i + 1, "wall_s": round(time.perf_counter() - start, 3), "api_calls": result.api_calls,
                    "status": result.status, "entities": len(result.snapshot.entities) if result.snapshot else 0,
                    "rules": len(app.ruleset.rules)})
        # Like the daemon, keep nothing of a cycle into the next: otherwise the peak would be this
        # cycle's snapshot plus the next one's, which no real run holds at once.
        del result
    close_app(app)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"cycles": out, "peak_rss_mb": round(rss_kb / 1024, 1)}))


def measure(sites: int, mode: str, cycles: int) -> dict:
    proc, url, org_id = start_simulator(sites)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            rules = Path(__file__).resolve().parents[1] / "rules"
            config.write_text(json.dumps({
                "mist": {"base_url": url, "token": TOKEN, "org_id": org_id},
                "state_dir": str(Path(tmp) / "var"), "reports": {"dir": str(Path(tmp) / "reports")},
                "rules": [str(rules)], "notifiers": [{"name": "console", "type": "console"}],
            }), encoding="utf-8")
            done = subprocess.run([sys.executable, __file__, "--child", str(config), "--mode", mode,
                                   "--cycles", str(cycles)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, action="append", help="sites (repeatable; default 1000 and 10000)")
    parser.add_argument("--mode", action="append", choices=["monitor", "insights", "report", "all"])
    parser.add_argument("--cycles", type=int, default=2, help="cycles per process (the first is cold)")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, (args.mode or ["monitor"])[0], args.cycles)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    budgets = {1000: (2.0, 80), 10000: (15.0, 250)}
    for sites in args.sites or [1000, 10000]:
        pages = -(-sites // 1000) + -(-sites * 6 // 1000) + 3 * -(-sites // 1000)
        for mode in args.mode or ["monitor", "all"]:
            figures = measure(sites, mode, args.cycles)
            wall_budget, rss_budget = budgets.get(sites, (None, None))
            for cycle in figures["cycles"]:
                print(f"sites={sites:>6} mode={mode:<8} cycle={cycle['cycle']} calls={cycle['api_calls']:>3} "
                      f"(budget {15 + pages}) wall={cycle['wall_s']:>6.2f}s (budget {wall_budget}s) "
                      f"entities={cycle['entities']} rules={cycle['rules']} status={cycle['status']}")
            print(f"sites={sites:>6} mode={mode:<8} peak RSS={figures['peak_rss_mb']} MB (budget {rss_budget} MB)")


if __name__ == "__main__":
    main()
