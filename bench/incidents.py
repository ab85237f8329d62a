"""Signal per incident: how many alerts and messages one site's bad morning produces.

Runs the demo's timeline (``mistwatch demo``: a healthy day, a degraded morning a day later, recovery)
against the simulated org on loopback, with one console notifier whose output is discarded, and
counts per site with a problem:

- ``firing (max)``: the most alerts firing at once at the site (the report and listings show these);
- ``notified``: the distinct alerts that appeared as firing in any message (what people were told);
- ``messages``: notifications sent for the site's group, recovery included;
- ``held back``: firing alerts that sent nothing, with why (inhibited / superseded).

Not a timing benchmark: the numbers are counts, the same on any machine. Usage::

    python bench/incidents.py [--sites 12]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mistwatch import close_app, open_app, run_cycle
from mistwatch.plugins.mist.commands import DEMO_TIMELINE, write_demo_config
from mistwatch.plugins.mist.simulator import SimulatedOrg, serve


def measure(sites: int) -> dict[str, dict[str, int]]:
    firing_max: dict[str, int] = defaultdict(int)
    notified: dict[str, set[str]] = defaultdict(set)
    messages: dict[str, int] = defaultdict(int)
    held: dict[str, set[str]] = defaultdict(set)
    start = datetime.now(timezone.utc).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=2)
    org = SimulatedOrg(sites=sites, now=start)
    with tempfile.TemporaryDirectory() as tmp, serve(org) as server:
        app = open_app(write_demo_config(Path(tmp), server))
        try:
            for scenario, offset, _story in DEMO_TIMELINE:
                org.set_scenario(scenario)
                org.now = start + offset
                with contextlib.redirect_stdout(io.StringIO()):
                    result = run_cycle(app, mode="all", now=org.now)
                per_site: dict[str, int] = defaultdict(int)
                names = {}
                for a in result.rules.alerts if result.rules else []:
                    if a.state == "firing":
                        site = a.labels.get("site_name") or "(org)"
                        per_site[site] += 1
                        names[a.key] = site
                for site, count in per_site.items():
                    firing_max[site] = max(firing_max[site], count)
                for n in result.notify.planned if result.notify else []:
                    sites_in = {a.labels.get("site_name") or "(org)" for a in n.alerts}
                    for site in sites_in:
                        messages[site] += 1
                    for a in n.alerts:
                        if a.state == "firing":
                            notified[a.labels.get("site_name") or "(org)"].add(a.key)
                for s in result.notify.suppressed if result.notify else []:
                    held[names.get(s.alert_key, "(org)")].add(s.alert_key)
        finally:
            close_app(app)
    return {site: {"firing_max": firing_max[site], "notified": len(notified[site]),
                   "messages": messages[site], "held_back": len(held[site])}
            for site in sorted(set(firing_max) | set(messages))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=12)
    args = parser.parse_args(argv)
    table = measure(args.sites)
    print(f"{'site':<22} {'firing (max)':>12} {'notified':>9} {'messages':>9} {'held back':>10}")
    for site, row in table.items():
        print(f"{site:<22} {row['firing_max']:>12} {row['notified']:>9} {row['messages']:>9} {row['held_back']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
