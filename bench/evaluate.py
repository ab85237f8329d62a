"""Benchmark: evaluate the default rule pack over 10,000 sites and 60,000 devices.

Builds a synthetic snapshot with the Mist collector's metric and label names (docs/metrics.md),
7 days of hourly history in a real Store (the density ``Store.prune`` keeps after 48 h) plus the last
cycles, then times:

- ``evaluate`` cold (no alert state yet: the first cycle) and warm (with the alerts of the first);
- ``run_rules`` (load alert states, evaluate, advance, save) for the warm cycle;
- a naive per-rule, per-entity loop (one history query per entity and change rule), timed on a
  sample of sites and scaled up, for the ratio.

Collection is excluded. Budget: evaluation <= 3 s. Usage::

    python bench/evaluate.py [--sites 10000] [--devices-per-site 6] [--naive-sites 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mistwatch.model import Entity, Snapshot
from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.evaluator import evaluate
from mistwatch.rules.expr import ExpressionError
from mistwatch.rules.lifecycle import advance, run_rules
from mistwatch.rules.loader import RuleSet, load_rules, package_rules_dir
from mistwatch.store.database import Store

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
WIFI = ("coverage", "capacity", "time_to_connect", "successful_connect", "roaming", "throughput",
        "ap_health", "ap_availability")
WIRED = ("switch_health", "switch_throughput", "switch_bandwidth")
WAN = ("gateway_health", "wan_link_health", "application_health")
DEVICE_TYPES = ("ap", "ap", "ap", "ap", "switch", "gateway")


def build_snapshot(sites: int, per_site: int, degraded: float, at: datetime, seed: int = 7) -> Snapshot:
    """A healthy org with a share of degraded sites (SLE drop, devices down, high CPU)."""
    rng = random.Random(seed)
    snapshot = Snapshot(taken_at=at)
    org = {"org_id": "org-bench", "org_name": "Bench Org"}
    bad_sites = set(rng.sample(range(sites), int(sites * degraded)))
    for s in range(sites):
        site_id = f"site-{s:05d}"
        site_labels = {**org, "site_id": site_id, "site_name": f"Site {s:05d}", "timezone": "UTC",
                       "country_code": "IE"}
        bad = s in bad_sites
        counts = {"ap": [0, 0], "switch": [0, 0], "gateway": [0, 0]}
        for d in range(per_site):
            dtype = DEVICE_TYPES[d % len(DEVICE_TYPES)]
            connected = 0.0 if bad and d < 2 else 1.0
            counts[dtype][0] += 1
            counts[dtype][1] += int(connected)
            device_id = f"dev-{s:05d}-{d}"
            metrics = {"device.connected": connected, "device.uptime": 86400.0 * 3 + s,
                       "device.last_seen_age": 20.0, "device.cpu": 97.0 if bad and d == 4 else 30.0 + d,
                       "device.memory": 50.0}
            if dtype == "ap":
                metrics["device.clients"] = 12.0
            if not connected:
                metrics = {"device.connected": 0.0, "device.last_seen_age": 900.0}
            snapshot.entities.append(Entity(
                f"device:{device_id}", "device",
                {**site_labels, "device_id": device_id, "device_name": f"{dtype}-{s:05d}-{d}",
                 "device_type": dtype, "mac": f"5c5b35{s:05x}{d:01x}", "model": "AP45", "version": "0.14"},
                metrics))
        metrics: dict[str, float] = {}
        for kind, (total, up) in counts.items():
            metrics[f"site.{kind}_total"], metrics[f"site.{kind}_connected"] = float(total), float(up)
        metrics["site.devices_total"] = float(sum(t for t, _ in counts.values()))
        metrics["site.devices_connected"] = float(sum(u for _, u in counts.values()))
        metrics["site.devices_disconnected"] = metrics["site.devices_total"] - metrics["site.devices_connected"]
        if counts["ap"][0]:
            metrics["site.ap_connected_ratio"] = counts["ap"][1] / counts["ap"][0]
        metrics["site.clients"] = 30.0 if bad else 60.0
        metrics.update({"site.alarms_open": 0.0, "site.alarms_critical": 0.0, "site.alarms_major": 0.0})
        for family, names in (("wifi", WIFI), ("wired", WIRED), ("wan", WAN)):
            for name in names:
                metrics[f"sle.{family}.{name}"] = 0.72 if bad and name in ("coverage", "switch_health") else 0.96
        snapshot.entities.append(Entity(f"site:{site_id}", "site", site_labels, metrics))
    snapshot.entities.append(Entity("org:org-bench", "org", org, {"org.sites": float(sites)}))
    return snapshot


def history_metrics(ruleset: RuleSet) -> set[str]:
    """The metrics the pack reads from history (change rules)."""
    return {r.spec["metric"] for r in ruleset.rules if r.kind == "change"}


def history_times(now: datetime, days: float, *, raw_hours: float = 48,
                  interval: timedelta = timedelta(minutes=15)) -> list[datetime]:
    """The cycle times ``Store.prune`` keeps of ``days`` days of cycles every ``interval`` before
    ``now`` (oldest first): every cycle of the last ``raw_hours``, one per hour before that."""
    raw_cut = now - timedelta(hours=raw_hours)
    times = [now - timedelta(hours=h) for h in range(int(days * 24), 0, -1) if now - timedelta(hours=h) < raw_cut]
    at = now - interval
    recent = []
    while at >= raw_cut and at > now - timedelta(days=days):
        recent.append(at)
        at -= interval
    return times + recent[::-1]


def write_history(store: Store, times: Iterable[datetime], entities_at: Callable[[datetime], list[Entity]],
                  metrics_at: Callable[[datetime], dict[str, dict[str, float]]] | None = None) -> None:
    """One finished run per time: its snapshot (``entities_at(at)``) and derived history
    (``metrics_at(at)``, e.g. health scores) through the Store API, as cycles write them."""
    for at in times:
        run_id = store.start_run(at, "all")
        store.write_snapshot(run_id, Snapshot(at, entities=entities_at(at)))
        if metrics_at is not None:
            store.write_metrics(at, metrics_at(at))
        store.finish_run(run_id, finished_at=at, status="ok")


def copy_history(store: Store, source: datetime, times: Iterable[datetime]) -> None:
    """The fast path for long histories: one finished run per time holding a copy of the sample rows
    written at ``source`` (by ``write_history``), in one transaction. Rows that belonged to a run
    (snapshots) belong to the new run; derived rows (health) stay run-less, as ``write_metrics``
    writes them."""
    with store.transaction() as db:
        for at in times:
            run_id = store.start_run(at, "all")
            db.execute("INSERT INTO samples (run_id, ts, metric_id, entity_ids, vals) "
                       "SELECT CASE WHEN run_id IS NULL THEN NULL ELSE ? END, ?, metric_id, entity_ids, vals "
                       "FROM samples WHERE ts = ?", (run_id, round(at.timestamp()), round(source.timestamp())))
            store.finish_run(run_id, finished_at=at, status="ok")


def fill_store(store: Store, snapshot: Snapshot, metrics: set[str]) -> None:
    """7 days of hourly history of what the change rules read (yesterday everything was healthy:
    the degraded sites dropped since), then the cycle 15 minutes ago and the current one.
    Hourly is the density ``Store.prune`` keeps after 48 hours."""
    slim = []
    for entity in snapshot.entities:
        values = {}
        for metric in metrics:
            value = entity.metrics.get(metric)
            if metric.startswith("sle.") and value is not None:
                value = 0.96
            elif metric == "site.clients" and value is not None:
                value = 60.0
            elif metric == "device.uptime" and entity.kind == "device":
                value = 86400.0 * 2
            if value is not None:
                values[metric] = value
        slim.append(Entity(entity.key, entity.kind, entity.labels, values))
    sites_only = [e for e in slim if e.kind != "device"]
    # devices: only device.uptime is read from history (15 minutes back), so their hourly
    # rows are written for the first and the last hours; sites get all 7 days
    first, last_two = NOW - timedelta(hours=7 * 24), (NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    write_history(store, [NOW - timedelta(hours=h) for h in range(7 * 24, 0, -1)],
                  lambda at: slim if at == first or at in last_two else sites_only)
    write_history(store, [NOW - timedelta(minutes=15), NOW], lambda at: snapshot.entities)


# --- the naive way, for comparison ----------------------------------------------------------------

def naive_evaluate(ruleset: RuleSet, snapshot: Snapshot, store: Store, now: datetime, site_ids: set[str]) -> int:
    """Per rule, per entity, one history query per entity: what batching avoids. Only the entities
    of ``site_ids`` (a sample), so it finishes; returns the number of findings."""
    from mistwatch.durations import parse_duration
    from mistwatch.rules.variables import template_variables

    entities = [e for e in snapshot.entities if e.labels.get("site_id") in site_ids]
    found = 0
    for rule in ruleset.rules:
        spec = rule.spec
        metric = spec.get("metric")
        for entity in entities:
            if entity.kind != rule.scope or not rule.match(entity.labels):
                continue
            value = entity.metrics.get(metric) if metric else None
            severity = None
            baseline = None
            if rule.kind == "threshold" and value is not None:
                for tier in spec["tiers"]:
                    if ("below" in tier and value < tier["below"]) or ("above" in tier and value > tier["above"]):
                        severity = tier["severity"]
                        break
            elif rule.kind == "change" and value is not None:
                offset = parse_duration(spec.get("offset", "1d"))
                tolerance = parse_duration(spec["tolerance"]) if "tolerance" in spec else min(
                    timedelta(minutes=90), offset / 2)
                past = store.values_at(metric, now - offset, tolerance=tolerance, keys=[entity.key])
                baseline = past.get(entity.key)
                if baseline:
                    change = value - baseline if spec.get("unit") != "percent" else (value - baseline) / baseline * 100
                    for tier in spec["tiers"]:
                        if "drop" in tier and change <= -tier["drop"]:
                            severity = tier["severity"]
                            break
            elif rule.kind == "expression":
                severity = rule.severity
            if severity is None:
                continue
            variables = template_variables(rule, dict(entity.labels), severity=severity, value=value,
                                           baseline=baseline, metrics=entity.metrics, now=now)
            try:
                if rule.when is not None and not rule.when.test(variables):
                    continue
                rule.summary.render(variables)
            except ExpressionError:
                continue
            found += 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--devices-per-site", type=int, default=6)
    parser.add_argument("--degraded", type=float, default=0.03, help="share of degraded sites")
    parser.add_argument("--naive-sites", type=int, default=50, help="sites in the naive loop's sample")
    parser.add_argument("--rules", type=Path, default=package_rules_dir())
    parser.add_argument("--tmp", type=Path, default=None,
                        help="folder for the temporary store (default: the system temp folder)")
    args = parser.parse_args()

    ruleset = load_rules([args.rules], builtin_kinds())
    snapshot = build_snapshot(args.sites, args.devices_per_site, args.degraded, NOW)
    n_sites = sum(1 for e in snapshot.entities if e.kind == "site")
    n_devices = sum(1 for e in snapshot.entities if e.kind == "device")
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()} ({platform.machine()}, "
          f"{platform.system()})")
    print(f"org: {n_sites} sites, {n_devices} devices; rules: {len(ruleset.rules)} "
          f"({', '.join(sorted({r.kind for r in ruleset.rules}))})")

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, Store.open(tmp) as store:
        started = time.perf_counter()
        fill_store(store, snapshot, history_metrics(ruleset))
        print(f"setup: 7 days of hourly history written in {time.perf_counter() - started:.1f} s "
              f"(not part of the figures)")

        started, cpu = time.perf_counter(), time.process_time()
        cold = evaluate(ruleset, snapshot, store, NOW, alerts={})
        cold_s, cold_cpu = time.perf_counter() - started, time.process_time() - cpu
        alerts, transitions = advance({}, cold, ruleset, NOW)
        store.save_alerts(alerts, transitions)

        later = NOW + timedelta(minutes=15)
        previous = store.load_alerts()
        started, cpu = time.perf_counter(), time.process_time()
        warm = evaluate(ruleset, snapshot, store, later, alerts=previous)
        warm_s, warm_cpu = time.perf_counter() - started, time.process_time() - cpu
        warm_findings = len(warm.findings)
        started = time.perf_counter()
        outcome = run_rules(store, ruleset, snapshot, later + timedelta(minutes=15))
        cycle_s = time.perf_counter() - started

        sample = sorted({e.labels["site_id"] for e in snapshot.entities if e.kind == "site"})[:args.naive_sites]
        started, cpu = time.perf_counter(), time.process_time()
        naive_found = naive_evaluate(ruleset, snapshot, store, NOW, set(sample))
        naive_sample_s, naive_sample_cpu = time.perf_counter() - started, time.process_time() - cpu
        naive_s = naive_sample_s * n_sites / max(1, len(sample))
        naive_cpu = naive_sample_cpu * n_sites / max(1, len(sample))

    firing = sum(1 for a in outcome.alerts if a.state == "firing")
    print(f"findings: {len(cold.active)} active on the first cycle, {warm_findings} on the second; "
          f"after the third {len(outcome.alerts)} alerts ({firing} firing)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average during the run: {load:.1f} (wall times grow on a busy machine; CPU times less)")
    print(f"evaluate, first cycle (no alert state):   {cold_s:.2f} s wall, {cold_cpu:.2f} s CPU")
    print(f"evaluate, next cycle (with alert state):  {warm_s:.2f} s wall, {warm_cpu:.2f} s CPU   "
          f"budget 3.00 s  {'OK' if max(cold_s, warm_s) <= 3 else 'OVER BUDGET'}")
    print(f"run_rules (load states, evaluate, advance, save): {cycle_s:.2f} s")
    print(f"naive per-rule per-entity loop: {naive_sample_s:.2f} s wall, {naive_sample_cpu:.2f} s CPU for "
          f"{len(sample)} sites ({naive_found} findings) -> {naive_s:.0f} s wall, {naive_cpu:.0f} s CPU "
          f"scaled to {n_sites} sites")
    print(f"ratio naive / batched: {naive_s / max(warm_s, 1e-9):.0f}x wall, "
          f"{naive_cpu / max(warm_cpu, 1e-9):.0f}x CPU")
    if max(cold_s, warm_s) > 3:
        sys.exit(1)


if __name__ == "__main__":
    main()
