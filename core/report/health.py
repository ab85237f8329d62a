"""Health scores, 0 to 100, per site and per device, explained component by component.

A score starts at 100 and loses points for what is measured at the site and for our firing alerts
there. The model, with the demo's worked examples, is in ``docs/health.md``:

- measured components share ``100 - alerts`` points (80 by default) in proportion to their weights:
  ``availability`` (50: the impact of disconnected devices by role: a site without its WAN edge or
  its switches is worse off than one with some APs down), ``sle`` (20, shared by the site's SLEs)
  and ``mist_alarms`` (10);
- ``alerts`` (20) is never rescaled: each firing alert costs its severity's share of it (critical
  1.0 = 20 points, major 0.5 = 10, minor 0.25 = 5, info 0), capped at the whole 20.

Unknown data is never read as good or bad: a component whose source failed this cycle is skipped and
listed in ``Score.unknown``, and the known measured components are scaled up to share their points,
so ``sum(points lost) == 100 - score`` always holds. With nothing measured (only our alerts, or
an entity no collector measures) the score is ``None``.
A component that does not apply (a site without devices or SLEs) is left out silently.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mistwatch.model import Alert, Entity, Snapshot, severity_rank

DEFAULT_WEIGHTS: dict[str, float] = {
    "availability": 50.0,
    "sle": 20.0,
    "mist_alarms": 10.0,
    "alerts": 20.0,
    # what losing every device of a role does to a site (availability badness, 0..1)
    "impact.gateway": 1.0,  # no WAN edge: the site is cut off
    "impact.switch": 0.8,  # no switching: wired clients and most APs are down with it
    "impact.ap": 0.6,  # no Wi-Fi, but wired and WAN still work
    "alarm.critical": 1.0,
    "alarm.major": 0.5,
    "alarm.other": 0.2,
    "alert.critical": 1.0,
    "alert.major": 0.5,
    "alert.minor": 0.25,
    "alert.info": 0.0,
    "device.connected": 60.0,
    "device.cpu": 10.0,
    "device.memory": 10.0,
    "device.alerts": 20.0,
    "device.cpu_from": 80.0,
    "device.memory_from": 85.0,
    "sle.target": 0.9,
    "sle.floor": 0.5,
}
#: Settings in the weights mapping that are not weights of SLE components.
_SLE_SETTINGS = ("sle.target", "sle.floor")

SLE_FAMILIES = ("wifi", "wired", "wan")
HEALTH_METRICS = ("site.health", "device.health")


@dataclass(slots=True)
class Score:
    """One entity's score. ``components`` are ``(component, points_lost, detail)``, in a fixed order;
    ``unknown`` names the components skipped because their data is unknown this cycle."""

    key: str
    name: str
    score: float | None
    components: list[tuple[str, float, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def worst(self) -> tuple[str, float, str] | None:
        costly = [c for c in self.components if c[1] > 0]
        return max(costly, key=lambda c: c[1]) if costly else None


@dataclass
class HealthResult:
    sites: dict[str, Score] = field(default_factory=dict)
    devices: dict[str, Score] = field(default_factory=dict)

    @property
    def org(self) -> float | None:
        """The mean of the sites' known scores."""
        known = [s.score for s in self.sites.values() if s.score is not None]
        return round(sum(known) / len(known), 1) if known else None


#: (component, weight, badness, detail, members): ``members`` splits a group's cost among its
#: members, (name, share of the badness, detail); empty for a plain component.
_Part = tuple[str, float, float, str, tuple[tuple[str, float, str], ...]]
_Component = tuple[str, float, str]


class _Shared(dict):
    """One tuple per distinct ``(component, points lost, detail)`` within a compute_health call.

    At 10,000 sites and 60,000 devices nearly every component repeats (``connected``, ``cpu 11%``,
    ``coverage 94%`` at 0 points), and the 300,000 tuples and detail strings would otherwise cost
    about 60 MB. Tuples are immutable, so sharing them changes nothing else. Only points lost that
    compare equal only when identical (positive floats and +0.0) are shared."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: dict[tuple[Any, ...], list[Any]] = {}

    def get_list(self, items: list[Any]) -> list[Any]:
        """One list per equal list of shared components, or of unknown names: 60,000 devices at
        10,000 sites have a few hundred distinct ones (~11 MB as a list each, kept all cycle).
        Scores are read, never changed, so sharing them changes nothing else."""
        if any(type(item) is tuple and self.get(item) is not item for item in items):
            return items  # an unshared component: equal, but it would not print the same
        return self.lists.setdefault(tuple(items), items)

    def get_component(self, component: _Component) -> _Component:
        lost = component[1]
        if type(lost) is not float or not (lost > 0 or (lost == 0 and str(lost) == "0.0")):
            return component  # -0.0, NaN, ints: equal keys that would print differently
        return self.setdefault(component, component)


_ALERT_PARTS = ("alerts", "device.alerts")


def _finish(key: str, name: str, parts: list[_Part], unknown: list[str], shared: _Shared | None = None) -> Score:
    """Scale the measured parts' weights to share what the alerts leave of 100 points, and turn
    badness into points lost. Alerts cost their stated weight, never scaled up."""
    alert_weight = sum(p[1] for p in parts if p[0] in _ALERT_PARTS)
    measured_weight = sum(p[1] for p in parts if p[0] not in _ALERT_PARTS)
    if measured_weight <= 0:
        # only our own alerts are left: what we cannot measure has no score, not a healthy one
        return Score(key, name, None, [], unknown)
    scale = max(0.0, 100.0 - alert_weight) / measured_weight
    components: list[_Component] = []
    for comp, weight, badness, detail, members in parts:
        effective = weight if comp in _ALERT_PARTS else weight * scale
        lost = effective * min(1.0, max(0.0, badness))
        if not members:
            components.append((comp, round(lost, 1), detail))
            continue
        spread = sum(b for _, b, _ in members)
        for member, b, member_detail in members:
            components.append((member, round(lost * b / spread, 1) if spread > 0 else 0.0, member_detail))
    score = round(max(0.0, 100.0 - sum(c[1] for c in components)), 1)
    if shared is not None:
        components = shared.get_list([shared.get_component(c) for c in components])
        unknown = shared.get_list(unknown)
    return Score(key, name, score, components, unknown)


def _alert_cost(alerts: Sequence[Alert], w: Mapping[str, float]) -> tuple[float, str]:
    by_sev: dict[str, int] = {}
    cost = 0.0
    for a in alerts:
        by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
        cost += w.get(f"alert.{a.severity}", w["alert.minor"])
    if not by_sev:
        return 0.0, "no firing alerts"
    text = ", ".join(f"{by_sev[s]} {s}" for s in sorted(by_sev, key=lambda s: -severity_rank(s)))
    return cost, f"{text} firing"


_ROLES = (("gateway", "gateway", "no WAN edge"), ("switch", "switch", "no switching"), ("ap", "AP", ""))


def _availability(m: Mapping[str, float], w: Mapping[str, float]) -> tuple[float, str]:
    """The impact of the site's disconnected devices, 0..1, by role: losing every device of a role
    costs ``impact.<role>`` (gateway 1.0, switch 0.8, AP 0.6), losing some of them that share of it.
    Roles combine like independent failures, 1 - (1 - a)(1 - b)...: a site without its gateway is
    as bad as it gets, one without switches nearly so, whatever share of its devices that is. Without
    per-role counts (another collector), the share of devices down."""
    total, up = m["site.devices_total"], min(m["site.devices_connected"], m["site.devices_total"])
    down = int(total - up)
    detail = f"{down} of {int(total)} devices disconnected" if down else f"all {int(total)} devices connected"
    roles = [(role, label, note, m[f"site.{role}_total"], m.get(f"site.{role}_connected"))
             for role, label, note in _ROLES if m.get(f"site.{role}_total", 0) > 0]
    if not roles or any(r[4] is None for r in roles):
        return (total - up) / total, detail
    intact, lost = 1.0, []
    for role, label, note, role_total, role_up in roles:
        role_down = role_total - min(role_up, role_total)
        if role_down <= 0:
            continue
        intact *= 1.0 - w[f"impact.{role}"] * role_down / role_total
        plural = "s" if role_total != 1 else ""
        lost.append(f"{int(role_down)} of {int(role_total)} {label}{plural} down"
                    + (f" ({note})" if note and role_down >= role_total else ""))
    if lost:
        detail = "; ".join(lost)
    return 1.0 - intact, detail


def _site_score(site: Entity, snapshot: Snapshot, alerts: Sequence[Alert], w: Mapping[str, float],
                shared: _Shared | None = None) -> Score:
    m = site.metrics
    parts: list[_Part] = []
    unknown: list[str] = []

    if snapshot.is_unknown(site, "site.devices_connected") or snapshot.is_unknown(site, "site.devices_total"):
        unknown.append("availability")
    elif m.get("site.devices_total", 0) > 0 and "site.devices_connected" in m:
        badness, detail = _availability(m, w)
        parts.append(("availability", w["availability"], badness, detail, ()))

    sles = sorted(k for k in m if k.startswith("sle.") and not snapshot.is_unknown(site, k))
    for family in SLE_FAMILIES:
        if snapshot.is_unknown(site, f"sle.{family}.*") and not any(k.startswith(f"sle.{family}.") for k in sles):
            unknown.append(f"sle.{family}")
    target, floor = w["sle.target"], w["sle.floor"]
    group = []
    for k in sles:
        value = min(1.0, max(0.0, m[k]))
        badness = 0.0 if value >= target else min(1.0, (target - value) / max(1e-9, target - floor))
        detail = f"{k.rsplit('.', 1)[1].replace('_', ' ')} {value:.0%}"
        if value < target:
            detail += f" (target {target:.0%})"
        if k in w and k not in _SLE_SETTINGS:
            parts.append((k, w[k], badness, detail, ()))
        else:
            group.append((k, badness, detail))
    if group:
        parts.append(("sle", w["sle"], sum(b for _, b, _ in group), "", tuple(group)))

    if snapshot.is_unknown(site, "site.alarms_open"):
        unknown.append("mist_alarms")
    elif "site.alarms_open" in m:
        n_open = int(m["site.alarms_open"])
        crit, major = int(m.get("site.alarms_critical", 0)), int(m.get("site.alarms_major", 0))
        other = max(0, n_open - crit - major)
        cost = crit * w["alarm.critical"] + major * w["alarm.major"] + other * w["alarm.other"]
        detail = f"{n_open} open Mist alarm{'s' if n_open != 1 else ''}" if n_open else "no open Mist alarms"
        if crit or major:
            detail += f" ({crit} critical, {major} major)"
        parts.append(("mist_alarms", w["mist_alarms"], cost, detail, ()))

    cost, detail = _alert_cost(alerts, w)
    parts.append(("alerts", w["alerts"], cost, detail, ()))
    return _finish(site.key, site.name, parts, unknown, shared)


def _device_score(dev: Entity, snapshot: Snapshot, alerts: Sequence[Alert], w: Mapping[str, float],
                  shared: _Shared | None = None) -> Score:
    m = dev.metrics
    if not snapshot.is_unknown(dev, "device.connected") and m.get("device.connected", 1.0) < 0.5:
        return Score(dev.key, dev.name, 0.0, [("device.connected", 100.0, "disconnected")], [])
    parts: list[_Part] = []
    unknown: list[str] = []
    if snapshot.is_unknown(dev, "device.connected"):
        unknown.append("device.connected")
    elif "device.connected" in m:
        parts.append(("device.connected", w["device.connected"], 0.0, "connected", ()))
    for metric, start in (("device.cpu", w["device.cpu_from"]), ("device.memory", w["device.memory_from"])):
        if snapshot.is_unknown(dev, metric):
            unknown.append(metric)
        elif metric in m:
            value = m[metric]
            badness = (value - start) / (100.0 - start) if start < 100 else 0.0
            parts.append((metric, w[metric], badness, f"{metric.split('.')[1]} {value:.0f}%", ()))
    cost, detail = _alert_cost(alerts, w)
    parts.append(("device.alerts", w["device.alerts"], cost, detail, ()))
    return _finish(dev.key, dev.name, parts, unknown, shared)


def compute_health(snapshot: Snapshot, alerts: Sequence[Alert],
                   weights: Mapping[str, float] | None = None) -> HealthResult:
    """Score every site and device in ``snapshot``; only ``firing`` alerts cost points."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    firing = [a for a in alerts if a.state == "firing"]
    by_site: dict[str, list[Alert]] = {}
    by_device: dict[str, list[Alert]] = {}
    for a in firing:
        if a.labels.get("site_id"):
            by_site.setdefault(a.labels["site_id"], []).append(a)
        if a.labels.get("device_id"):
            by_device.setdefault(a.labels["device_id"], []).append(a)
    result = HealthResult()
    shared = _Shared()
    for e in snapshot.entities:
        if e.kind == "site":
            result.sites[e.key] = _site_score(e, snapshot, by_site.get(e.labels.get("site_id", ""), []), w, shared)
        elif e.kind == "device":
            result.devices[e.key] = _device_score(e, snapshot, by_device.get(e.labels.get("device_id", ""), []), w,
                                                  shared)
    return result


def health_metrics(health: HealthResult) -> dict[str, dict[str, float]]:
    """The scores as history for ``Store.write_metrics``: ``site.health`` and ``device.health``.
    Unknown scores are not written (a gap, not a zero)."""
    return {
        "site.health": {k: s.score for k, s in health.sites.items() if s.score is not None},
        "device.health": {k: s.score for k, s in health.devices.items() if s.score is not None},
    }
