"""The built-in Mist collector: org, sites and devices of one Mist org, from org-level endpoints.

The call plan (Mist notes, README section 2.0) keeps a cycle at about ten calls whatever the number
of sites: ``stats/sites``, ``stats/devices?type=all&fields=...``, ``insights/sites-sle`` for wifi, wired and wan,
``alarms/search?status=open``, ``devices/events/search`` since the last poll, and for orgs with
gateways ``stats/vpn_peers/search`` and ``stats/bgp_peers/search``, each with ``limit=1000`` plus extra
pages for big orgs. ``/self`` is asked once per token per day (the answer is kept in the store).
``orgs/{id}/sites`` is only asked (and then cached for ``sites_refresh``) when ``stats/sites`` does not
carry the site names. Metric and label names are those of ``docs/metrics.md``, which also holds the
audit of every query parameter against the Mist OpenAPI spec.

Mist semantics this module keeps (docs/metrics.md): alarm severities ``critical``/``warn``/``info``
mapped by :data:`ALARM_SEVERITY`; device ``status`` is free text, and only ``disconnected`` (or a busy
device that stopped reporting) is down; claimed devices that never connected are inventory.

The hourly budget (5,000 calls per token, reset at the top of the clock hour) is counted in the
collector's persistent state, by token fingerprint: a 429 without ``Retry-After`` stops the cycle and
no call is made until the hour turns; when the hour's projected use would run out, the optional
endpoints (WAN paths, events, alarms) are skipped before those that say whether devices are up.

A failed endpoint (after the client's retries) becomes a :class:`CollectorError` covering exactly what
it feeds, so those metrics are *unknown* this cycle; everything else is still returned.
"""

from __future__ import annotations

import gc
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from mistwatch.errors import CollectionFailed
from mistwatch.hookspecs import CollectContext, Collector
from mistwatch.model import CollectorError, Entity, Event, FrozenMap, Snapshot

NAME = "mist"
#: Guards the per-token records of the collector state, which the org threads share.
_TOKENS_LOCK = threading.Lock()
#: Mist's documented API budget per token and clock hour.
CALLS_PER_HOUR = 5000
#: First run (no cursor): look this far back for device events.
FIRST_EVENT_WINDOW = 3600
#: Never ask for more than this much event history in one cycle, however long we were away.
MAX_EVENT_WINDOW = 24 * 3600
#: Each device-event window starts this long before the previous one ended: Mist indexes some events
#: late (a device that buffered them while it was offline sends them on reconnect). Events seen in the
#: overlap are recognised by id and not reported twice.
EVENT_OVERLAP = 600
#: Open alarms older than this are not asked for (the API default window is one day).
ALARM_WINDOW = "7d"
#: Window of the WAN path and BGP peer searches: rows not updated for an hour are of gateways gone.
PEER_WINDOW = "1h"
SLE_KINDS = ("wifi", "wired", "wan")
#: /self (token check) is asked again after this long, per token.
SELF_CHECK_EVERY = 24 * 3600
#: A device Mist reports ``upgrading`` or ``restarting`` is busy, not down, while its last_seen is this
#: recent: an AP reboots in about 5 minutes, a switch or SRX upgrade reboot can take 15-20.
BUSY_REPORTING_WINDOW = 20 * 60

#: Mist alarm severity -> ours. Mist's alarm definitions (``/const/alarm_defs``) use exactly these
#: three; ``warn`` carries gateway_down, switch_down, vpn_peer_down, PSU and optics alarms, so it is
#: an alert-worthy ``major``, not a ``minor`` to be filtered out. A rule can override per alarm
#: ``type`` or ``group`` (``severity_by_type``, ``severity_by_group``). docs/metrics.md has the table.
ALARM_SEVERITY = {"critical": "critical", "warn": "major", "info": "info"}
#: A severity Mist does not document: kept (never dropped) at this level, raw value in ``mist_severity``.
UNKNOWN_ALARM_SEVERITY = "minor"

#: The stats/devices row fields this module reads, asked for by name (``fields=``) on every page. The
#: spec (tag "Orgs Stats - Devices"): "By default, the API call only returns a subset of the available
#: fields. Additional fields can be requested by adding the query parameter `fields=` ..."; which fields
#: make that subset is not documented, so every field read is named, identity and state ones too.
#: Not ``fields=*``: that brings what is never read (every AP's client list, LLDP, port and radio
#: counters), payload and parse time for nothing. tests/test_collector.py checks this list against the
#: fields the collector reads.
DEVICE_FIELDS = ("cluster_stat", "config_status", "cpu_stat", "cpu_util", "fwupdate", "hostname", "id",
                 "if2_stat", "if_stat", "is_ha", "last_seen", "mac", "mem_total_kb", "mem_used_kb", "memory_stat",
                 "model", "module2_stat", "module_stat", "name", "num_clients", "power_constrained", "radio_stat",
                 "site_id", "status", "type", "uptime", "version")
#: stats/devices ``status`` is a free string: only these mean what they say; any other is "unknown".
STATUS_CONNECTED = "connected"
STATUS_GONE = frozenset({"disconnected"})
STATUS_BUSY = frozenset({"upgrading", "restarting"})
#: fwupdate.status values (spec enum: inprogress, failed, upgraded, success, scheduled, error).
FWUPDATE_FAILED = frozenset({"failed", "error"})
FWUPDATE_IN_PROGRESS = "inprogress"
#: module_stat part status that means "slot empty", not "failed" (a one-PSU switch has an empty slot).
PART_ABSENT = frozenset({"absent", "not present", "not-present", "empty", "not installed"})
#: Endpoints that may be skipped when the hour's budget is short, first skipped first. Device and
#: site state (stats/sites, stats/devices) and the SLEs are never skipped for budget.
OPTIONAL_ENDPOINTS = ("stats/bgp_peers/search", "stats/vpn_peers/search", "devices/events/search",
                      "alarms/search?status=open")

_SITE_COUNTERS = (("ap", "num_ap"), ("switch", "num_switch"), ("gateway", "num_gateway"))
# Metric names are built once, not per entity: an f-string makes a new str object each time, and
# 100,000 entities would each hold their own copies of the same names.
_KIND_METRICS = {kind: (f"site.{kind}_total", f"site.{kind}_connected") for kind, _ in _SITE_COUNTERS}
_RADIO_BANDS = (("band_24", "device.radio_util_24", "device.noise_floor_24"),
                ("band_5", "device.radio_util_5", "device.noise_floor_5"),
                ("band_6", "device.radio_util_6", "device.noise_floor_6"))
_VPN_METRICS = tuple((source, f"vpn_peer.{source}") for source in ("latency", "jitter", "loss", "mos"))
_SLE_CLIENTS = {sle: f"site.sle_{sle}_clients" for sle in ("wifi", "wired", "wan")}

METRICS: dict[str, str] = {
    "device.connected": "1 when connected (or upgrading/restarting and still reporting), 0 when gone; "
                        "absent for an unknown status or a device that never connected",
    "device.upgrading": "1 while Mist reports the device upgrading or restarting (absent otherwise)",
    "device.fwupdate_failed": "1 when the last firmware update failed (fwupdate.status failed/error) and Mist "
                              "will not retry it (will_retry not true), else 0",
    "device.upgrade_age": "seconds since Mist timestamped the firmware update in progress (fwupdate.status "
                          "inprogress with a timestamp); absent otherwise",
    "device.status_unknown": "1 when stats/devices status is a string mistwatch does not know (label status)",
    "device.never_connected": "1 for a claimed device that never connected (no last_seen, no uptime)",
    "device.uptime": "seconds since the device booted (a drop means a reboot)",
    "device.last_seen_age": "seconds between the device's last_seen and collection time",
    "device.cpu": "CPU use, percent (AP cpu_util; switch/gateway 100 - cpu_stat.idle)",
    "device.memory": "memory use, percent (AP mem_used_kb/mem_total_kb; switch/gateway memory_stat.usage)",
    "device.clients": "wireless clients on the AP",
    "device.config_failed": "1 when config_status reports a failure, else 0 (switches, gateways)",
    "device.wan_links": "gateway WAN ports (if_stat port_usage wan)",
    "device.wan_links_up": "gateway WAN ports up",
    "device.wan_links_down": "gateway WAN ports down (names in label wan_links_down)",
    "device.psus": "power supplies installed (module_stat psus, empty slots excluded)",
    "device.psus_failed": "power supplies not ok",
    "device.fans_failed": "fans not ok",
    "device.temperature_max": "highest chassis temperature sensor, Celsius",
    "device.temperatures_alarm": "temperature sensors whose status is not ok",
    "device.ha": "1 when the gateway is an HA cluster (is_ha), else 0",
    "device.power_constrained": "1 when the AP reports power_constrained (PoE budget too low); absent otherwise",
    "site.ap_total": "APs of the site (connected or down; never-connected and unknown-status excluded)",
    "site.ap_connected": "APs connected (upgrading/restarting APs that still report count as connected)",
    "site.switch_total": "switches of the site",
    "site.switch_connected": "switches connected",
    "site.gateway_total": "gateways of the site",
    "site.gateway_connected": "gateways connected",
    "site.devices_total": "APs + switches + gateways",
    "site.devices_connected": "connected APs + switches + gateways",
    "site.devices_disconnected": "devices_total - devices_connected",
    "site.devices_upgrading": "devices Mist reports upgrading or restarting",
    "site.devices_not_connected_yet": "claimed devices that never connected (inventory, not outages)",
    "site.devices_status_unknown": "devices with a status string mistwatch does not know",
    "site.ap_connected_ratio": "connected APs / APs, 0..1 (absent when the site has no AP)",
    "site.clients": "wireless clients now (stats/sites num_clients)",
    "site.alarms_open": "open Mist alarms at the site (all groups)",
    "site.alarms_critical": "open Mist alarms of Mist severity critical",
    "site.alarms_major": "open Mist alarms of Mist severity warn (mistwatch major)",
    "site.marvis_actions_open": "open Marvis actions at the site (alarms of group marvis)",
    "org.sites": "sites in the org",
    "org.devices": "devices assigned to sites",
    "org.devices_connected": "connected devices",
    "org.clients": "wireless clients in the org",
    "vpn_peer.up": "1 when the WAN path (VPN peer) is up, else 0",
    "vpn_peer.active": "1 when the path's interface is the active one (is_active), else 0",
    "vpn_peer.latency": "WAN path latency, ms",
    "vpn_peer.jitter": "WAN path jitter, ms",
    "vpn_peer.loss": "WAN path packet loss, percent (0..100)",
    "vpn_peer.mos": "WAN path Mean Opinion Score, 0..5",
    "bgp_peer.up": "1 when the BGP session is established, else 0",
    "bgp_peer.rx_routes": "routes received from the BGP neighbor",
}
for _band in ("24", "5", "6"):
    METRICS[f"device.radio_util_{_band}"] = f"AP radio utilisation in the {_band} GHz band (util_all), percent"
    METRICS[f"device.noise_floor_{_band}"] = f"AP radio noise floor in the {_band} GHz band, dBm"

#: Mist's sites-sle result keys -> our stable metric names, v1 and current names alike. Where both
#: come in one row, the current (``-v2``) name wins. Keys not listed are still read (``-`` -> ``_``,
#: a ``-vN`` suffix dropped), so a new SLE appears as it comes.
SLE_API_NAMES: dict[str, dict[str, str]] = {
    "wifi": {"coverage": "coverage", "capacity": "capacity", "time-to-connect": "time_to_connect",
             "successful-connect": "successful_connect", "roaming": "roaming", "throughput": "throughput",
             "ap-health": "ap_health", "ap-availability": "ap_availability"},
    "wired": {"switch-health": "switch_health", "switch-health-v2": "switch_health",
              "switch-throughput": "switch_throughput", "switch-throughput-v2": "switch_throughput",
              "switch-bandwidth": "switch_bandwidth", "switch_stc": "switch_stc", "switch-stc": "switch_stc"},
    "wan": {"gateway-health": "gateway_health", "gateway-health-v2": "gateway_health",
            "wan-link-health": "wan_link_health", "wan-link-health-v2": "wan_link_health",
            "application_health": "application_health", "application-health": "application_health",
            "gateway-bandwidth": "gateway_bandwidth"},
}
#: Our SLE metric names per kind (the catalogue; values from other keys appear too).
SLE_METRICS: dict[str, tuple[str, ...]] = {
    kind: tuple(dict.fromkeys(names.values())) for kind, names in SLE_API_NAMES.items()}
for _sle, _names in SLE_METRICS.items():
    for _name in _names:
        METRICS[f"sle.{_sle}.{_name}"] = f"{_sle} SLE {_name.replace('_', ' ')}: share of good user-minutes, 0..1"
    METRICS[f"site.sle_{_sle}_clients"] = (f"clients the {_sle} SLE is computed over (num_clients, else num_users); "
                                      "rules guard on it like the Wi-Fi rules on site.clients")

#: The portal's page kind per device type (``#!ap/detail/<device_id>/<site_id>``).
_DEVICE_PAGES = {"ap": "ap", "switch": "switch", "gateway": "gateway"}


def portal_base(settings: Mapping[str, Any], base_url: str) -> str | None:
    """The org's home in the Mist portal, which entity links extend: the configured ``portal_url``,
    else the cloud's portal; None when neither is known (no links then)."""
    from mistwatch.plugins.mist.client import portal_root

    root = str(settings.get("portal_url") or "").rstrip("/") or portal_root(base_url)
    return f"{root}/admin/?org_id={quote(str(settings['org_id']))}" if root else None


def settings_schema() -> dict[str, Any]:
    """JSON Schema of the ``mist:`` section of config.yaml."""
    from mistwatch.plugins.mist.client import CLOUDS
    from mistwatch.plugins.mist.orgs import orgs_schema

    return {
        "type": "object",
        "description": "Juniper Mist API access: one org (token, org_id, cloud or base_url), or several (orgs).",
        "additionalProperties": False,
        "x-no-defaults-with": ["orgs"],
        "anyOf": [{"required": ["orgs"]},
                  {"required": ["token", "org_id", "cloud"]}, {"required": ["token", "org_id", "base_url"]}],
        "properties": {
            "orgs": orgs_schema(),
            "cloud": {"type": "string", "enum": sorted(CLOUDS),
                      "description": "regional cloud: global01..05, emea01..04, apac01..03, or us, eu, gc1..."},
            "base_url": {"type": "string", "format": "uri", "pattern": "^https?://",
                         "description": "API host root, e.g. https://api.eu.mist.com (wins over cloud)"},
            "portal_url": {"type": "string", "pattern": "^https://[^\\s/]+$",
                           "description": "the Mist portal alerts link to (default: the cloud's, e.g. "
                                          "https://manage.eu.mist.com for api.eu.mist.com)"},
            "token": {"type": "string", "minLength": 1, "default": "${MIST_API_TOKEN}",
                      "description": "API token (an org token with the read role is enough)"},
            "org_id": {"type": "string", "minLength": 1, "default": "${MIST_ORG_ID}"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600,
                        "description": "read timeout per request, seconds (default 30)"},
            "page_limit": {"type": "integer", "minimum": 1, "maximum": 1000,
                           "description": "items per page (default 1000, the API maximum)"},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 10,
                            "description": "retries per request after the first attempt (default 4)"},
            "verify_tls": {"type": "boolean", "description": "verify the server certificate (default true)"},
            "sites_refresh": {"type": "integer", "minimum": 0,
                              "description": "seconds to reuse the site list when it is needed (default 3600)"},
            "webhook_secret": {"type": "string", "minLength": 16,
                               "x-message": "must be at least 16 characters (the secret of the Mist webhook)",
                               "description": "secret of the Mist webhook pointed at the daemon's /webhooks/mist "
                                              "(X-Mist-Signature-v2); without it webhooks are refused"},
            "hourly_budget": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                              "description": "API calls per clock hour this token may spend (default 5000, "
                                             "Mist's limit; lower it when other tools share the token)"},
        },
    }


# ------------------------------------------------------------------------------------------ parsing

def epoch(value: Any) -> float | None:
    """Epoch seconds from seconds or milliseconds (int, float or numeric string); None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number / 1000.0 if number > 1e11 else number  # 1e11 s is the year 5138; ms since 1973


#: float(n) of small whole numbers, shared: most values are counts, CPU percents or client numbers,
#: and one float object per value of 70,000 entities would cost 24 bytes each time.
_SMALL_FLOATS = tuple(float(n) for n in range(1024))
_NEGATIVE_FLOATS = tuple(float(-n) for n in range(129))  # noise floors, dBm


def _num(value: Any) -> float | None:
    """A finite number from a JSON value (numbers, numeric strings); None otherwise. Hot path: 500k calls."""
    kind = type(value)
    if kind is int:
        if 0 <= value < 1024:
            return _SMALL_FLOATS[value]
        return _NEGATIVE_FLOATS[-value] if -128 <= value < 0 else float(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool or kind is dict or kind is list:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(n: int) -> float:
    """A small count as a shared float object (60,000 devices would otherwise each hold their own)."""
    return _SMALL_FLOATS[n] if 0 <= n < 1024 else float(n)


class _Interner(dict):
    """Shares equal label strings (org id, site ids, models, versions) across 60k entities."""

    def __missing__(self, key: str) -> str:
        self[key] = key
        return key


def _text(value: Any) -> str | None:
    """A non-empty label string from a JSON scalar; None for null, empty, objects and arrays."""
    if type(value) is str:
        return value or None
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value)


def device_state(row: Mapping[str, Any], now_ts: float) -> str:
    """What a stats/devices row says about the device: ``connected``, ``gone``, ``busy`` (upgrading or
    restarting and still reporting), ``never`` (claimed, never connected) or ``unknown``.

    ``status`` is a free string in the spec; only a device that is really gone counts as down."""
    status = row.get("status")
    last_seen = epoch(row.get("last_seen"))
    uptime = _num(row.get("uptime"))
    if type(status) is not str:
        return "unknown"  # no status at all: nothing to say, neither up nor down
    if status != STATUS_CONNECTED and last_seen is None and not uptime:
        return "never"  # no last_seen and no uptime: it was claimed, never came up
    if status == STATUS_CONNECTED:
        return "connected"
    if status in STATUS_GONE:
        return "gone"
    if status in STATUS_BUSY:
        if last_seen is not None and now_ts - last_seen <= BUSY_REPORTING_WINDOW:
            return "busy"
        return "gone"  # upgrading, but silent for longer than a reboot takes
    return "unknown"


def device_metrics(row: Mapping[str, Any], now_ts: float, state: str | None = None) -> dict[str, float]:
    """The device.* metrics of one stats/devices row; a missing field yields no metric."""
    metrics: dict[str, float] = {}
    get = row.get
    state = state or device_state(row, now_ts)
    if state == "never":
        metrics["device.never_connected"] = 1.0
    elif state == "unknown":
        if type(get("status")) is str:
            metrics["device.status_unknown"] = 1.0
    else:
        metrics["device.connected"] = 0.0 if state == "gone" else 1.0
    # Flags that are almost always off are only written when on: a 10-key dict is half the size of an
    # 11-key one, for 40,000 APs. Their absence is "off", as read from a row that was there.
    if get("status") in STATUS_BUSY:
        metrics["device.upgrading"] = 1.0
    uptime = _num(get("uptime"))
    if uptime is not None:
        metrics["device.uptime"] = uptime
    last_seen = epoch(get("last_seen"))
    if last_seen is not None:
        metrics["device.last_seen_age"] = max(0.0, now_ts - last_seen)
    fwupdate = get("fwupdate")
    if isinstance(fwupdate, dict) and type(fwupdate.get("status")) is str:
        fw_status = fwupdate["status"]
        # A failure Mist will retry is not final: it pages only once Mist gives up (will_retry false).
        failed = fw_status in FWUPDATE_FAILED and fwupdate.get("will_retry") is not True
        metrics["device.fwupdate_failed"] = 1.0 if failed else 0.0
        if fw_status == FWUPDATE_IN_PROGRESS:
            # Mist's own clock of the upgrade: a restarted (or new) mistwatch need not watch it for an hour.
            since = epoch(fwupdate.get("timestamp"))
            if since is not None:
                metrics["device.upgrade_age"] = max(0.0, now_ts - since)
    if get("type") == "ap":
        cpu = _num(get("cpu_util"))
        used, total = _num(get("mem_used_kb")), _num(get("mem_total_kb"))
        memory = used * 100.0 / total if used is not None and total else None
        clients = _num(get("num_clients"))
        if clients is not None:
            metrics["device.clients"] = clients
        if get("power_constrained") is True:
            metrics["device.power_constrained"] = 1.0
        radios = get("radio_stat")
        if isinstance(radios, dict):
            _radio_metrics(radios, metrics)
    else:
        cpu_stat, memory_stat = get("cpu_stat"), get("memory_stat")
        idle = _num(cpu_stat.get("idle")) if isinstance(cpu_stat, dict) else None
        cpu = 100.0 - idle if idle is not None else None
        memory = _num(memory_stat.get("usage")) if isinstance(memory_stat, dict) else None
        config_status = get("config_status")
        if type(config_status) is str and config_status:
            lowered = config_status.lower()
            metrics["device.config_failed"] = 1.0 if ("fail" in lowered or "error" in lowered) else 0.0
        modules = device_modules(row)
        if modules is not None:
            _chassis_metrics(modules, metrics)
        if get("type") == "gateway":
            is_ha = get("is_ha")
            if type(is_ha) is bool:
                metrics["device.ha"] = 1.0 if is_ha else 0.0
            links = gateway_wan_links(row)
            if links is not None and links:
                up = sum(1 for _, is_up in links if is_up)
                metrics["device.wan_links"] = _count(len(links))
                metrics["device.wan_links_up"] = _count(up)
                metrics["device.wan_links_down"] = _count(len(links) - up)
    if cpu is not None:
        metrics["device.cpu"] = cpu
    if memory is not None:
        metrics["device.memory"] = memory
    return metrics


def _radio_metrics(radios: Mapping[str, Any], metrics: dict[str, float]) -> None:
    for key, util_name, noise_name in _RADIO_BANDS:
        radio = radios.get(key)
        if not isinstance(radio, dict):
            continue
        util = _num(radio.get("util_all"))
        if util is not None:
            metrics[util_name] = util
        noise = _num(radio.get("noise_floor"))
        if noise is not None:
            metrics[noise_name] = noise


def _parts(modules: list, kind: str) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(name, status lowercased, item) of the PSUs, fans or temperature sensors of every module."""
    for module in modules:
        if not isinstance(module, dict):
            continue
        items = module.get(kind)
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict):
                yield str(item.get("name") or kind), str(item.get("status") or "").strip().lower(), item


def _chassis_metrics(modules: list, metrics: dict[str, float]) -> None:
    """PSU, fan and temperature metrics of a switch or gateway (virtual-chassis members included)."""
    psus = [status for _, status, _ in _parts(modules, "psus") if status not in PART_ABSENT]
    if psus:
        metrics["device.psus"] = _count(len(psus))
        metrics["device.psus_failed"] = _count(sum(1 for s in psus if s != "ok"))
    fans = [status for _, status, _ in _parts(modules, "fans") if status not in PART_ABSENT]
    if fans:
        metrics["device.fans_failed"] = _count(sum(1 for s in fans if s != "ok"))
    temps = list(_parts(modules, "temperatures"))
    celsius = [c for c in (_num(item.get("celsius")) for _, _, item in temps) if c is not None]
    if celsius:
        metrics["device.temperature_max"] = max(celsius)
    statuses = [s for _, s, _ in temps if s]
    if statuses:
        metrics["device.temperatures_alarm"] = _count(sum(1 for s in statuses if s != "ok"))


def chassis_faults(modules: Any) -> str:
    """"Power Supply 1 failed, Fan 2 absent"-style text of the parts not ok (empty slots left out)."""
    if not isinstance(modules, list):
        return ""
    faults = [f"{name} {status or 'no status'}" for kind in ("psus", "fans", "temperatures")
              for name, status, _ in _parts(modules, kind)
              if status != "ok" and status not in PART_ABSENT and (status or kind != "temperatures")]
    return ", ".join(faults)[:300]


def device_modules(row: Mapping[str, Any]) -> list | None:
    """The chassis modules of a switch or gateway: ``module_stat``, and for the second node of an HA
    gateway cluster ``module2_stat`` (spec ``stats_gateway``: node1's stats come as ``*2_stat``), its
    items' part names prefixed ``node1``. None when the row has neither."""
    modules, second = row.get("module_stat"), row.get("module2_stat")
    if not isinstance(second, list):
        return modules if isinstance(modules, list) else None
    node1 = [{**module, **{kind: [{**item, "name": f"node1 {item.get('name') or kind}"}
                                  for item in module[kind] if isinstance(item, dict)]
                           for kind in ("psus", "fans", "temperatures") if isinstance(module.get(kind), list)}}
             for module in second if isinstance(module, dict)]
    return (modules if isinstance(modules, list) else []) + node1


def gateway_wan_links(row: Mapping[str, Any]) -> list[tuple[str, bool]] | None:
    """(WAN name, up) of a gateway's WAN ports, the HA cluster's second node's (``if2_stat``) named
    ``node1 <name>``; None when the row has no interface stats."""
    if_stat, second = row.get("if_stat"), row.get("if2_stat")
    if not isinstance(if_stat, dict) and not isinstance(second, dict):
        return None
    links = wan_links(if_stat) if isinstance(if_stat, dict) else []
    if isinstance(second, dict):
        links += [(f"node1 {name}", up) for name, up in wan_links(second)]
    return links


def wan_links(if_stat: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(WAN name, up) of each gateway WAN port in ``if_stat`` (``port_usage: wan``)."""
    links = []
    for key, port in if_stat.items():
        if not isinstance(port, dict) or port.get("port_usage") != "wan":
            continue
        name = _text(port.get("wan_name")) or _text(port.get("port_id")) or str(key)
        links.append((name, port.get("up") is True))
    return links


def site_labels(row: Mapping[str, Any], site_id: str, org_id: str, names: dict[str, str]) -> dict[str, str]:
    """The documented site labels from a sites or stats/sites row (strings shared through ``names``)."""
    labels = {"org_id": org_id, "site_id": names[site_id]}
    for label, source in (("site_name", "name"), ("timezone", "timezone"), ("country_code", "country_code")):
        value = _text(row.get(source))
        if value is not None:
            labels[label] = names[value]
    return labels


def site_counter_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """site.* device counters of one stats/sites row (Mist's own counts; replaced by the counts from
    stats/devices when that endpoint answered, see :meth:`MistCollector._device_counters`)."""
    metrics: dict[str, float] = {}
    total_sum = connected_sum = None
    for kind, field_name in _SITE_COUNTERS:
        total_name, connected_name = _KIND_METRICS[kind]
        total = _num(row.get(field_name))
        connected = _num(row.get(f"{field_name}_connected"))
        if total is not None:
            metrics[total_name] = total
            total_sum = (total_sum or 0.0) + total
        if connected is not None:
            metrics[connected_name] = connected
            connected_sum = (connected_sum or 0.0) + connected
    if total_sum is None:
        total_sum = _num(row.get("num_devices"))
    if connected_sum is None:
        connected_sum = _num(row.get("num_devices_connected"))
    _totals(metrics, total_sum, connected_sum)
    return metrics


def _totals(metrics: dict[str, float], total: float | None, connected: float | None) -> None:
    if total is not None:
        metrics["site.devices_total"] = total
    if connected is not None:
        metrics["site.devices_connected"] = connected
    if total is not None and connected is not None:
        metrics["site.devices_disconnected"] = total - connected
    aps, aps_up = metrics.get("site.ap_total"), metrics.get("site.ap_connected")
    if aps and aps_up is not None:
        metrics["site.ap_connected_ratio"] = aps_up / aps
    else:
        metrics.pop("site.ap_connected_ratio", None)


_SLE_NAMES: dict[tuple[str, str], tuple[str, int]] = {}
_VERSION_SUFFIX = re.compile(r"[-_]v(\d+)$")


def _sle_name(sle: str, key: str) -> tuple[str, int]:
    """(metric name, version) of a sites-sle result key; the table first, then the generic rule."""
    found = _SLE_NAMES.get((sle, key))
    if found is None:
        suffix = _VERSION_SUFFIX.search(key)
        version = int(suffix.group(1)) if suffix else 1
        base = SLE_API_NAMES.get(sle, {}).get(key)
        if base is None:
            base = (key[: suffix.start()] if suffix else key).replace("-", "_")
        found = _SLE_NAMES[(sle, key)] = (f"sle.{sle}.{base}", version)
    return found


def sle_metrics(sle: str, row: Mapping[str, Any]) -> dict[str, float]:
    """sle.<sle>.* of one sites-sle result: v1 and current key names map to one metric (the newer
    version wins), ``num_clients`` (else ``num_users``) becomes ``site.sle_<sle>_clients`` (a count, so not in
    the sle.* namespace of 0..1 ratios)."""
    metrics: dict[str, float] = {}
    versions: dict[str, int] = {}
    for key, value in row.items():
        kind = type(value)
        if kind is not float and kind is not int:  # also skips site_id and bools
            continue
        if not math.isfinite(value) or key.startswith("num_"):
            continue
        name, version = _sle_name(sle, key)
        if versions.get(name, 0) > version:
            continue
        versions[name] = version
        metrics[name] = float(value)
    clients = _num(row.get("num_clients"))
    if clients is None:
        clients = _num(row.get("num_users"))
    if clients is not None:
        metrics[_SLE_CLIENTS.get(sle) or f"site.sle_{sle}_clients"] = clients
    return metrics


def device_event_severity(row: Mapping[str, Any]) -> str:
    """Mist device events carry ``ev_type`` notice|warn; without it, judge by the type's name."""
    ev_type = str(row.get("ev_type") or "").lower()
    if ev_type in ("warn", "warning"):
        return "minor"
    if ev_type:
        return "info"
    name = str(row.get("type") or "").upper()
    return "minor" if any(word in name for word in ("DISCONNECT", "DOWN", "FAIL")) else "info"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


# ------------------------------------------------------------------------------------------ budget

def token_fingerprint(base_url: str, token: str) -> str:
    """A short one-way fingerprint naming a token (and its cloud) in the store; never the token."""
    return hashlib.sha256(f"{base_url}\n{token}".encode()).hexdigest()[:16]


def plan_optional(calls_hour: int, limit: int, cycles_left: int, essential: int,
                  optional: Iterable[tuple[str, int]]) -> list[str]:
    """The optional endpoints to skip this cycle so the hour's budget lasts.

    Each of the ``cycles_left`` cycles of this clock hour (this one included) may spend an equal share
    of what is left; the essential endpoints come first, then the optional ones in the order given
    (most wanted first) while they fit. ``optional`` is (endpoint, calls it cost last time)."""
    share = (limit - calls_hour) / max(1, cycles_left)
    spend = essential
    skipped = []
    for endpoint, cost in optional:
        if spend + cost <= share:
            spend += cost
        else:
            skipped.append(endpoint)
    return skipped


def min_interval_s(calls_per_cycle: int, limit: int) -> float | None:
    """The shortest cycle interval (seconds, whole minutes) at which ``calls_per_cycle`` fits in the
    hourly ``limit``; None when not even one cycle per hour fits."""
    if calls_per_cycle <= 0:
        return 60.0
    cycles = limit // calls_per_cycle
    if cycles < 1:
        return None
    return float(math.ceil(3600 / cycles / 60) * 60)


@dataclass
class _Budget:
    """One token's calls in the current clock hour, kept in the collector's persistent state
    (``entry``, a plain dict of JSON values) so one-shot runs and restarts add up."""

    entry: MutableMapping[str, Any]
    limit: int
    now_ts: float

    def __post_init__(self) -> None:
        hour = int(self.now_ts // 3600)
        if self.entry.get("hour") != hour:
            self.entry["hour"] = hour
            self.entry["calls"] = 0
        blocked = epoch(self.entry.get("blocked_until"))
        if blocked is not None and blocked <= self.now_ts:
            self.entry.pop("blocked_until", None)

    @property
    def calls_hour(self) -> int:
        return int(self.entry.get("calls") or 0)

    def spend(self, calls: int) -> None:
        self.entry["calls"] = self.calls_hour + calls

    @property
    def blocked_until(self) -> float | None:
        return epoch(self.entry.get("blocked_until"))

    def block_until_next_hour(self) -> float:
        # Mist resets the budget at the top of the clock hour; a minute more absorbs clock skew.
        until = (int(self.now_ts // 3600) + 1) * 3600 + 60
        self.entry["blocked_until"] = until
        return until

    def cycles_left(self) -> int:
        """Cycles still to come in this clock hour, this one included, at the interval seen last time."""
        last = epoch(self.entry.get("last_cycle_at"))
        interval = self.now_ts - last if last is not None else 0
        if not 0 < interval <= 3600:
            return 1  # first run, or runs further apart than an hour: this cycle is the hour's last
        return max(1, math.ceil(((int(self.now_ts // 3600) + 1) * 3600 - self.now_ts) / interval))


# ----------------------------------------------------------------------------------------- collector

@dataclass
class _Cycle:
    """What one collection cycle accumulates; dropped when the snapshot is built."""

    org_id: str
    now_ts: float
    names: _Interner = field(default_factory=_Interner)
    floats: dict[float, float] = field(default_factory=dict)
    sites: dict[str, dict[str, str]] = field(default_factory=dict)  # site_id -> labels
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    devices_by_mac: dict[str, Mapping[str, str]] = field(default_factory=dict)
    #: site_id -> device counters from stats/devices (None: that endpoint did not answer)
    device_counts: dict[str, dict[str, float]] | None = None
    gateways: int | None = None  # gateways in stats/devices (None: unknown)
    errors: list[CollectorError] = field(default_factory=list)
    attempted: int = 0
    failed: int = 0
    refused: list[str] = field(default_factory=list)  # 403 messages
    unreachable: int = 0  # endpoints in a row that failed without any HTTP answer
    stop_reason: str = ""  # set when asking further endpoints this cycle is pointless
    portal: str | None = None  # "https://manage.mist.com/admin/?org_id=...": entities' portal_url labels
    skip: set[str] = field(default_factory=set)  # optional endpoints skipped for the budget
    calls: dict[str, int] = field(default_factory=dict)  # endpoint -> calls it took this cycle
    budget: _Budget | None = None

    def share(self, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` with equal positive values as one float object (SLE values repeat across
        10,000 sites). Zeros, negatives and NaN are left alone: -0.0 == 0.0 but prints otherwise."""
        floats = self.floats
        for name, value in metrics.items():
            if value > 0:
                metrics[name] = floats.setdefault(value, value)
        return metrics

    def site(self, site_id: str) -> dict[str, float]:
        """The metrics dict of a site, creating the site when a source names one we had not seen."""
        metrics = self.site_metrics.get(site_id)
        if metrics is None:
            site_id = self.names[site_id]
            self.sites.setdefault(site_id, {"org_id": self.org_id, "site_id": site_id})
            metrics = self.site_metrics[site_id] = {}
        return metrics


def requests_by_endpoint(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """The client's attempts ``{(endpoint, outcome): n}`` as ``Snapshot.api_requests`` holds them."""
    out: dict[str, dict[str, int]] = {}
    for (endpoint, outcome), n in sorted(counts.items()):
        out.setdefault(endpoint, {})[outcome] = n
    return out


class MistCollector:
    """Collects one Mist org. Keeps the HTTP session and the ``/self`` check across cycles."""

    def __init__(self, *, client_factory: Callable[..., Any] | None = None) -> None:
        self._client_factory = client_factory
        self._clients: dict[tuple, Any] = {}
        self._site_list: dict[tuple, tuple[float, dict[str, dict[str, str]]]] = {}

    # ---- setup

    def _client(self, settings: Mapping[str, Any]) -> tuple[Any, tuple, str]:
        from mistwatch.plugins.mist.client import MistClient, resolve_base_url

        base_url = resolve_base_url(settings.get("cloud"), settings.get("base_url"))
        token = str(settings.get("token") or "")
        timeout = settings.get("timeout")
        options = {
            "timeout": (min(5.0, float(timeout)), float(timeout)) if timeout else (5, 30),
            "page_limit": int(settings.get("page_limit") or 1000),
            "max_retries": int(settings.get("max_retries", 4)),
            "verify": bool(settings.get("verify_tls", True)),
        }
        fingerprint = token_fingerprint(base_url, token)
        key = (base_url, str(settings.get("org_id")), fingerprint, tuple(sorted(options.items())))
        client = self._clients.get(key)
        if client is None:
            factory = self._client_factory or MistClient
            client = self._clients[key] = factory(base_url, token, **options)
        return client, key, fingerprint

    def _check_self(self, client: Any, entry: MutableMapping[str, Any], org_id: str, now_ts: float) -> str:
        """Validate the token and its rights on org_id with /self, once per token per day (the answer is
        kept in the persistent ``entry``); the org's name."""
        from mistwatch.plugins.mist.client import MistAPIError, MistAuthError, MistForbiddenError

        checked = epoch(entry.get("self_checked_at"))
        if (checked is not None and 0 <= now_ts - checked < SELF_CHECK_EVERY
                and entry.get("self_org_id") == org_id and isinstance(entry.get("org_name"), str)):
            return entry["org_name"]
        try:
            me = client.get("/api/v1/self")
        except MistAuthError as exc:
            raise CollectionFailed(str(exc)) from None
        except MistForbiddenError as exc:
            raise CollectionFailed(f"the Mist API token may not read its own privileges: {exc}") from None
        except MistAPIError as exc:
            raise CollectionFailed(f"cannot check the Mist API token at {client.base_url}: {exc}") from None
        privileges = me.get("privileges") if isinstance(me, dict) else None
        privileges = [p for p in privileges or [] if isinstance(p, dict)]
        mine = [p for p in privileges if p.get("org_id") == org_id]
        if not mine and not any(p.get("scope") == "msp" for p in privileges):
            # An MSP-scoped token reaches its orgs without listing them; anything else must name ours.
            known = sorted({f"{p.get('org_name') or p.get('name') or '?'} ({p.get('org_id')})"
                            for p in privileges if p.get("org_id")})
            raise CollectionFailed(
                f"the Mist API token has no privileges on org_id {org_id}"
                + (f"; it can access: {', '.join(known)}" if known else "; it lists no org privileges")
                + " (check mist.org_id, or use a token made in that org)")
        org_name = org_id
        for priv in mine:
            if priv.get("org_name"):
                org_name = str(priv["org_name"])
                break
            if priv.get("scope") == "org" and priv.get("name"):
                org_name = str(priv["name"])
                break
        entry.update(self_checked_at=now_ts, self_org_id=org_id, org_name=org_name)
        return org_name

    @staticmethod
    def _token_entry(state: MutableMapping[str, Any], fingerprint: str, now_ts: float) -> MutableMapping[str, Any]:
        """This token's record in the persistent state; records of tokens unused for two days go.

        Several orgs are collected at once, one thread each, into the one state: under a lock, so
        two first cycles cannot each make a ``tokens`` record and keep only the other's; and a record
        that has not finished a cycle yet (another org's, being collected now) is not stale."""
        with _TOKENS_LOCK:
            tokens = state.get("tokens")
            if not isinstance(tokens, dict):
                tokens = state["tokens"] = {}
            for other in [f for f, e in tokens.items() if f != fingerprint and isinstance(e, dict)
                          and (epoch(e.get("last_cycle_at")) or now_ts) < now_ts - 2 * 86400]:
                del tokens[other]
            entry = tokens.get(fingerprint)
            if not isinstance(entry, dict):
                entry = tokens[fingerprint] = {}
            return entry

    # ---- one cycle

    def collect(self, ctx: CollectContext) -> Snapshot:
        client = self._client(ctx.settings)[0]
        try:
            return self._collect(ctx)
        except CollectionFailed as exc:
            # the refused calls (a 401, a 429) are what /metrics should show for a failed cycle
            if not exc.api_requests:
                exc.api_requests = {NAME: requests_by_endpoint(getattr(client, "requests", {}))}
            raise

    def _collect(self, ctx: CollectContext) -> Snapshot:
        settings = ctx.settings
        org_id = str(settings["org_id"])
        client, key, fingerprint = self._client(settings)
        client.reset_calls()
        now_ts = ctx.now.timestamp()
        state = getattr(ctx, "state", None)
        entry = self._token_entry(state if state is not None else {}, fingerprint, now_ts)
        limit = int(settings.get("hourly_budget") or CALLS_PER_HOUR)
        budget = _Budget(entry, limit, now_ts)
        if budget.blocked_until is not None:
            raise CollectionFailed(
                f"Mist answered HTTP 429 (the hourly budget of {limit} calls of this token is spent); "
                f"no call is made before {_dt(budget.blocked_until):%H:%M} UTC, when the hour has turned")
        cycle = _Cycle(org_id=org_id, now_ts=now_ts, portal=portal_base(settings, key[0]),
                       budget=budget)
        last_calls = entry.get("last_calls") if isinstance(entry.get("last_calls"), dict) else {}
        essential = sum(int(n) for ep, n in last_calls.items() if ep not in OPTIONAL_ENDPOINTS) or 5
        cycle.skip = set(plan_optional(
            budget.calls_hour, limit, budget.cycles_left(), essential,
            [(ep, int(last_calls.get(ep) or 1)) for ep in reversed(OPTIONAL_ENDPOINTS)]))
        try:
            org_name = self._check_self(client, entry, org_id, now_ts)
        finally:
            budget.spend(client.calls)
        snap = Snapshot(taken_at=ctx.now)
        base = f"/api/v1/orgs/{org_id}"

        # Parsing 60k devices allocates millions of small objects, none of them cyclic garbage: pausing
        # the cyclic GC for the cycle saves about a fifth of the CPU. Reference counting still frees.
        # The pause lasts until the site entities are made: their 40,000 frozen maps and tuples are
        # GC-tracked (dicts of strings and floats are not), and would otherwise trigger ~60 collections.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            try:
                self._collect_sites(client, cycle, base, ctx, key, settings)
                devices = self._collect_devices(client, cycle, base, ctx)
                for sle in SLE_KINDS:
                    self._collect_sle(client, cycle, base, ctx, sle)
                alarm_events = self._collect_alarms(client, cycle, base, ctx)
                device_events, event_cursor = self._collect_device_events(client, cycle, base, ctx)
                peers = self._collect_peers(client, cycle, base, ctx)
            except CollectionFailed:
                entry.pop("self_checked_at", None)  # a refused token is checked again next cycle
                raise
            finally:
                entry["last_cycle_at"] = now_ts
            if cycle.failed and cycle.failed == cycle.attempted:
                if cycle.refused and len(cycle.refused) == cycle.failed:
                    raise CollectionFailed(f"the Mist API token has no rights on org {org_id}: {cycle.refused[0]}")
                raise CollectionFailed(f"every Mist API call failed; first: {cycle.errors[0].message}")
            self._apply_device_counts(cycle)
            snap.entities.append(self._org_entity(cycle, org_id, org_name))
            snap.entities.extend(self._site_entities(cycle))
        finally:
            if gc_was_enabled:
                gc.enable()
        if not cycle.skip and not cycle.stop_reason:
            entry["last_calls"] = dict(cycle.calls)

        snap.entities.extend(devices)
        snap.entities.extend(peers)
        snap.events.extend(alarm_events)
        snap.events.extend(device_events)
        snap.errors.extend(cycle.errors)
        snap.api_calls = client.calls
        snap.api_requests[NAME] = requests_by_endpoint(getattr(client, "requests", {}))
        full_cycle = sum(cycle.calls.values()) if not cycle.skip else sum(
            int(n) for n in (entry.get("last_calls") or {}).values()) or client.calls
        fastest = min_interval_s(full_cycle, limit)
        snap.api_budget[NAME] = {
            "calls_cycle": client.calls, "calls_hour": budget.calls_hour, "hourly_budget": limit,
            "min_interval_s": fastest, "skipped": [ep for ep in OPTIONAL_ENDPOINTS if ep in cycle.skip],
            "blocked_until": _dt(budget.blocked_until).isoformat() if budget.blocked_until else None,
        }
        snap.cursors[NAME] = event_cursor
        return snap

    def _call(self, cycle: _Cycle, endpoint: str, kinds: Iterable[str], metrics: Iterable[str],
              fetch: Callable[[], Any], client: Any = None) -> Any:
        """Run one endpoint; on failure (or when skipped) record what it covers and return None."""
        from mistwatch.plugins.mist.client import MistAPIError, MistAuthError, MistForbiddenError, MistRateLimitError

        if endpoint in cycle.skip and not cycle.stop_reason:
            # Not a failure: chosen, so that the endpoints saying whether devices are up keep working.
            cycle.errors.append(CollectorError(
                collector=NAME, endpoint=endpoint, kinds=frozenset(kinds), metrics=frozenset(metrics),
                message="skipped: with it the hourly API budget would not last the hour "
                        f"({cycle.budget.calls_hour if cycle.budget else '?'} calls spent this hour)"))
            return None
        cycle.attempted += 1
        before = client.calls if client is not None else 0
        if cycle.stop_reason:
            # Each further endpoint would only spend its retries (and, when rate limited, the budget).
            message = f"not asked: {cycle.stop_reason}"
        else:
            try:
                result = fetch()
                cycle.unreachable = 0
                return result
            except MistAuthError as exc:
                # The token stopped working mid-run: every further call would fail the same way.
                raise CollectionFailed(str(exc)) from None
            except MistAPIError as exc:
                message = exc.message
                if isinstance(exc, MistForbiddenError):
                    cycle.refused.append(exc.message)
                if isinstance(exc, MistRateLimitError):
                    if cycle.budget is not None and getattr(exc, "retry_after", None) is None:
                        until = cycle.budget.block_until_next_hour()
                        cycle.stop_reason = (f"Mist answered HTTP 429 without Retry-After: the hourly budget "
                                             f"is spent; resuming after {_dt(until):%H:%M} UTC")
                    else:
                        cycle.stop_reason = "the Mist API rate limit was hit earlier in this cycle"
                elif exc.status is None and "gave up" in exc.message:  # timeouts, connection failures
                    cycle.unreachable += 1
                    if cycle.unreachable >= 2:
                        cycle.stop_reason = "the Mist API was unreachable for two endpoints in a row"
                else:
                    cycle.unreachable = 0
            finally:
                if client is not None:
                    spent = client.calls - before
                    cycle.calls[endpoint] = spent
                    if cycle.budget is not None:
                        cycle.budget.spend(spent)
        cycle.failed += 1
        cycle.errors.append(CollectorError(collector=NAME, endpoint=endpoint, message=message,
                                           kinds=frozenset(kinds), metrics=frozenset(metrics)))
        return None

    @staticmethod
    def _pages(pages: Iterator[tuple[list, int, int | None]], ctx: CollectContext, stage: str,
               handle: Callable[[Mapping[str, Any]], None]) -> bool:
        """Parse pages one by one (raw JSON is dropped page by page) and report progress."""
        for items, done, total in pages:
            for row in items:
                if isinstance(row, dict):
                    handle(row)
            ctx.progress(stage, done, total)
        return True

    def _collect_sites(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext, key: tuple,
                       settings: Mapping[str, Any]) -> None:
        names = cycle.names
        unnamed: list[str] = []

        def handle(row: Mapping[str, Any]) -> None:
            site_id = _text(row.get("id"))
            if site_id is None:
                return
            labels = site_labels(row, site_id, cycle.org_id, names)
            site_id = labels["site_id"]
            if "site_name" not in labels:
                unnamed.append(site_id)
            cycle.sites[site_id] = labels
            metrics = cycle.site_metrics[site_id] = site_counter_metrics(row)
            # Clients connected now: stats/sites num_clients (clients/count cannot count by site_id).
            clients = _num(row.get("num_clients"))
            if clients is not None:
                metrics["site.clients"] = clients

        counters = [f"site.{k}_{w}" for k, _ in _SITE_COUNTERS for w in ("total", "connected")]
        ok = self._call(cycle, "stats/sites", {"site", "org"},
                        [*counters, "site.devices_*", "site.ap_connected_ratio", "site.clients",
                         "org.sites", "org.devices*", "org.clients"],
                        lambda: self._pages(client.iter_pages(f"{base}/stats/sites"), ctx, "sites", handle),
                        client)
        if ok and not unnamed:
            return
        # stats/sites failed or lacks names: the site list gives names and makes sure no site is missing.
        # If that fails too after stats/sites failed, any site may be missing: all site metrics unknown;
        # if stats/sites worked, only names are missing and no metric is in doubt.
        site_list = self._site_list_cached(client, cycle, base, ctx, key, settings,
                                           covers=[] if ok else ["*"])
        if site_list is None:
            return
        for site_id, labels in site_list.items():
            known = cycle.sites.get(site_id)
            cycle.sites[site_id] = {**labels, **known} if known else dict(labels)
            cycle.site_metrics.setdefault(site_id, {})

    def _site_list_cached(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext, key: tuple,
                          settings: Mapping[str, Any], covers: list[str]) -> dict[str, dict[str, str]] | None:
        refresh = float(settings.get("sites_refresh", 3600))
        cached = self._site_list.get(key)
        if cached and time.monotonic() - cached[0] < refresh:
            return cached[1]
        site_list: dict[str, dict[str, str]] = {}
        names = cycle.names

        def handle(row: Mapping[str, Any]) -> None:
            site_id = _text(row.get("id"))
            if site_id is None:
                return
            labels = site_labels(row, site_id, cycle.org_id, names)
            site_list[labels["site_id"]] = labels

        ok = self._call(cycle, "sites", {"site"}, covers,
                        lambda: self._pages(client.iter_pages(f"{base}/sites"), ctx, "sites", handle), client)
        if not ok:
            return None
        self._site_list[key] = (time.monotonic(), site_list)
        return site_list

    def _collect_devices(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext) -> list[Entity]:
        names, now_ts, org_id, by_mac = cycle.names, cycle.now_ts, cycle.org_id, cycle.devices_by_mac
        site_names = {site_id: labels["site_name"] for site_id, labels in cycle.sites.items()
                      if "site_name" in labels}
        entities: list[Entity] = []
        counts: dict[str, dict[str, float]] = {}
        gateways = 0

        def handle(row: Mapping[str, Any]) -> None:
            nonlocal gateways
            get = row.get
            mac = _text(get("mac"))
            device_id = _text(get("id")) or mac
            if device_id is None:
                return
            labels = {"org_id": org_id, "device_id": device_id}
            site_id = _text(get("site_id"))
            if site_id is not None:
                site_id = labels["site_id"] = names[site_id]
                site_name = site_names.get(site_id)
                if site_name is not None:
                    labels["site_name"] = site_name
            name = _text(get("name")) or _text(get("hostname")) or mac
            if name is not None:
                labels["device_name"] = name
            for label, source in (("device_type", "type"), ("model", "model"), ("version", "version"),
                                  ("status", "status")):
                value = _text(get(source))
                if value is not None:
                    labels[label] = names[value[:64]]
            if mac is not None:
                labels["mac"] = mac
            device_type = get("type")
            if device_type == "gateway":
                gateways += 1
            state = device_state(row, now_ts)
            metrics = device_metrics(row, now_ts, state)
            if metrics.get("device.wan_links_down"):
                labels["wan_links_down"] = ", ".join(n for n, up in gateway_wan_links(row) or () if not up)[:300]
            faults = chassis_faults(device_modules(row)) if metrics.get("device.psus_failed") or metrics.get(
                "device.fans_failed") or metrics.get("device.temperatures_alarm") else ""
            if faults:
                labels["chassis_faults"] = faults
            cluster = get("cluster_stat")
            if isinstance(cluster, dict) and _text(cluster.get("state")):
                labels["ha_state"] = names[str(cluster["state"])[:64]]
            config_status = _text(get("config_status"))
            if config_status is not None and metrics.get("device.config_failed"):
                labels["config_status"] = config_status[:64]
            fwupdate = get("fwupdate")
            if isinstance(fwupdate, dict) and metrics.get("device.fwupdate_failed"):
                labels["fwupdate_status"] = str(fwupdate.get("status"))
            if site_id is not None and device_type in ("ap", "switch", "gateway"):
                _count_device(counts.setdefault(site_id, {}), device_type, state, metrics)
            page = _DEVICE_PAGES.get(labels.get("device_type", ""))
            if cycle.portal and page and site_id is not None:
                # ids come from Mist: quoted, so a hostile one cannot bend the link
                labels["portal_url"] = f"{cycle.portal}#!{page}/detail/{quote(device_id)}/{quote(site_id)}"
            # frozen: 60,000 devices' labels and metrics as compact read-only maps (see FrozenMap)
            frozen = FrozenMap(labels)
            if mac is not None:
                by_mac[mac] = frozen
            entities.append(Entity(f"device:{device_id}", "device", frozen, FrozenMap(metrics)))

        ok = self._call(cycle, "stats/devices", {"device"}, ["*"], lambda: self._pages(
            client.iter_pages(f"{base}/stats/devices", {"type": "all", "fields": ",".join(DEVICE_FIELDS)}),
            ctx, "devices", handle), client)
        if not ok:
            return []
        cycle.device_counts = counts
        cycle.gateways = gateways
        return entities

    def _apply_device_counts(self, cycle: _Cycle) -> None:
        """Site device counters from stats/devices (Mist's semantics applied: upgrading devices that
        report are up, never-connected and unknown-status devices are not counted as down)."""
        counts = cycle.device_counts
        if counts is None:
            return  # stats/devices failed: stats/sites' own counters stay (or are unknown)
        # The counters are known now, whatever stats/sites said: its failure covers only what it alone gives.
        cycle.errors = [
            CollectorError(collector=err.collector, endpoint=err.endpoint, message=err.message, kinds=err.kinds,
                           metrics=frozenset({"site.clients", "org.sites", "org.clients"}))
            if err.endpoint == "stats/sites" else err for err in cycle.errors]
        for site_id in {*cycle.sites, *counts}:
            site_counts = counts.get(site_id, {})
            metrics = cycle.site(site_id)
            total = connected = 0.0
            for kind, _ in _SITE_COUNTERS:
                total_name, connected_name = _KIND_METRICS[kind]
                kind_total = site_counts.get(total_name, 0.0)
                kind_up = site_counts.get(connected_name, 0.0)
                metrics[total_name] = kind_total
                metrics[connected_name] = kind_up
                total += kind_total
                connected += kind_up
            for name in ("site.devices_upgrading", "site.devices_not_connected_yet", "site.devices_status_unknown"):
                metrics[name] = site_counts.get(name, 0.0)
            _totals(metrics, total, connected)

    def _collect_sle(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext, sle: str) -> None:
        collected: list[tuple[str, dict[str, float]]] = []

        def handle(row: Mapping[str, Any]) -> None:
            site_id = _text(row.get("site_id"))
            if site_id is not None:
                collected.append((site_id, sle_metrics(sle, row)))

        ok = self._call(cycle, f"insights/sites-sle?sle={sle}", {"site"}, [f"sle.{sle}.*", f"site.sle_{sle}_clients"],
                        lambda: self._pages(client.iter_pages(f"{base}/insights/sites-sle",
                                                              {"sle": sle, "duration": "1h"}),
                                            ctx, f"sle {sle}", handle), client)
        if ok:  # only a complete answer is used, never half of one
            for site_id, metrics in collected:
                cycle.site(site_id).update(metrics)

    def _collect_alarms(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext) -> list[Event]:
        rows: list[Mapping[str, Any]] = []
        keep = ("id", "site_id", "type", "group", "severity", "timestamp", "last_seen", "count",
                "aps", "switches", "gateways", "hostnames", "note")

        def handle(row: Mapping[str, Any]) -> None:
            rows.append({k: row[k] for k in keep if k in row})

        ok = self._call(cycle, "alarms/search?status=open", {"site", "event"},
                        ["site.alarms_*", "site.marvis_actions_open", "mist.alarm"], lambda: self._pages(
                            client.iter_search(f"{base}/alarms/search",
                                               {"status": "open", "duration": ALARM_WINDOW}),
                            ctx, "alarms", handle), client)
        if not ok:
            return []
        counters = ("site.alarms_open", "site.alarms_critical", "site.alarms_major", "site.marvis_actions_open")
        for metrics in cycle.site_metrics.values():
            metrics.update(dict.fromkeys(counters, 0.0))
        return [alarm_event(row, cycle) for row in rows]

    def _collect_device_events(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext
                               ) -> tuple[list[Event], dict[str, Any]]:
        now_ts = cycle.now_ts
        cursor = ctx.cursor
        last_poll = epoch(cursor.get("last_event_poll"))
        since = last_poll
        if since is None or since >= now_ts:
            since = now_ts - FIRST_EVENT_WINDOW
        else:
            since -= EVENT_OVERLAP  # late-indexed events of the last window are asked again
        since = max(since, now_ts - MAX_EVENT_WINDOW)
        start, end = int(since), int(now_ts)
        seen_before = cursor.get("recent_event_ids")
        seen_before = {str(k): v for k, v in seen_before.items()} if isinstance(seen_before, dict) else {}
        events: list[Event] = []
        seen_now: dict[str, float] = {}

        def handle(row: Mapping[str, Any]) -> None:
            event = device_event(row, cycle)
            if event is None or event.id in seen_now:
                return
            seen_now[event.id] = event.timestamp.timestamp()
            if event.id not in seen_before:
                events.append(event)

        ok = self._call(cycle, "devices/events/search", {"event"}, ["mist.device_event"], lambda: self._pages(
            client.iter_search(f"{base}/devices/events/search",
                               {"device_type": "all", "start": start, "end": end}),
            ctx, "events", handle), client)
        if not ok:
            # The cursor stays put, so the next cycle asks for the missed window again.
            return [], dict(cursor)
        # Ids of the events the next window's overlap will return again; older ones cannot come back.
        keep_from = end - EVENT_OVERLAP
        recent = {k: v for k, v in {**seen_before, **seen_now}.items()
                  if isinstance(v, (int, float)) and v >= keep_from}
        return events, {"last_event_poll": float(end), "recent_event_ids": recent}

    def _collect_peers(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext) -> list[Entity]:
        """WAN paths (VPN peers) and BGP peers of every gateway, from two org-level searches; not
        asked when stats/devices shows no gateway."""
        if cycle.gateways == 0:
            return []
        entities: list[Entity] = []
        found: dict[str, Entity] = {}

        def vpn(row: Mapping[str, Any]) -> None:
            entity = vpn_peer_entity(row, cycle)
            if entity is not None:
                found[entity.key] = entity

        def bgp(row: Mapping[str, Any]) -> None:
            entity = bgp_peer_entity(row, cycle)
            if entity is not None:
                found[entity.key] = entity

        if self._call(cycle, "stats/vpn_peers/search", {"vpn_peer"}, ["*"], lambda: self._pages(
                client.iter_search(f"{base}/stats/vpn_peers/search", {"duration": PEER_WINDOW}),
                ctx, "wan paths", vpn), client):
            entities.extend(found.values())
        found = {}
        if self._call(cycle, "stats/bgp_peers/search", {"bgp_peer"}, ["*"], lambda: self._pages(
                client.iter_search(f"{base}/stats/bgp_peers/search", {"duration": PEER_WINDOW}),
                ctx, "bgp peers", bgp), client):
            entities.extend(found.values())
        return entities

    # ---- entities

    @staticmethod
    def _site_entities(cycle: _Cycle) -> Iterator[Entity]:
        for site_id, labels in cycle.sites.items():
            if cycle.portal:
                site = quote(site_id)
                labels = {**labels, "portal_url": f"{cycle.portal}#!dashboard/insights/site/{site}/today/{site}"}
            yield Entity(key=f"site:{site_id}", kind="site", labels=FrozenMap(labels),
                         metrics=FrozenMap(cycle.share(cycle.site_metrics.get(site_id, {}))))

    @staticmethod
    def _org_entity(cycle: _Cycle, org_id: str, org_name: str) -> Entity:
        metrics: dict[str, float] = {}
        failed = {err.endpoint for err in cycle.errors}
        if "stats/sites" not in failed:
            metrics["org.sites"] = float(len(cycle.sites))
            clients = [m["site.clients"] for m in cycle.site_metrics.values() if "site.clients" in m]
            metrics["org.clients"] = float(sum(clients))
        if "stats/sites" not in failed or cycle.device_counts is not None:
            for name, site_metric in (("org.devices", "site.devices_total"),
                                      ("org.devices_connected", "site.devices_connected")):
                values = [m[site_metric] for m in cycle.site_metrics.values() if site_metric in m]
                if values:
                    metrics[name] = float(sum(values))
        labels = {"org_id": org_id, "org_name": org_name}
        if cycle.portal:
            labels["portal_url"] = cycle.portal
        return Entity(key=f"org:{org_id}", kind="org", labels=FrozenMap(labels), metrics=FrozenMap(metrics))


def _count_device(counts: dict[str, float], device_type: str, state: str, metrics: Mapping[str, float]) -> None:
    """Add one device to its site's counters (see :meth:`MistCollector._apply_device_counts`)."""
    if state == "never":
        counts["site.devices_not_connected_yet"] = counts.get("site.devices_not_connected_yet", 0.0) + 1
        return
    if state == "unknown":
        counts["site.devices_status_unknown"] = counts.get("site.devices_status_unknown", 0.0) + 1
        return
    total, up = _KIND_METRICS[device_type]
    counts[total] = counts.get(total, 0.0) + 1
    if state in ("connected", "busy"):
        counts[up] = counts.get(up, 0.0) + 1
    if metrics.get("device.upgrading"):
        counts["site.devices_upgrading"] = counts.get("site.devices_upgrading", 0.0) + 1


def alarm_event(row: Mapping[str, Any], cycle: _Cycle) -> Event:
    """One open Mist alarm as a ``mist.alarm`` event (and its count in the site's alarm metrics).

    The event's timestamp is the alarm's ``last_seen`` (when Mist last saw the condition), so a rule's
    ``within:`` lets an alarm Mist never closes resolve once it has not been seen for that long."""
    raw_severity = str(row.get("severity") or "").strip().lower()
    severity = ALARM_SEVERITY.get(raw_severity, UNKNOWN_ALARM_SEVERITY)
    group = _text(row.get("group"))
    site_id = _text(row.get("site_id"))
    labels: dict[str, str] = {"org_id": cycle.org_id}
    if site_id is not None:
        metrics = cycle.site(site_id)
        metrics["site.alarms_open"] = metrics.get("site.alarms_open", 0.0) + 1
        if raw_severity == "critical":
            metrics["site.alarms_critical"] = metrics.get("site.alarms_critical", 0.0) + 1
        elif raw_severity == "warn":
            metrics["site.alarms_major"] = metrics.get("site.alarms_major", 0.0) + 1
        if group == "marvis":
            metrics["site.marvis_actions_open"] = metrics.get("site.marvis_actions_open", 0.0) + 1
        labels.update(cycle.sites.get(site_id, {"site_id": site_id}))
    labels["alarm_id"] = str(row.get("id") or "")
    if group is not None:
        labels["group"] = group[:64]
    if raw_severity:
        labels["mist_severity"] = raw_severity[:32]
    macs = [str(m) for k in ("aps", "switches", "gateways") for m in _list(row.get(k))]
    hostnames = [str(h) for h in _list(row.get("hostnames"))]
    if len(macs) == 1 and macs[0] in cycle.devices_by_mac:
        device = cycle.devices_by_mac[macs[0]]
        labels.update({k: v for k, v in device.items() if k in ("device_id", "device_name", "device_type", "mac")})
    if macs:
        labels["macs"] = ",".join(macs)
    if hostnames:
        labels["hostnames"] = ",".join(hostnames)
    opened = epoch(row.get("timestamp"))
    seen = epoch(row.get("last_seen")) or opened or cycle.now_ts
    if opened is not None:
        labels["opened_at"] = _dt(opened).isoformat()
    alarm_type = str(row.get("type") or "alarm")
    text = alarm_type.replace("_", " ")
    if hostnames:
        text += f": {', '.join(hostnames)}"
    count = _num(row.get("count"))
    return Event(source="mist.alarm", type=alarm_type, severity=severity, timestamp=_dt(seen),
                 labels=labels, text=text, id=labels["alarm_id"],
                 count=int(count) if count and count >= 1 else 1)


def device_event(row: Mapping[str, Any], cycle: _Cycle) -> Event | None:
    """One device event as a ``mist.device_event`` event; None without a usable timestamp."""
    ts = epoch(row.get("timestamp"))
    if ts is None:
        return None
    labels: dict[str, str] = {"org_id": cycle.org_id}
    site_id = _text(row.get("site_id"))
    if site_id is not None:
        labels.update(cycle.sites.get(site_id, {"site_id": site_id}))
        if "site_name" not in labels and _text(row.get("site_name")):
            labels["site_name"] = str(row["site_name"])
    mac = _text(row.get("mac")) or _text(row.get("ap"))
    device = cycle.devices_by_mac.get(mac) if mac else None
    if device:
        labels.update({k: v for k, v in device.items()
                       if k in ("device_id", "device_name", "device_type", "mac", "model")})
    for label, source in (("mac", "mac"), ("device_name", "device_name"),
                          ("device_type", "device_type"), ("port_id", "port_id")):
        value = _text(row.get(source))
        if value is not None and label not in labels:
            labels[label] = value
    if mac and "mac" not in labels:
        labels["mac"] = mac
    event_type = str(row.get("type") or "event")
    return Event(source="mist.device_event", type=event_type, severity=device_event_severity(row),
                 timestamp=_dt(ts), labels=labels, text=str(row.get("text") or row.get("reason") or ""),
                 id=f"{mac or ''}:{event_type}:{ts:.3f}")


def _peer_labels(row: Mapping[str, Any], cycle: _Cycle, peer_id: str) -> dict[str, str] | None:
    mac = _text(row.get("mac"))
    if mac is None:
        return None
    device = cycle.devices_by_mac.get(mac)
    labels: dict[str, str] = {"org_id": cycle.org_id}
    site_id = _text(row.get("site_id"))
    if site_id is not None:
        site = cycle.sites.get(site_id, {})
        labels["site_id"] = site.get("site_id", site_id)
        if "site_name" in site:
            labels["site_name"] = site["site_name"]
    if device:
        labels.update({k: v for k, v in device.items() if k in ("device_id", "device_name")})
    else:
        labels["device_id"] = f"00000000-0000-0000-1000-{mac}"  # Mist's device id form
    if "device_name" not in labels and _text(row.get("router_name")):
        labels["device_name"] = str(row["router_name"])
    labels["peer_id"] = peer_id[:200]
    return labels


def vpn_peer_entity(row: Mapping[str, Any], cycle: _Cycle) -> Entity | None:
    """One WAN path (``stats/vpn_peers/search`` row) as a ``vpn_peer`` entity."""
    port = _text(row.get("port_id")) or "?"
    peer = _text(row.get("peer_router_name")) or _text(row.get("peer_mac")) or "?"
    peer_port = _text(row.get("peer_port_id")) or "?"
    labels = _peer_labels(row, cycle, f"{port} > {peer} {peer_port}")
    if labels is None:
        return None
    names = cycle.names  # ports, hub names and types repeat across thousands of paths
    labels["port_id"] = names[port[:64]]
    labels["peer_name"] = names[peer[:100]]
    labels["peer_port_id"] = names[peer_port[:64]]
    vpn_type = _text(row.get("type"))
    if vpn_type:
        labels["vpn_type"] = names[vpn_type[:32]]
    metrics: dict[str, float] = {}
    for flag, metric in (("up", "vpn_peer.up"), ("is_active", "vpn_peer.active")):
        if type(row.get(flag)) is bool:
            metrics[metric] = 1.0 if row[flag] else 0.0
    for source, name in _VPN_METRICS:
        value = _num(row.get(source))
        if value is not None:
            metrics[name] = value
    key = f"vpn_peer:{labels['device_id']}:{labels['peer_id']}"
    return Entity(key, "vpn_peer", FrozenMap(labels), FrozenMap(cycle.share(metrics)))


def bgp_peer_entity(row: Mapping[str, Any], cycle: _Cycle) -> Entity | None:
    """One BGP neighbor (``stats/bgp_peers/search`` row) as a ``bgp_peer`` entity."""
    neighbor = _text(row.get("neighbor")) or _text(row.get("neighbor_mac"))
    if neighbor is None:
        return None
    vrf = _text(row.get("vrf_name")) or "default"
    node = _text(row.get("node"))
    peer_id = f"{vrf}/{neighbor}" + (f"@{node}" if node else "")
    labels = _peer_labels(row, cycle, peer_id)
    if labels is None:
        return None
    names = cycle.names
    labels["neighbor"] = names[neighbor[:64]]
    labels["vrf_name"] = names[vrf[:64]]
    state = _text(row.get("state"))
    metrics: dict[str, float] = {}
    if state is not None:
        labels["bgp_state"] = names[state[:32]]
        metrics["bgp_peer.up"] = 1.0 if state == "established" else 0.0
    elif type(row.get("up")) is bool:
        metrics["bgp_peer.up"] = 1.0 if row["up"] else 0.0
    routes = _num(row.get("rx_routes"))
    if routes is not None:
        metrics["bgp_peer.rx_routes"] = routes
    return Entity(f"bgp_peer:{labels['device_id']}:{peer_id}", "bgp_peer", FrozenMap(labels), FrozenMap(metrics))


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


_COLLECTOR = MistCollector()


def describe(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """For ``config check``: where the collector connects, for which org, and whether a token is set."""
    from mistwatch.errors import ConfigError
    from mistwatch.plugins.mist.client import resolve_base_url

    def where(settings: Mapping[str, Any]) -> str:
        cloud = settings.get("cloud")
        try:
            url = resolve_base_url(cloud, settings.get("base_url"))
        except ConfigError:
            url = settings.get("base_url") or "?"
        return f"{url} (cloud {cloud})" if cloud and not settings.get("base_url") else url

    if settings.get("orgs"):
        from mistwatch.plugins.mist.orgs import describe_orgs

        return describe_orgs(settings, where)
    return [("Mist API", where(settings)), ("Org id", str(settings.get("org_id") or "-")),
            ("Token", "***" if settings.get("token") else "(not set)")]


def _collect(ctx: CollectContext) -> Snapshot:
    if ctx.settings.get("orgs"):
        from mistwatch.plugins.mist.orgs import collect_orgs

        return collect_orgs(_COLLECTOR.collect, ctx)
    return _COLLECTOR.collect(ctx)


def collector() -> Collector:
    """The Mist collector's descriptor (registered by ``mistwatch.plugins.mist``)."""
    from mistwatch.plugins.mist.webhook import handle

    return Collector(name=NAME, collect=_collect, metrics=METRICS, config_key="mist",
                     settings_schema=settings_schema(), calls_per_hour=CALLS_PER_HOUR, describe=describe,
                     webhook=handle,
                     description="Juniper Mist org: sites, devices, SLEs, alarms, device events, WAN paths "
                                 "and BGP peers from org-level API calls (about ten calls per cycle, any org size).")
