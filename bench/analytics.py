"""Benchmark: the analytics rules on simulated seasonal history, against the rules they replace.

1. Detection. ``mistwatch.plugins.mist.backfill`` (behind ``mistwatch simulate --backfill``) writes
   35 days of history for ``--sites`` sites (offices and shops in five countries and timezones,
   weekend and night lows, one or two holiday-like quiet weekdays per country) with injected
   anomalies of different shapes and sizes (outages, major and moderate drops) whose ground truth
   it keeps. The last ``--eval-days`` are replayed through ``mistwatch.rules.backtest.replay`` (the
   evaluator and lifecycle of a live cycle, a cycle every 30 minutes) with the shipped
   ``site-clients-drop`` (anomaly) rule and, on the same snapshots, the rules it replaces: the former
   day-over-day change rule, its week-over-week companion, and a static threshold. An alert is a
   true one when it overlaps an injected anomaly at its site (up to an hour after it ends); recall
   is the share of injected anomalies that got one. Operationally meaningful: an anomaly that the
   shipped rule's ``min_change`` and ``min_change_pct`` would let page, i.e. one removing at least
   ``min_change`` (20) of the clients usual at its start and at least ``min_change_pct`` (30 %) of
   them (every injected one does the latter); smaller drops are ignored by design, and counting them
   as misses would grade the tuning, not the detector. Both recalls are printed. Targets: recall >= 0.9
   on the meaningful anomalies, <= 1 false alert per 1,000 site-days, on several seeds.
2. Forecast lead time: leaking devices (device.memory rising 0.3-1 %/h) and drifting SLEs, with a
   forecast rule each; the lead is the time from the first forecast alert to the crossing. Target:
   >= 6 h.
3. Cost: one evaluation of the anomaly and forecast rules with 35 days of roll-ups at ``--cost-sites``
   sites (median of 5 runs; the batched roll-up reads included). Budget: <= 1 s.

Fixed seed. Usage::

    python bench/analytics.py [--sites 200] [--eval-days 14] [--cost-sites 1000] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

from mistwatch.host import make_host
from mistwatch.model import Snapshot
from mistwatch.plugins.mist.backfill import Truth, backfill, business_share, make_truth, values_at
from mistwatch.rules.backtest import Episode, replay
from mistwatch.rules.evaluator import evaluate
from mistwatch.rules.loader import RuleSet, load_rules
from mistwatch.store.database import Store

REPO = Path(__file__).resolve().parent.parent

# The rules site-clients-drop replaces, as the default pack had them.
REPLACED = """
rules:
  - id: day-over-day
    kind: change
    scope: site
    metric: site.clients
    offset: 1d
    unit: percent
    min_baseline: 20
    tiers:
      - {severity: major, drop: 40}
      - {severity: critical, drop: 70}
    for: 30m
  - id: week-over-week
    kind: change
    scope: site
    metric: site.clients
    offset: 7d
    unit: percent
    min_baseline: 20
    drop: 50
    severity: minor
    for: 1h
  - id: static-threshold
    kind: threshold
    scope: site
    metric: site.clients
    below: 10
    severity: major
    for: 30m
"""

FORECASTS = """
rules:
  - id: memory-forecast
    kind: forecast
    scope: device
    metric: device.memory
    window: 24h
    horizon: 24h
    above: 90
    severity: major
    for: 30m
  - id: sle-forecast
    kind: forecast
    scope: site
    metric: sle.wifi.successful_connect
    window: 3d
    horizon: 2d
    below: 0.8
    severity: minor
    for: 1h
"""


def load(text: str, tmp: Path, name: str, kinds) -> RuleSet:
    path = tmp / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules([path], kinds)


def pack_rule(kinds, rule_id: str, tmp: Path) -> RuleSet:
    """One rule of the shipped pack, alone (the pack file holds correlations that need other files)."""
    import yaml

    data = yaml.safe_load((REPO / "rules" / "sites.yaml").read_text(encoding="utf-8"))
    rule = next(r for r in data["rules"] if r["id"] == rule_id)
    return load(yaml.safe_dump({"rules": [rule]}, allow_unicode=True), tmp, f"{rule_id}.yaml", kinds)


def site_of(episode: Episode) -> str:
    inner = episode.key[episode.key.index("{") + 1:-1]
    labels = dict(part.split("=", 1) for part in inner.split(","))
    return f"site:{labels.get('site_id', '')}"


def drop_size(truth: Truth, anomaly) -> float:
    """The usual number of clients the anomaly removes at its start (before noise)."""
    site = next(s for s in truth.sites if s.key == anomaly.key)
    usual = site.night + site.busy * business_share(site, anomaly.start.astimezone(site.zone), truth.holidays)
    return usual * anomaly.depth


def shipped_limits() -> tuple[float, float]:
    """``min_change`` and ``min_change_pct`` of the shipped site-clients-drop."""
    import yaml

    data = yaml.safe_load((REPO / "rules" / "sites.yaml").read_text(encoding="utf-8"))
    rule = next(r for r in data["rules"] if r["id"] == "site-clients-drop")
    return float(rule.get("min_change", 0)), float(rule.get("min_change_pct", 0))


def score(truth: Truth, episodes: list[Episode], start: datetime, sites: int, days: float,
          min_drop: float = 0, min_pct: float = 0) -> dict:
    """Recall over the anomalies in the window removing at least ``min_drop`` clients and ``min_pct``
    percent; precision and false alerts over all ``episodes``."""
    anomalies = [a for a in truth.anomalies if a.start >= start and drop_size(truth, a) >= min_drop
                 and 100 * a.depth >= min_pct]
    slack = timedelta(hours=1)
    detected, true_eps = set(), 0
    holiday_false = 0
    for e in episodes:
        end = e.resolved_at or truth.end
        hits = [i for i, a in enumerate(anomalies) if a.key == site_of(e) and e.fired_at <= a.end + slack
                and a.start <= end]
        if hits:
            true_eps += 1
            detected.update(hits)
        else:
            site = next(s for s in truth.sites if s.key == site_of(e))
            local_day = e.fired_at.astimezone(site.zone).date()
            holiday_false += local_day in truth.holidays.get(site.labels["country_code"], [])
    false = len(episodes) - true_eps
    by_shape = {}
    for shape in ("outage", "major", "moderate"):
        of_shape = [i for i, a in enumerate(anomalies) if a.shape == shape]
        by_shape[shape] = f"{sum(i in detected for i in of_shape)}/{len(of_shape)}"
    return {"alerts": len(episodes), "recall": len(detected) / max(len(anomalies), 1),
            "precision": true_eps / max(len(episodes), 1), "false": false,
            "false_per_1000_site_days": 1000 * false / (sites * days), "holiday_false": holiday_false,
            "by_shape": by_shape, "anomalies": len(anomalies)}


def detection(args: argparse.Namespace, tmp: Path, kinds) -> None:
    truth = make_truth(args.sites, 35, args.seed, anomalies=args.anomalies)
    state = tmp / "state"
    started = time.perf_counter()
    with Store.open(state) as store:
        snapshots = backfill(store, truth, seed=args.seed, fine_days=args.eval_days)
    print(f"history: {args.sites} sites x 35 days, {snapshots} snapshots, {len(truth.anomalies)} anomalies "
          f"injected, holidays {sum(len(v) for v in truth.holidays.values())} country-days "
          f"({time.perf_counter() - started:.1f} s to write and roll up)")
    start = truth.end - timedelta(days=args.eval_days)
    rulesets = [pack_rule(kinds, "site-clients-drop", tmp), load(REPLACED, tmp, "replaced.yaml", kinds),
                load(FORECASTS, tmp, "forecasts.yaml", kinds)]
    started = time.perf_counter()
    with Store.open(state) as store:
        results = replay(store, rulesets, start, truth.end, step=timedelta(minutes=30))
    elapsed = time.perf_counter() - started
    print(f"replay: {results[0].steps} cycles x 3 rule files over {args.eval_days} days in {elapsed:.1f} s")
    print(f"\ndetection over the last {args.eval_days} days ({args.sites * args.eval_days} site-days):")
    min_drop, min_pct = shipped_limits()
    print(f"  {'rule':<20} {'alerts':>6} {'recall':>7} {'meaningful':>10} {'precision':>9} {'false':>6} "
          f"{'false/1000sd':>12} {'on holidays':>11}  recall by shape")
    rows = [("site-clients-drop", results[0].rules["site-clients-drop"].episodes)]
    rows += [(rule_id, r.episodes) for rule_id, r in results[1].rules.items()]
    for rule_id, episodes in rows:
        s = score(truth, episodes, start, args.sites, args.eval_days)
        big = score(truth, episodes, start, args.sites, args.eval_days, min_drop=min_drop, min_pct=min_pct)
        shapes = ", ".join(f"{k} {v}" for k, v in s["by_shape"].items())
        print(f"  {rule_id:<20} {s['alerts']:>6} {s['recall']:>7.2f} {big['recall']:>10.2f} {s['precision']:>9.2f} "
              f"{s['false']:>6} {s['false_per_1000_site_days']:>12.2f} {s['holiday_false']:>11}  {shapes}")
    total = score(truth, [], start, args.sites, args.eval_days)["anomalies"]
    big = score(truth, [], start, args.sites, args.eval_days, min_drop=min_drop, min_pct=min_pct)["anomalies"]
    print(f"  ({total} injected anomalies in the window, {big} of them meaningful: removing >= {min_drop:g} "
          f"clients and >= {min_pct:g} % of the usual, what the shipped rule's min_change and min_change_pct "
          "let page; 'meaningful' is the recall over those)")
    print("\nforecast lead time (first forecast alert to the crossing):")
    for rule_id, metric in (("memory-forecast", "device.memory"), ("sle-forecast", "sle.wifi.successful_connect")):
        episodes = results[2].rules[rule_id].episodes
        trends = [t for t in truth.trends if t.metric == metric and start <= t.crosses_at <= truth.end]
        leads, missed = [], 0
        for trend in trends:
            before = [e for e in episodes if trend.key in e.key.replace("device_id=", "device:")
                      .replace("site_id=", "site:") and e.fired_at <= trend.crosses_at]
            if before:
                leads.append((trend.crosses_at - min(e.fired_at for e in before)) / timedelta(hours=1))
            else:
                missed += 1
        keys = {t.key for t in truth.trends if t.metric == metric}
        false = [e for e in episodes if not any(k in e.key.replace("device_id=", "device:")
                                                .replace("site_id=", "site:") for k in keys)]
        lead_text = (f"lead min {min(leads):.1f} h, median {statistics.median(leads):.1f} h" if leads else "no lead")
        print(f"  {rule_id:<16} {len(trends)} crossing(s) in the window: {lead_text}, {missed} missed, "
              f"{len(false)} alert(s) on entities without a trend")


def cost(args: argparse.Namespace, tmp: Path, kinds) -> None:
    truth = make_truth(args.cost_sites, 35, args.seed + 1, anomalies=10)
    state = tmp / "cost"
    started = time.perf_counter()
    with Store.open(state) as store:
        backfill(store, truth, seed=args.seed)
    print(f"\ncost: {args.cost_sites} sites x 35 days of hourly roll-ups written in "
          f"{time.perf_counter() - started:.1f} s")
    anomaly = pack_rule(kinds, "site-clients-drop", tmp)
    forecasts = load(FORECASTS, tmp, "forecasts.yaml", kinds)
    ruleset = RuleSet(rules=[*anomaly.rules, *forecasts.rules], files=[*anomaly.files, *forecasts.files])
    import random

    now = truth.end
    snapshot = Snapshot(taken_at=now, entities=values_at(truth, now, random.Random(1), {}))
    with Store.open(state) as store:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            evaluation = evaluate(ruleset, snapshot, store, now, alerts={})
            times.append(time.perf_counter() - started)
    firing = len(evaluation.active)
    print(f"  evaluate(anomaly + 2 forecast rules) at {args.cost_sites} sites + {args.cost_sites} devices: "
          f"median {statistics.median(times):.3f} s, max {max(times):.3f} s over 5 runs "
          f"({firing} active findings); budget 1 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--eval-days", type=int, default=14)
    parser.add_argument("--cost-sites", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--anomalies", type=int, default=150,
                        help="injected over the 35 days (about 40 %% of them in the evaluated window)")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-detection", action="store_true")
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s), seed {args.seed}")
    kinds = make_host(entry_points=False).rule_kinds()
    with tempfile.TemporaryDirectory(prefix="mw-analytics-") as tmp:
        if not args.skip_detection:
            detection(args, Path(tmp), kinds)
        if not args.skip_cost:
            cost(args, Path(tmp), kinds)


if __name__ == "__main__":
    main()
