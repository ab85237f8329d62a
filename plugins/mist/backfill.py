"""Weeks of seasonal history, written into a real store fast, with the ground truth of what was injected.

Behind ``mistwatch simulate --backfill 35d`` (for trying ``mistwatch rules backtest``, docs/rules.md)
and ``bench/analytics.py``::

    mistwatch simulate --backfill 35d --state-dir ./history --sites 200 --truth truth.json
    mistwatch rules backtest rules/sites.yaml --state-dir ./history --since 14d --rule site-clients-drop

Per site (labels as the Mist collector sets them: org_id, site_id, site_name, timezone, country_code):

- ``site.clients``: an office (busy on local weekdays 8-18 with a lunch dip, a few clients at night
  and at weekends) or a shop (open every day 10-20, busiest on Saturday); a per-site size from 20 to
  800 clients, a day-to-day factor (+-6 %) and hourly noise;
- ``sle.wifi.successful_connect`` about 0.95, a few sites drifting down slowly (a drifting SLE);
- one device ``device:<site>-ap1`` with ``device.memory``: flat around its own level, a few leaking
  (rising 0.3-1 %/h until they pass 97 % and reboot).

Holiday-like quiet days: one or two weekdays per country when offices are as quiet as on a Sunday
(shops open as on a Saturday). Injected anomalies, in business hours of business days only (an
outage at 3 am is not an incident anyone can see): outages (85-100 % of clients gone, 2-5 h), major
drops (50-80 %, 2-6 h) and moderate ones (35-50 %, 2-6 h). Everything is seeded: same arguments,
same history. Samples are hourly, or every ``fine_step`` for the last ``fine_days`` (the cadence a
live daemon would have, so ``for:`` durations replay as they would run).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from mistwatch.model import Entity, Snapshot

END = datetime(2026, 11, 27, 0, 0, tzinfo=timezone.utc)  # a Friday
ZONES = (("Europe/Dublin", "IE"), ("Europe/Amsterdam", "NL"), ("Europe/Berlin", "DE"),
         ("America/New_York", "US"), ("Asia/Tokyo", "JP"))
OFFICE = (0, 0, 0, 0, 0, 0, 0.05, 0.3, 0.7, 1, 1, 1, 0.75, 0.95, 1, 1, 0.9, 0.6, 0.25, 0.05, 0, 0, 0, 0)
SHOP = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0.2, 0.6, 0.8, 1, 1, 0.9, 0.9, 1, 1, 0.8, 0.5, 0.1, 0, 0, 0)


@dataclass
class SiteModel:
    key: str
    labels: dict[str, str]
    shop: bool
    busy: float
    night: float
    zone: ZoneInfo
    sle: float
    memory: float


@dataclass
class Anomaly:
    key: str
    start: datetime
    end: datetime
    shape: str  # outage | major | moderate
    depth: float  # the share of clients gone


@dataclass
class Trend:
    key: str
    metric: str
    start: datetime
    rate: float  # per hour
    crosses_at: datetime  # when it passes the forecast rule's value (90 % memory, 0.8 SLE)


@dataclass
class Truth:
    start: datetime
    end: datetime
    sites: list[SiteModel] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    holidays: dict[str, list[date]] = field(default_factory=dict)


def business_share(site: SiteModel, local: datetime, holidays: dict[str, list[date]]) -> float:
    """The site's usual share of its busy level at this local time (before noise)."""
    holiday = local.date() in holidays.get(site.labels["country_code"], [])
    if site.shop:
        weekday = 5 if holiday else local.weekday()
        return SHOP[local.hour] * (1.0 if weekday == 5 else 0.8 if weekday == 6 else 0.7)
    if local.weekday() >= 5 or holiday:
        return 0.0
    return OFFICE[local.hour]


def make_truth(sites: int, days: float, seed: int, end: datetime = END, anomalies: int = 60,
               leaks: int = 10, drifts: int = 5) -> Truth:
    rng = random.Random(seed)
    start = end - timedelta(days=days)
    truth = Truth(start, end)
    for i in range(sites):
        zone_name, country = ZONES[i % len(ZONES)]
        busy = math.exp(rng.uniform(math.log(20), math.log(800)))
        truth.sites.append(SiteModel(
            f"site:s{i}", {"org_id": "o1", "site_id": f"s{i}", "site_name": f"{country}-{i:04d}",
                           "timezone": zone_name, "country_code": country},
            shop=rng.random() < 0.2, busy=busy, night=max(1.0, busy * rng.uniform(0.01, 0.04)),
            zone=ZoneInfo(zone_name), sle=rng.uniform(0.93, 0.98), memory=rng.uniform(30, 65)))
    for _, country in ZONES:  # one or two weekday holidays per country, in the last three weeks
        chosen: list[date] = []
        while len(chosen) < rng.choice((1, 2)):
            day = (end - timedelta(days=rng.randint(1, 20))).date()
            if day.weekday() < 5 and day not in chosen:
                chosen.append(day)
        truth.holidays[country] = chosen
    shapes = (("outage", 0.85, 1.0, 2, 5), ("major", 0.5, 0.8, 2, 6), ("moderate", 0.35, 0.5, 2, 6))
    tries = 0
    while len(truth.anomalies) < anomalies and tries < 1000 * anomalies:  # a short history may not fit them all
        tries += 1
        site = rng.choice(truth.sites)
        shape, lo, hi, short, long = shapes[len(truth.anomalies) % len(shapes)]
        day = start + timedelta(days=rng.randint(1, int(days) - 1))
        local = day.astimezone(site.zone).replace(hour=rng.randint(9, 14), minute=0, second=0, microsecond=0)
        if business_share(site, local, truth.holidays) < 0.6:
            continue
        begin = local.astimezone(timezone.utc)
        anomaly = Anomaly(site.key, begin, begin + timedelta(hours=rng.randint(short, long)), shape,
                          rng.uniform(lo, hi))
        if anomaly.end > end or any(a.key == site.key and a.start < anomaly.end and begin < a.end
                                    for a in truth.anomalies):
            continue
        truth.anomalies.append(anomaly)
    leaking = rng.sample(truth.sites, min(leaks + drifts, len(truth.sites)))
    for site in leaking[:leaks]:
        rate = rng.uniform(0.3, 1.0)
        begin = end - timedelta(days=rng.uniform(3, 8))
        crosses = begin + timedelta(hours=(90 - site.memory) / rate)
        truth.trends.append(Trend(f"device:{site.labels['site_id']}-ap1", "device.memory", begin, rate, crosses))
    for site in leaking[leaks:]:
        rate = -rng.uniform(0.001, 0.003)
        begin = end - timedelta(days=rng.uniform(4, 8))
        crosses = begin + timedelta(hours=(0.8 - site.sle) / rate)
        truth.trends.append(Trend(site.key, "sle.wifi.successful_connect", begin, rate, crosses))
    return truth


def values_at(truth: Truth, at: datetime, rng: random.Random, day_factor: dict[tuple[str, date], float]
              ) -> list[Entity]:
    """Every site and device of ``truth`` at time ``at``."""
    by_key = {a.key: a for a in truth.anomalies if a.start <= at < a.end}
    trends = {(t.key, t.metric): t for t in truth.trends if t.start <= at}
    entities = []
    for site in truth.sites:
        local = at.astimezone(site.zone)
        factor = day_factor.get((site.key, local.date()))
        if factor is None:
            factor = day_factor[(site.key, local.date())] = rng.lognormvariate(0, 0.06)
        usual = site.night + site.busy * business_share(site, local, truth.holidays) * factor
        clients = max(0.0, usual + rng.gauss(0, 0.03 * usual + math.sqrt(usual)))
        anomaly = by_key.get(site.key)
        if anomaly is not None:
            clients *= 1 - anomaly.depth
        sle = site.sle + rng.gauss(0, 0.005)
        drift = trends.get((site.key, "sle.wifi.successful_connect"))
        if drift is not None:
            sle += drift.rate * (at - drift.start) / timedelta(hours=1)
        device_key = f"device:{site.labels['site_id']}-ap1"
        memory = site.memory + 2 * math.sin(local.hour / 24 * 2 * math.pi) + rng.gauss(0, 0.7)
        leak = trends.get((device_key, "device.memory"))
        if leak is not None:
            memory += leak.rate * (at - leak.start) / timedelta(hours=1)
            while memory > 97:  # the leak fills memory; the device reboots and starts leaking again
                memory -= 97 - site.memory
        entities.append(Entity(site.key, "site", site.labels,
                               {"site.clients": float(round(clients)), "sle.wifi.successful_connect": sle}))
        entities.append(Entity(device_key, "device",
                               {**site.labels, "device_id": f"{site.labels['site_id']}-ap1",
                                "device_name": f"{site.labels['site_name']}-ap1", "device_type": "ap"},
                               {"device.memory": memory}))
    return entities


def backfill(store: Any, truth: Truth, *, seed: int, fine_days: float = 0,
             fine_step: timedelta = timedelta(minutes=30), progress: Callable[[int], None] | None = None) -> int:
    """Write the history of ``truth`` (hourly, then every ``fine_step`` for the last ``fine_days``)
    into ``store`` (a ``mistwatch.Store``) and roll it up. Returns the number of snapshots written;
    ``progress`` is called with that number after each."""
    rng = random.Random(seed + 1)
    day_factor: dict[tuple[str, date], float] = {}
    fine_from = truth.end - timedelta(days=fine_days)
    at, written = truth.start, 0
    while at < truth.end:
        run_id = store.start_run(at, "backfill")
        store.write_snapshot(run_id, Snapshot(taken_at=at, entities=values_at(truth, at, rng, day_factor)))
        store.finish_run(run_id, finished_at=at, status="ok")
        written += 1
        if progress is not None:
            progress(written)
        at += fine_step if at >= fine_from else timedelta(hours=1)
    store.roll_up(truth.end)
    return written


def truth_json(truth: Truth) -> dict:
    """What was injected, for scoring alerts from ``mistwatch rules backtest --json`` against it."""
    return {
        "start": truth.start.isoformat(), "end": truth.end.isoformat(),
        "anomalies": [{"key": a.key, "start": a.start.isoformat(), "end": a.end.isoformat(), "shape": a.shape,
                       "depth": round(a.depth, 3)} for a in truth.anomalies],
        "trends": [{"key": t.key, "metric": t.metric, "start": t.start.isoformat(), "rate_per_hour": t.rate,
                    "crosses_at": t.crosses_at.isoformat()} for t in truth.trends],
        "holidays": {country: [d.isoformat() for d in days] for country, days in truth.holidays.items()},
    }
