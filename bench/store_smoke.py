"""Time ``Store.write_snapshot`` and the history reads at org scale (default 10,000 sites, 60,000 devices).

    python bench/store_smoke.py [--sites N] [--devices-per-site N] [--runs N]

Writes to a temporary directory, prints timings, asserts nothing (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone

from mistwatch.model import CollectorError, Entity, Snapshot
from mistwatch.store.database import Store

SITE_METRICS = [f"site.m{i}" for i in range(14)] + [f"sle.wifi.m{i}" for i in range(6)]
DEVICE_METRICS = ["device.connected", "device.uptime", "device.clients", "device.cpu", "device.mem",
                  "device.tx_bps", "device.rx_bps", "device.temp"]


def make_snapshot(at: datetime, sites: int, per_site: int, rng: random.Random) -> Snapshot:
    org = "0000-org"
    entities = []
    for s in range(sites):
        site_id = f"site-{s:06d}-aaaa-bbbb-cccc"
        labels = {"org_id": org, "site_id": site_id, "site_name": f"Store {s:05d}",
                  "country": "DE", "timezone": "Europe/Berlin", "address": f"Street {s}"}
        n = 6 + s % 15  # 6..20 metrics per site
        entities.append(Entity(f"site:{site_id}", "site", labels,
                               {m: rng.random() for m in SITE_METRICS[:n]}))
        for d in range(per_site):
            device_id = f"dev-{s:06d}-{d:02d}-dddd-eeee"
            dlabels = {**labels, "device_id": device_id, "device_name": f"ap-{s}-{d}",
                       "device_type": "ap", "mac": f"5c5b35{s:04x}{d:02x}", "model": "AP43"}
            n = 6 + (s + d) % 3
            entities.append(Entity(f"device:{device_id}", "device", dlabels,
                                   {m: rng.random() for m in DEVICE_METRICS[:n]}))
    # One collector error covering an SLE endpoint, as a realistic partial cycle.
    errors = [CollectorError("mist", "/sle", "timeout", kinds=frozenset({"site"}),
                             metrics=frozenset({"sle.wifi.m5"}))]
    return Snapshot(taken_at=at, entities=entities, errors=errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--devices-per-site", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(1)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
        for i in range(args.runs):
            at = start + timedelta(minutes=15 * i)
            snap = make_snapshot(at, args.sites, args.devices_per_site, rng)
            values = sum(len(e.metrics) for e in snap.entities)
            run_id = store.start_run(at, "monitor")
            t0 = time.perf_counter()
            store.write_snapshot(run_id, snap)
            dt = time.perf_counter() - t0
            print(f"write_snapshot run {i + 1}: {len(snap.entities)} entities, {values} values: "
                  f"{dt * 1000:.0f} ms ({'first, inserts entities' if i == 0 else 'upserts'})")
        fresh = Store.open(tmp)  # cold caches, as a one-shot CLI run would have
        at = start + timedelta(minutes=15 * args.runs)
        snap = make_snapshot(at, args.sites, args.devices_per_site, rng)
        t0 = time.perf_counter()
        fresh.write_snapshot(fresh.start_run(at, "monitor"), snap)
        print(f"write_snapshot in a freshly opened store (one-shot CLI run): "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        t0 = time.perf_counter()
        got = fresh.values_at("device.connected", start + timedelta(minutes=20))
        print(f"values_at (cold cache): {len(got)} entities in {(time.perf_counter() - t0) * 1000:.0f} ms")
        t0 = time.perf_counter()
        got = fresh.values_at("device.connected", start + timedelta(minutes=20))
        print(f"values_at (warm): {len(got)} entities in {(time.perf_counter() - t0) * 1000:.0f} ms")
        t0 = time.perf_counter()
        means = fresh.window_mean("device.cpu", start, start + timedelta(days=1))
        print(f"window_mean over {args.runs} runs: {len(means)} entities in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        fresh.close()
        print(f"database size: {(store.path.stat().st_size) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
