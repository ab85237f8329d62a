"""The report: one JSON document per run (``report.schema.json``), rendered to one self-contained HTML file.

``build_report`` turns a cycle (snapshot, health, alerts, notes) plus stored history into a plain dict;
``render_html`` renders it as an executive report (Jinja2, autoescape on, inline CSS and SVG, print
and dark-mode stylesheets, one small inline script for sortable and filterable tables that reads no
data, no external assets); ``write_reports`` writes ``latest.json`` / ``latest.html`` atomically plus one dated copy per
UTC day under ``history/`` (a later run the same day replaces that day's copy), and prunes copies
older than ``retention_days``.

Trends come from the store in one batch query per (metric, day): the value nearest to the same time
1..7 days ago. Day-over-day and week-over-week deltas are ``None`` when history does not reach back.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mistwatch.files import open_private, private_dir
from mistwatch.model import Alert, Snapshot, severity_rank
from mistwatch.render import alert_link, cause_rule
from mistwatch.report.health import HealthResult, Score
from mistwatch.secrets import redact

SCHEMA_VERSION = "1.1"
TREND_DAYS = 7
#: The org health chart's long view (days); the store keeps one sample a day for 35 days.
LONG_TREND_DAYS = 30
_ZERO, _MINUS_ZERO = 0.0, -0.0  # shared by _Shared.number
#: HTML: sites beyond this many get a row in the overview table but no section of their own (the
#: JSON always has every site). Sites with problems are detailed first.
HTML_DETAIL_SITES = 100
#: What counts as a change worth telling in "what changed since yesterday".
CHANGE_HEALTH = 5.0
CHANGE_SLE = 0.05
CHANGE_CLIENTS = 0.25
_HISTORY_NAME = re.compile(r"^report-(\d{4}-\d{2}-\d{2})\.(json|html)$")


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    html: Path
    history_json: Path
    history_html: Path


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _r(value: float | None, ndigits: int = 3) -> float | None:
    return None if value is None else round(float(value), ndigits)


def _delta(now: float | None, then: float | None, ndigits: int = 3) -> float | None:
    return None if now is None or then is None else round(now - then, ndigits)


class _History:
    """Past values of site metrics, fetched once per (metric, day offset) for every site."""

    def __init__(self, store: Any, now: datetime) -> None:
        self.store, self.now = store, now
        self._days: dict[str, list[dict[str, float]]] = {}

    def days(self, metric: str) -> list[dict[str, float]]:
        """Oldest first: {entity key: value} TREND_DAYS days ago ... yesterday (one query each)."""
        got = self._days.get(metric)
        if got is None:
            got = self._days[metric] = [self.store.values_at(metric, self.now - timedelta(days=d))
                                        for d in range(TREND_DAYS, 0, -1)]
        return got


def past_values(store: Any, metric: str, now: datetime) -> dict[str, list[float | None]]:
    """Per entity key, the value of ``metric`` TREND_DAYS days ago ... yesterday (oldest first, None
    where there is no sample): append today's value and hand it to ``spark_unicode`` for a console
    sparkline."""
    days = _History(store, now).days(metric)
    keys = set().union(*days)
    return {key: [day.get(key) for day in days] for key in keys}


def _series(past: Sequence[float | None], current: float | None, ndigits: int = 3,
            shared: _Shared | None = None) -> dict[str, Any]:
    """``past``: the TREND_DAYS past values (oldest first); the trend is those and the current value."""
    current = _r(current, ndigits)
    delta_1d, delta_7d = _delta(current, past[-1], ndigits), _delta(current, past[0], ndigits)
    if shared is not None:  # rounded deltas repeat: 340,000 of them at 10,000 sites, ~7 MB unshared
        current, delta_1d, delta_7d = shared.number(current), shared.number(delta_1d), shared.number(delta_7d)
    trend = [*past, current]
    if shared is not None:
        trend = shared.trend(trend)
    return {"value": current, "delta_1d": delta_1d, "delta_7d": delta_7d, "trend": trend}


def _site_trends(store: Any, now: datetime, keys: Sequence[str], wanted: Mapping[str, Sequence[int]],
                 shared: _Shared) -> tuple[dict[str, list[tuple[float | None, ...] | None]], list[float | None]]:
    """Per metric, per site (in the order of ``keys``), the ``past`` of ``_series``: the values
    TREND_DAYS days ago ... yesterday; only for the site indexes ``wanted`` for that metric (None
    elsewhere). Also the org's past health: the mean of each day's ``site.health`` values
    (``wanted`` must hold ``site.health``).

    One metric and one day at a time, each day's {key: value} dropped once copied: holding every
    metric's week of per-site dicts at once cost ~100 MB at 10,000 sites. Stored values go out as
    stored (they were written from the same kind of numbers); equal ones share one float object,
    and equal weeks one tuple: all of them are alive at once while the sites are built (170,000 at
    10,000 sites, a week of gaps for most metrics of a new store or a new site), ~20 MB as lists."""
    trends: dict[str, list[tuple[float | None, ...] | None]] = {}
    weeks: dict[tuple[float | None, ...], tuple[float | None, ...]] = {}
    org_past: list[float | None] = [None] * TREND_DAYS
    share = shared.floats.setdefault  # what _Shared.number does; zeros stay as they are
    for metric, indexes in wanted.items():
        wanted_keys = [keys[i] for i in indexes]
        columns = []  # per day, the wanted sites' values in site order
        for slot, days_ago in enumerate(range(TREND_DAYS, 0, -1)):
            day = store.values_at(metric, now - timedelta(days=days_ago))
            if metric == "site.health":
                org_past[slot] = _mean(day.values())
            columns.append([share(v, v) if v else v for v in map(day.get, wanted_keys)] if day
                           else [None] * len(wanted_keys))
            del day
        lists: list[tuple[float | None, ...] | None] = [None] * len(keys)
        for i, past in zip(indexes, zip(*columns, strict=True), strict=True):
            # shared only when equal weeks print the same: no zero (0.0 == -0.0), floats or gaps only
            lists[i] = weeks.setdefault(past, past) if 0.0 not in past and _floats_or_gaps(past) else past
        trends[metric] = lists
        del columns
    return trends, org_past


_FLOAT_OR_GAP = frozenset({float, type(None)})


def _floats_or_gaps(values: tuple[Any, ...]) -> bool:
    return _FLOAT_OR_GAP.issuperset(map(type, values))


class Records(list):
    """Rows of one shape as tuples, each an object of ``fields`` in the JSON report (``item``). A
    report lists every device: at 10,000 sites, 60,000 tuples are ~8 MB less than as many dicts."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.fields = fields

    def item(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.fields, row, strict=True))


#: The fields of each entry of the report's ``devices``, in order.
DEVICE_FIELDS = ("key", "id", "name", "type", "model", "site_id", "site_name", "connected", "clients", "health")
_CONNECTED = DEVICE_FIELDS.index("connected")


class _Shared:
    """Equal leaves of one report built once and shared (the report is written out, never changed in
    place): at 10,000 sites the 170,000 site components are a few thousand distinct ones (health
    shares their tuples, so the identity of the tuple is the key), most devices have the same
    health entry with no costly component, the SLE names repeat and so do rounded values (SLE
    shares, client counts). That is ~55 MB at 10,000 sites."""

    def __init__(self) -> None:
        self.components: dict[int, tuple[tuple[str, float, str], dict[str, Any]]] = {}
        self.plain_health: dict[float, dict[str, Any]] = {}
        self.names: dict[str, str] = {}
        self.floats: dict[float, float] = {}
        self.trends: dict[tuple[float | None, ...], list[float | None]] = {}
        self.sles: dict[str, dict[int, dict[str, Any]]] = {}

    def number(self, value: float | None) -> float | None:
        """One object per equal float. 0.0 == -0.0 but prints otherwise, so the zeros are kept apart
        by sign; NaN (equal to nothing) is never shared."""
        if type(value) is float:
            if not value:
                return _ZERO if math.copysign(1.0, value) > 0 else _MINUS_ZERO
            if value == value:
                return self.floats.setdefault(value, value)
        return value

    def trend(self, values: list[float | None]) -> list[float | None]:
        """One list per equal trend (a healthy site's week of 100.0 is most sites' week). The past
        values are floats from the store; a trend holding a zero (0.0 == -0.0) or ending on a
        non-float (1 == 1.0 but prints otherwise) keeps its own list."""
        if type(values[-1]) not in (float, type(None)):
            return values
        key = tuple(values)
        if 0.0 in key:
            return values
        return self.trends.setdefault(key, values)

    def component(self, c: tuple[str, float, str]) -> dict[str, Any]:
        got = self.components.get(id(c))
        if got is None:  # the tuple is kept with its dict, so its id cannot be reused meanwhile
            got = self.components[id(c)] = (c, {"name": c[0], "points_lost": c[1], "detail": c[2]})
        return got[1]

    def sle(self, name: str, series: dict[str, Any]) -> dict[str, Any]:
        """One dict per equal SLE entry of the sites (~160,000 at 10,000 sites, most of them alike
        when the org is healthy or the history young). Its value and deltas follow from its trend,
        so a name and a shared trend list (equal trends are one list) say all of it. Entries are
        read, never changed, once built."""
        trend = series["trend"]
        if self.trends.get(tuple(trend)) is not trend:  # a trend of its own (a zero in it, an int)
            return {"name": name, **series}
        by_trend = self.sles.setdefault(name, {})
        entry = by_trend.get(id(trend))  # the shared trend lives as long as the report: its id is its own
        if entry is None:
            entry = by_trend[id(trend)] = {"name": name, **series}
        return entry

    def sle_name(self, metric: str) -> str:
        name = self.names.get(metric)
        if name is None:
            name = self.names[metric] = metric[4:]
        return name


def _score_dict(score: Score | None, *, costly_only: bool = False, shared: _Shared | None = None) -> dict[str, Any]:
    """``costly_only`` (devices): list only the components that cost points, which keeps the JSON of
    a large org small; sites list every component, 0 included."""
    if score is None:
        return {"score": None, "components": [], "unknown": []}
    if shared is None:
        return {"score": score.score,
                "components": [{"name": n, "points_lost": p, "detail": d} for n, p, d in score.components
                               if p > 0 or not costly_only],
                "unknown": list(score.unknown)}
    components = [shared.component(c) for c in score.components if c[1] > 0 or not costly_only]
    value = score.score
    if not costly_only or components or score.unknown or type(value) is not float or str(value) in ("-0.0", "nan"):
        return {"score": value, "components": components, "unknown": list(score.unknown)}
    plain = shared.plain_health.get(value)  # only for floats equal exactly when printed the same
    if plain is None:
        plain = shared.plain_health[value] = {"score": value, "components": [], "unknown": []}
    return plain


def alert_dict(a: Alert) -> dict[str, Any]:
    labels = a.labels
    return {
        "key": a.key, "rule_id": a.rule_id, "state": a.state, "severity": a.severity,
        "summary": a.summary, "recommendation": a.recommendation,
        "site_id": labels.get("site_id"), "site_name": labels.get("site_name"),
        "device_id": labels.get("device_id"), "device_name": labels.get("device_name"),
        "value": a.value, "threshold": a.threshold, "baseline": a.baseline,
        "pending_since": iso(a.pending_since), "firing_since": iso(a.firing_since),
        "resolved_at": iso(a.resolved_at),
        # held back from notifications because a more telling alert of the same entity replaces it
        "superseded_by": a.annotations.get("superseded_by_rule") if a.state == "firing" else None,
        # muted by the config's inhibit: rules (the rule of the firing alert muting it)
        "inhibited_by": a.annotations.get("inhibited_by_rule") if a.state == "firing" else None,
        "link": alert_link(a) or None,
        # the id of its row in the HTML report, and a correlation's causes linking to their rows
        # (``anchor`` None when the cause is not listed at the same site: see _link_causes)
        "anchor": alert_anchor(a.key),
        "causes": [{"key": key, "rule_id": cause_rule(key), "anchor": alert_anchor(key)}
                   for key in dict.fromkeys(a.causes)],
    }


def alert_anchor(key: str) -> str:
    """A stable HTML id for an alert's row (alert keys hold braces, commas and Mist's ids)."""
    return "alert-" + hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]


def _link_causes(listed: list[dict[str, Any]]) -> None:
    """Keep a cause's anchor only when the cause's row is in the same list (the site's open alerts)."""
    keys = {d["key"] for d in listed}
    for d in listed:
        for cause in d["causes"]:
            if cause["key"] not in keys:
                cause["anchor"] = None


def _recommendation_for(site: dict[str, Any]) -> str | None:
    """A plain next step for a site's costliest component (our alerts carry their own)."""
    comps = [c for c in site["health"]["components"] if c["points_lost"] > 0 and c["name"] != "alerts"]
    if not comps:
        return None
    worst = max(comps, key=lambda c: c["points_lost"])
    name, detail, where = worst["name"], worst["detail"], site["name"]
    if name == "availability":
        return f"{where}: {detail}; check their power, uplink ports and the Mist alarms for them."
    if name == "mist_alarms":
        return f"{where}: {detail}; review and clear them in the Mist portal."
    if name == "sle.wifi.coverage":
        return f"{where}: Wi-Fi {detail}; review AP placement and transmit power (RRM) in the weak areas."
    if name == "sle.wifi.capacity":
        return f"{where}: Wi-Fi {detail}; look for busy APs and channel utilisation, consider band steering."
    if name.startswith("sle."):
        return f"{where}: {name.split('.')[1]} SLE {detail}; open the SLE classifiers in Mist to find the cause."
    return None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building a report allocates tens of thousands of small dicts and lists and no reference
    cycles; pausing the cyclic GC meanwhile saves the repeated full scans it would trigger."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_report(store: Any, snapshot: Snapshot, health: HealthResult, alerts: Sequence[Alert],
                 notes: Sequence[str], run: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The report as a JSON-able dict following ``schemas/report.schema.json``.

    ``run`` holds ``started_at`` (datetime), ``duration_s``, ``api_calls``, ``errors``, ``mode``."""
    with _gc_paused():
        return _build_report(store, snapshot, health, alerts, notes, run, now)


def _build_report(store: Any, snapshot: Snapshot, health: HealthResult, alerts: Sequence[Alert],
                  notes: Sequence[str], run: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    shared = _Shared()
    sites_e = [e for e in snapshot.entities if e.kind == "site"]
    devices_e = [e for e in snapshot.entities if e.kind == "device"]
    org_e = next((e for e in snapshot.entities if e.kind == "org"), None)
    open_alerts = [a for a in alerts if a.state in ("firing", "pending")]
    open_alerts.sort(key=lambda a: (-severity_rank(a.severity), a.state != "firing", a.site_name, a.summary))

    disconnected: dict[str, list[str]] = {}
    # Claimed devices that never connected are inventory, not outages: listed per site, not counted.
    not_yet: dict[str, list[str]] = {}
    for e in devices_e:
        if e.metrics.get("device.never_connected"):
            not_yet.setdefault(e.labels.get("site_id", ""), []).append(e.name)
    devices = Records(DEVICE_FIELDS)
    for e in devices_e:
        score = health.devices.get(e.key)
        connected = None if _unknown_test(snapshot, e)("device.connected") else e.metrics.get("device.connected")
        up = None if connected is None else connected >= 0.5
        devices.append((e.key, e.labels.get("device_id"), e.name, e.labels.get("device_type"), e.labels.get("model"),
                        e.labels.get("site_id"), e.labels.get("site_name"), up,
                        shared.number(_r(e.metrics.get("device.clients"), 1)),
                        _score_dict(score, costly_only=True, shared=shared)))
        if up is False:
            disconnected.setdefault(e.labels.get("site_id", ""), []).append(e.name)

    alerts_by_site: dict[str, list[dict[str, Any]]] = {}
    for a in open_alerts:
        alerts_by_site.setdefault(a.labels.get("site_id", ""), []).append(alert_dict(a))
    for listed in alerts_by_site.values():
        _link_causes(listed)

    every_site = range(len(sites_e))
    wanted: dict[str, list[int] | range] = {"site.health": every_site, "site.clients": every_site}
    site_sles: list[list[str]] = []
    for i, e in enumerate(sites_e):
        unknown = _unknown_test(snapshot, e)
        names = [k for k in sorted(e.metrics) if k.startswith("sle.") and not unknown(k)]
        site_sles.append(names)
        for k in names:
            wanted.setdefault(k, []).append(i)  # type: ignore[union-attr]
    trends, org_past = _site_trends(store, now, [e.key for e in sites_e], wanted, shared)

    sites = []
    for i, e in enumerate(sites_e):
        sid = e.labels.get("site_id", "")
        m = e.metrics
        unknown = _unknown_test(snapshot, e)
        score = health.sites.get(e.key)
        h = _series(trends["site.health"][i], score.score if score else None, 1, shared)  # type: ignore[arg-type]
        h.update(_score_dict(score, shared=shared))
        clients = None if unknown("site.clients") else m.get("site.clients")
        sles = [shared.sle(shared.sle_name(k), _series(trends[k][i], m[k], shared=shared))  # type: ignore[arg-type]
                for k in site_sles[i]]
        unknown_devices = unknown("site.devices_total")
        sites.append({
            "key": e.key, "id": sid, "name": e.name, "timezone": e.labels.get("timezone"),
            "health": h,
            "devices": {"total": None if unknown_devices else _int(m.get("site.devices_total")),
                        "connected": None if unknown_devices else _int(m.get("site.devices_connected")),
                        "disconnected": sorted(disconnected.get(sid, [])),
                        "not_yet_connected": sorted(not_yet.get(sid, []))},
            "clients": _series(trends["site.clients"][i], clients, 1, shared),  # type: ignore[arg-type]
            "sles": sles,
            "alarms": {k: (None if unknown(f"site.alarms_{k}") else _int(m.get(f"site.alarms_{k}")))
                       for k in ("open", "critical", "major")},
            "alerts": alerts_by_site.get(sid, []),
            "changes": [],
        })
    sites.sort(key=lambda s: (s["health"]["score"] is None, s["health"]["score"] or 0, s["name"].lower()))

    changes = _changes(sites, alerts, now)
    recommendations = _recommendations(sites, open_alerts)
    del trends, wanted, site_sles
    org = _org(snapshot, org_e, sites, devices, open_alerts, health, org_past)
    org["health_30d"] = _org_long_trend(store, now, org_past, org["health"]["value"])
    worst = [{"key": s["key"], "name": s["name"], "score": s["health"]["score"],
              "delta_1d": s["health"]["delta_1d"],
              "reason": _reason(s)} for s in sites if s["health"]["score"] is not None
             and s["health"]["score"] < 100][:5]
    unknown_sites = [s["name"] for s in sites if s["health"]["score"] is None]
    critical = [alert_dict(a) for a in open_alerts if a.state == "firing" and a.severity == "critical"]
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(now),
        "run": {
            "started_at": iso(run.get("started_at")) if isinstance(run.get("started_at"), datetime)
            else run.get("started_at"),
            "duration_s": _r(run.get("duration_s"), 3),
            "api_calls": int(run.get("api_calls") or 0),
            "mode": run.get("mode", "all"),
            # already redacted upstream; redacted again because a report is often mailed around
            "errors": [redact(str(x)) for x in run.get("errors", ())],
            "collector_errors": [{"collector": err.collector, "endpoint": redact(err.endpoint),
                                  "message": redact(err.message)} for err in snapshot.errors],
        },
        "trend_dates": [(now - timedelta(days=d)).date().isoformat() for d in range(TREND_DAYS, -1, -1)],
        "org": org,
        "summary": {"worst_sites": worst, "unknown_sites": unknown_sites, "changes": changes[:10],
                    "critical_alerts": critical, "recommendations": [r["text"] for r in recommendations[:5]]},
        "sites": sites,
        "devices": devices,
        "alerts": [alert_dict(a) for a in open_alerts],
        "insights": [redact(str(n)) for n in notes],
        "recommendations": recommendations,
    }


def _never(metric: str) -> bool:
    return False


def _unknown_test(snapshot: Snapshot, entity: Any) -> Callable[[str], bool]:
    """``snapshot.is_unknown`` for one entity; the common case (nothing unknown anywhere) skips the
    pattern matching for every metric of every site."""
    if not entity.unknown and not snapshot.errors:
        return _never
    return functools.partial(snapshot.is_unknown, entity)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _reason(site: dict[str, Any]) -> str:
    comps = sorted((c for c in site["health"]["components"] if c["points_lost"] > 0),
                   key=lambda c: -c["points_lost"])
    return "; ".join(f"{c['detail']} (-{c['points_lost']:g})" for c in comps[:2])


def _org(snapshot: Snapshot, org_e: Any, sites: list[dict[str, Any]], devices: Records,
         open_alerts: list[Alert], health: HealthResult, past: list[float | None]) -> dict[str, Any]:
    by_sev = {s: 0 for s in ("critical", "major", "minor", "info")}
    for a in open_alerts:
        if a.state == "firing":
            by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
    clients = [s["clients"]["value"] for s in sites if s["clients"]["value"] is not None]
    org_health = health.org
    trend = [*past, org_health]
    labels = org_e.labels if org_e is not None else {}
    not_yet = sum(len(s["devices"]["not_yet_connected"]) for s in sites)
    return {
        "id": labels.get("org_id"), "name": labels.get("org_name") or labels.get("org_id") or "",
        "sites": len(sites), "devices": len(devices) - not_yet,
        "devices_connected": sum(1 for d in devices if d[_CONNECTED]),
        "devices_unknown": sum(1 for d in devices if d[_CONNECTED] is None) - not_yet,
        "devices_not_connected_yet": not_yet,
        "clients": round(sum(clients)) if clients else None,
        "health": {"value": org_health, "delta_1d": _delta(org_health, trend[-2], 1),
                   "delta_7d": _delta(org_health, trend[0], 1), "trend": [_r(v, 1) for v in trend]},
        "alerts_firing": by_sev,
        "alerts_pending": sum(1 for a in open_alerts if a.state == "pending"),
    }


def _org_long_trend(store: Any, now: datetime, week: list[float | None], today: float | None) -> list[float | None]:
    """The org's health LONG_TREND_DAYS days ago ... today (the mean of each day's site scores): the
    last week as in the 7-day trend, older days read with a half-day tolerance because the store
    thins old history to one sample a day."""
    older = []
    for days_ago in range(LONG_TREND_DAYS, TREND_DAYS, -1):
        day = store.values_at("site.health", now - timedelta(days=days_ago), tolerance=timedelta(hours=12))
        older.append(_r(_mean(day.values()), 1))
        del day
    return [*older, *(_r(v, 1) for v in week), _r(today, 1)]


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _changes(sites: list[dict[str, Any]], alerts: Sequence[Alert], now: datetime) -> list[dict[str, Any]]:
    """What changed since yesterday, biggest first; each site also keeps its own list."""
    out: list[dict[str, Any]] = []

    def add(site: dict[str, Any], what: str, before: Any, after: Any, weight: float, text: str) -> None:
        item = {"site_key": site["key"], "site_name": site["name"], "what": what, "before": before,
                "after": after, "text": text, "_w": weight}
        site["changes"].append(item)
        out.append(item)

    for s in sites:
        h = s["health"]
        if h["delta_1d"] is not None and abs(h["delta_1d"]) >= CHANGE_HEALTH:
            before = round(h["value"] - h["delta_1d"], 1)
            add(s, "health", before, h["value"], abs(h["delta_1d"]),
                f"health {before:g} → {h['value']:g} ({h['delta_1d']:+g})")
        for sle in s["sles"]:
            if sle["delta_1d"] is not None and abs(sle["delta_1d"]) >= CHANGE_SLE:
                before = round(sle["value"] - sle["delta_1d"], 3)
                add(s, f"sle.{sle['name']}", before, sle["value"], abs(sle["delta_1d"]) * 100,
                    f"{sle['name']} SLE {before:.0%} → {sle['value']:.0%}")
        c = s["clients"]
        if c["delta_1d"] is not None and c["value"] is not None:
            before = c["value"] - c["delta_1d"]
            if before > 0 and abs(c["delta_1d"]) / before >= CHANGE_CLIENTS and abs(c["delta_1d"]) >= 5:
                add(s, "clients", before, c["value"], abs(c["delta_1d"]) / before * 20,
                    f"clients {before:g} → {c['value']:g} ({c['delta_1d'] / before:+.0%})")
    by_key = {s["id"]: s for s in sites}
    day_ago = now - timedelta(days=1)
    for a in alerts:
        site = by_key.get(a.labels.get("site_id", ""))
        if site is None:
            continue
        where = f" ({a.labels['device_name']})" if a.labels.get("device_name") else ""
        if a.state == "firing" and a.firing_since and a.firing_since > day_ago:
            add(site, "alert", None, a.severity, 10 + 5 * severity_rank(a.severity),
                f"new {a.severity} alert: {a.summary or a.rule_id}{where}")
        elif a.state == "resolved" and a.resolved_at and a.resolved_at > day_ago:
            add(site, "alert", a.severity, "resolved", 5, f"resolved: {a.summary or a.rule_id}{where}")
    out.sort(key=lambda c: -c["_w"])
    for item in out:
        item.pop("_w", None)
    return out


def _recommendations(sites: list[dict[str, Any]], open_alerts: list[Alert]) -> list[dict[str, Any]]:
    """Our alerts' recommendations grouped by text (most severe, then most sites, first), then one per
    unhealthy site from its costliest component."""
    grouped: dict[str, dict[str, Any]] = {}
    for a in open_alerts:
        if a.state != "firing" or not a.recommendation:
            continue
        g = grouped.setdefault(a.recommendation, {"text": a.recommendation, "severity": a.severity,
                                                  "sites": [], "count": 0, "source": "alerts"})
        g["count"] += 1
        if severity_rank(a.severity) > severity_rank(g["severity"]):
            g["severity"] = a.severity
        if a.site_name and a.site_name not in g["sites"]:
            g["sites"].append(a.site_name)
    recs = sorted(grouped.values(), key=lambda g: (-severity_rank(g["severity"]), -len(g["sites"]), g["text"]))
    for s in sites:
        if s["health"]["score"] is None or s["health"]["score"] >= 90:
            continue
        text = _recommendation_for(s)
        if text:
            sev = "major" if s["health"]["score"] < 70 else "minor"
            recs.append({"text": text, "severity": sev, "sites": [s["name"]], "count": 1, "source": "health"})
    return recs


# -- HTML ---------------------------------------------------------------------------------------

_ENV: Any = None


def _env() -> Any:
    global _ENV
    if _ENV is None:
        import jinja2
        from markupsafe import Markup

        from mistwatch.report import labels
        from mistwatch.report.sparkline import spark_svg

        env = jinja2.Environment(loader=jinja2.PackageLoader("mistwatch.report", "templates"),
                                 autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                 undefined=jinja2.StrictUndefined)

        def spark(values: Sequence[float | None], label: str = "", lo: float | None = None,
                  hi: float | None = None, color: str = "#2563eb", axis: tuple[str, str] | None = None,
                  width: int = 96, height: int = 24) -> Markup:
            # spark_svg builds markup from numbers and escapes the label and axis itself
            return Markup(spark_svg(values, lo=lo, hi=hi, label=label, color=color, axis=axis,
                                    width=width, height=height))

        env.filters["spark"] = spark
        env.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
        env.filters["num"] = lambda v, nd=0: "–" if v is None else f"{v:,.{nd}f}"
        env.filters["signed"] = _signed
        env.filters["score_class"] = _score_class
        env.filters["label"] = labels.metric_label
        env.filters["humanize"] = _humanize
        env.filters["when"] = lambda iso, zone_name=None: labels.local_time(iso, zone_name)
        env.filters["day"] = lambda d: "" if not d else f"{date.fromisoformat(d):%d %b}"
        env.filters["zone_name"] = lambda name: name if name and labels.zone(name) is not timezone.utc else "UTC"
        env.filters["ceiling"] = lambda values: labels.nice_ceiling(max((v for v in values if v is not None),
                                                                        default=None))
        env.tests["weak_sle"] = _weak_sle
        _ENV = env
    return _ENV


def _weak_sle(sle: dict[str, Any]) -> bool:
    """An SLE a site section shows as a row: below 90%, unknown, or moved by CHANGE_SLE in a day."""
    value, moved = sle["value"], sle["delta_1d"]
    return value is None or value < 0.9 or (moved is not None and abs(moved) >= CHANGE_SLE)


_METRIC_ID = re.compile(r"\b(?:sle\.)?(?:wifi|wired|wan)\.[a-z_]+")


def _humanize(text: str) -> str:
    """Metric ids inside a sentence (``wifi.coverage SLE 70% → 58%``) in their human names."""
    from mistwatch.report.labels import metric_label

    return _METRIC_ID.sub(lambda m: metric_label(m.group(0)), text)


def _signed(value: float | None, kind: str = "num") -> str:
    if value is None:
        return ""
    if kind == "pct":
        return f"{value * 100:+.1f} pts" if value else "±0"
    return f"{value:+,.1f}".replace(".0", "") if value else "±0"


def _score_class(score: float | None) -> str:
    if score is None:
        return "unknown"
    return "good" if score >= 90 else "warn" if score >= 70 else "bad"


#: In print, a longer list of healthy sites is left out (said so on the page): at 1,000 sites it was
#: 19 of 21 A4 pages of rows that need nobody. The screen and the JSON keep every row.
PRINT_HEALTHY_ROWS = 40
#: A site needs attention below this health, with an open alert, or with a device down.
ATTENTION_BELOW = 90


def _needs_attention(site: dict[str, Any]) -> bool:
    score = site["health"]["score"]
    return score is None or score < ATTENTION_BELOW or bool(site["alerts"]) or bool(site["devices"]["disconnected"])


def _incidents(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Open critical and major alerts as one incident per site (its most severe alert as the headline),
    most severe first: what needs a person now."""
    from mistwatch.report.labels import local_time

    zones = {s["id"]: s.get("timezone") for s in report["sites"]}
    by_site: dict[str, dict[str, Any]] = {}
    for a in report["alerts"]:  # already most severe first
        if a["state"] != "firing" or a["severity"] not in ("critical", "major"):
            continue
        item = by_site.get(a["site_id"] or "")
        if item is None:
            headline = a["summary"] or a["rule_id"]
            item = by_site[a["site_id"] or ""] = {"site_name": a["site_name"], "severity": a["severity"],
                                                  "headline": headline, "count": 0, "first": a["firing_since"]}
        item["count"] += 1
        if a["firing_since"] and (item["first"] is None or a["firing_since"] < item["first"]):
            item["first"] = a["firing_since"]
    out = list(by_site.values())
    for item, site_id in zip(out, by_site, strict=True):
        item["since"] = local_time(item.pop("first"), zones.get(site_id))
    out.sort(key=lambda i: (-severity_rank(i["severity"]), -i["count"], i["site_name"] or ""))
    return out


def _html_chunks(report: dict[str, Any]) -> Iterator[str]:
    """The HTML page in pieces, as Jinja renders it (``render_html`` joins them)."""
    sites = report["sites"]
    # problem sites in full (report order: worst first), healthy ones as one compact table
    attention = [s for s in sites if _needs_attention(s)]
    healthy = [s for s in sites if not _needs_attention(s)]
    healthy.sort(key=lambda s: s["name"].lower())
    detailed = {s["key"] for s in attention[:HTML_DETAIL_SITES]}
    weak: dict[str, list[dict[str, Any]]] = {}
    for d in map(report["devices"].item, report["devices"]):
        if d["connected"] is not False and (d["health"]["score"] is None or d["health"]["score"] < 100):
            weak.setdefault(d["site_id"], []).append(d)
    for devs in weak.values():
        devs.sort(key=lambda d: (d["health"]["score"] is not None, d["health"]["score"] or 0, d["name"]))
    return _env().get_template("report.html.j2").generate(
        r=report, detailed=detailed, hidden=len(attention) - len(detailed), weak=weak, summary_only=False,
        attention=attention, healthy=healthy, index={s["key"]: i for i, s in enumerate(attention, 1)},
        incidents=_incidents(report), long_from=_long_from(report), print_healthy_rows=PRINT_HEALTHY_ROWS)


def _long_from(report: dict[str, Any]) -> str:
    first = report["trend_dates"][-1]
    return (date.fromisoformat(first) - timedelta(days=LONG_TREND_DAYS)).isoformat()


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page (autoescaped)."""
    return "".join(_html_chunks(report))


def summary_html(report: dict[str, Any]) -> str:
    """Only the executive summary, as a self-contained HTML fragment page (the digest's body)."""
    sites = report["sites"]
    return _env().get_template("report.html.j2").render(
        r=report, detailed=set(), hidden=0, weak={}, summary_only=True,
        attention=[s for s in sites if _needs_attention(s)], healthy=[], index={},
        incidents=_incidents(report), long_from=_long_from(report), print_healthy_rows=PRINT_HEALTHY_ROWS)


# -- files --------------------------------------------------------------------------------------

def _write_temp(path: Path, chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to a temp file beside ``path`` and return it (the caller ``os.replace``s it
    over ``path``, so a reader sees the old file or the new one, never half of one). Created
    owner-only (0600, whatever the umask): a report lists the whole network and its problems."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open_private(tmp, "xb") as fh:
            for chunk in chunks:
                fh.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    tmp = _write_temp(path, chunks)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(functools.partial(fh.read, 1 << 20), b"")


_JSON_PIECE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json_chunks(report: dict[str, Any]) -> Iterator[bytes]:
    """The report as JSON (``ensure_ascii=False``, compact) in pieces, UTF-8 encoded: top-level lists
    (the sites and devices of a big org) one item at a time, so the whole document (tens of MB at
    10,000 sites) is never in memory at once, yet every piece uses the C encoder; a :class:`Records`
    row goes out as the object of its fields."""
    for n, (key, value) in enumerate(report.items()):
        head = ("{" if n == 0 else ",") + _JSON_PIECE(key) + ":"
        if isinstance(value, list) and value:
            parts = [head + "["]
            as_object = value.item if isinstance(value, Records) else None
            for i, item in enumerate(value):
                parts.append(("," if i else "") + _JSON_PIECE(item if as_object is None else as_object(item)))
                if len(parts) >= 256:
                    yield "".join(parts).encode("utf-8")
                    parts = []
            parts.append("]")
            yield "".join(parts).encode("utf-8")
        else:
            yield (head + _JSON_PIECE(value)).encode("utf-8")
    yield b"}" if report else b"{}"


def report_json(report: dict[str, Any]) -> str:
    """The JSON document of ``report``, as ``latest.json`` holds it (the report's device rows as
    objects). Whole in memory: for tests and small orgs; ``write_reports`` streams it."""
    return b"".join(_json_chunks(report)).decode("utf-8")


def _html_bytes(report: dict[str, Any]) -> Iterator[bytes]:
    """The HTML page UTF-8 encoded in pieces of about 256 KB (Jinja yields many tiny strings)."""
    parts: list[str] = []
    size = 0
    for chunk in _html_chunks(report):
        parts.append(chunk)
        size += len(chunk)
        if size >= 1 << 18:
            yield "".join(parts).encode("utf-8")
            parts, size = [], 0
    yield "".join(parts).encode("utf-8")


def write_reports(report: dict[str, Any], reports_dir: Path, now: datetime, retention_days: int = 7) -> ReportPaths:
    """Write latest.json/.html and today's dated copy under history/, then prune old copies.

    Both documents are streamed to disk (never whole in memory: at 10,000 sites they are tens of MB,
    plus their encoded bytes); the dated copies are copied from the files just written."""
    reports_dir = Path(reports_dir)
    history = reports_dir / "history"
    private_dir(history)
    day = now.astimezone(timezone.utc).date().isoformat()
    paths = ReportPaths(json=reports_dir / "latest.json", html=reports_dir / "latest.html",
                        history_json=history / f"report-{day}.json", history_html=history / f"report-{day}.html")
    with _gc_paused():
        tmp_json = _write_temp(paths.json, _json_chunks(report))
        try:
            tmp_html = _write_temp(paths.html, _html_bytes(report))
        except BaseException:
            tmp_json.unlink(missing_ok=True)
            raise
    # both documents rendered: only now replace the latest ones, so they always match
    os.replace(tmp_json, paths.json)
    os.replace(tmp_html, paths.html)
    _atomic_write(paths.history_json, _file_chunks(paths.json))
    _atomic_write(paths.history_html, _file_chunks(paths.html))
    prune_history(history, now.astimezone(timezone.utc).date(), retention_days)
    return paths


def prune_history(history: Path, today: date, retention_days: int) -> list[Path]:
    """Delete dated copies from ``retention_days`` or more days before ``today`` (today's copy and the
    ``retention_days - 1`` before it stay). Files not named by us are left alone."""
    cutoff = today - timedelta(days=max(1, int(retention_days)))
    removed = []
    for path in history.iterdir():
        match = _HISTORY_NAME.match(path.name)
        if match and date.fromisoformat(match.group(1)) <= cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
