"""Human names, units and local times for the report: what a reader sees instead of metric ids
(``sle.wifi.ap_availability``) and ISO timestamps."""

from __future__ import annotations

import math
from datetime import datetime, timezone, tzinfo
from functools import lru_cache

#: Mist's SLE names as the Mist portal shows them; anything else is spelled out by ``metric_label``.
SLE_NAMES = {
    "wifi.coverage": "Wi-Fi coverage", "wifi.capacity": "Wi-Fi capacity",
    "wifi.time_to_connect": "Wi-Fi time to connect", "wifi.successful_connect": "Wi-Fi successful connects",
    "wifi.roaming": "Wi-Fi roaming", "wifi.throughput": "Wi-Fi throughput",
    "wifi.ap_health": "Wi-Fi AP health", "wifi.ap_availability": "Wi-Fi AP availability",
    "wired.switch_health": "Wired switch health", "wired.switch_throughput": "Wired switch throughput",
    "wired.successful_connect": "Wired successful connects", "wired.time_to_connect": "Wired time to connect",
    "wan.gateway_health": "WAN gateway health", "wan.link_health": "WAN link health",
    "wan.wan_link_health": "WAN link health", "wired.switch_bandwidth": "Wired switch bandwidth",
    "wan.application_health": "WAN application health",
    "wan.gateway_bandwidth": "WAN gateway bandwidth", "wired.switch_stc": "Wired successful connects",
}
COMPONENT_NAMES = {"availability": "Devices connected", "mist_alarms": "Mist alarms", "alerts": "Open alerts",
                   "device.cpu": "CPU", "device.memory": "Memory", "device.alerts": "Open alerts",
                   "device.connected": "Connected"}
_WORDS = {"wifi": "Wi-Fi", "wan": "WAN", "ap": "AP", "aps": "APs", "sle": "SLE", "cpu": "CPU", "poe": "PoE"}


def metric_label(name: str) -> str:
    """``sle.wifi.ap_availability`` -> ``Wi-Fi AP availability``; ``wifi.coverage`` (an SLE name as
    the report keeps it) -> ``Wi-Fi coverage``; health components -> their plain names."""
    if name in COMPONENT_NAMES:
        return COMPONENT_NAMES[name]
    short = name.removeprefix("sle.")
    if short in SLE_NAMES:
        return SLE_NAMES[short]
    words = short.replace(".", " ").replace("_", " ").split()
    text = " ".join(_WORDS.get(w.lower(), w) for w in words)
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=512)
def zone(name: str | None) -> tzinfo:
    """The site's IANA time zone (Mist's site ``timezone``); UTC when it is missing or unknown."""
    if name:
        try:
            from zoneinfo import ZoneInfo

            return ZoneInfo(name)
        except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
            pass
    return timezone.utc


def local_time(iso: str | None, zone_name: str | None = None, *, with_date: bool = True) -> str:
    """An ISO time of the report (``2026-12-04T09:30:00Z``) in the site's zone, short, with the zone
    named so no reader has to guess: ``Fri 04 Dec 10:30 CET``."""
    if not iso:
        return ""
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    local = when.astimezone(zone(zone_name))
    name = local.tzname() or "UTC"
    return f"{local:%a %d %b %H:%M} {name}" if with_date else f"{local:%H:%M} {name}"


def nice_ceiling(value: float | None) -> float:
    """The top of an honest axis for counts: 1, 2 or 5 times a power of ten, at or above ``value``
    (so 64 clients draw on 0-100, and a dip to 63 stays a dip)."""
    if value is None or value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)
