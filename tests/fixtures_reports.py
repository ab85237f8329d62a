"""Synthetic snapshots and alerts for the health, report and digest tests (no network needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mistwatch.model import Alert, Entity, Snapshot

ORG_ID = "org-1"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def site_entity(sid: str, name: str, *, total: int = 4, up: int = 4, clients: float = 50,
                sles: dict[str, float] | None = None, alarms: tuple[int, int, int] = (0, 0, 0),
                unknown: frozenset[str] = frozenset()) -> Entity:
    n_open, crit, major = alarms
    metrics = {
        "site.devices_total": float(total), "site.devices_connected": float(up),
        "site.ap_total": float(total), "site.ap_connected": float(up), "site.clients": float(clients),
        "site.alarms_open": float(n_open), "site.alarms_critical": float(crit), "site.alarms_major": float(major),
    }
    for k, v in (sles if sles is not None else {"wifi.coverage": 0.95, "wifi.capacity": 0.9}).items():
        metrics[f"sle.{k}"] = v
    labels = {"org_id": ORG_ID, "site_id": sid, "site_name": name, "timezone": "Europe/Dublin"}
    return Entity(f"site:{sid}", "site", labels, metrics, unknown)


def device_entity(did: str, name: str, sid: str, site_name: str, *, connected: bool = True,
                  cpu: float = 10, memory: float = 40, dtype: str = "ap") -> Entity:
    labels = {"org_id": ORG_ID, "site_id": sid, "site_name": site_name, "device_id": did,
              "device_name": name, "device_type": dtype, "model": "AP45", "mac": did[-12:]}
    metrics = {"device.connected": 1.0 if connected else 0.0, "device.clients": 5.0}
    if connected:
        metrics.update({"device.cpu": cpu, "device.memory": memory})
    return Entity(f"device:{did}", "device", labels, metrics)


def alert(rule_id: str, severity: str, sid: str, site_name: str, *, device: str | None = None,
          state: str = "firing", since: datetime = T0, summary: str = "", recommendation: str = "") -> Alert:
    labels = {"org_id": ORG_ID, "site_id": sid, "site_name": site_name}
    if device:
        labels.update({"device_id": device, "device_name": device.upper()})
    key = f"{rule_id}|{sid}|{device or ''}"
    return Alert(key=key, rule_id=rule_id, labels=labels, state=state, severity=severity, value=1.0,
                 threshold=0.5, summary=summary or f"{rule_id} at {site_name}",
                 recommendation=recommendation, firing_since=since if state == "firing" else None,
                 pending_since=since)


def synthetic_org(n_sites: int = 3, devices_per_site: int = 3, *, at: datetime = T0,
                  names: list[str] | None = None, degrade: float = 0.0) -> Snapshot:
    """An org of ``n_sites``; site 0 is the worst (one device down, low coverage, a critical alarm).
    ``degrade`` lowers every SLE by that much, to make day-over-day changes."""
    entities = [Entity(f"org:{ORG_ID}", "org", {"org_id": ORG_ID, "org_name": "Acme"},
                       {"org.sites": float(n_sites)})]
    for i in range(n_sites):
        sid = f"s{i:04d}"
        name = (names[i] if names and i < len(names) else f"Site {i:04d}")
        down = 1 if i == 0 else 0
        sles = {"wifi.coverage": (0.7 if i == 0 else 0.97) - degrade, "wifi.capacity": 0.92 - degrade,
                "wired.switch_health": 0.99}
        alarms = (2, 1, 0) if i == 0 else (0, 0, 0)
        entities.append(site_entity(sid, name, total=devices_per_site, up=devices_per_site - down,
                                    clients=40 + i, sles=sles, alarms=alarms))
        for d in range(devices_per_site):
            did = f"d{i:04d}{d:02d}aabbccddeeff"
            entities.append(device_entity(did, f"{name}-AP{d}", sid, name, connected=not (down and d == 0)))
    return Snapshot(taken_at=at, entities=entities, api_calls=9)


@pytest.fixture
def synth_org():
    return synthetic_org


__all__ = ["ORG_ID", "T0", "alert", "device_entity", "site_entity", "synthetic_org", "timedelta"]
