"""The built-in Mist collector: org, sites and devices of one Mist org, from org-level endpoints.

The call plan (Mist notes, README section 2.0) keeps a cycle at about ten calls whatever the number
of sites: ``/self`` once per process, ``stats/sites``, ``stats/devices?type=all``, ``insights/sites-sle``
for wifi, wired and wan, ``alarms/search?status=open``, ``devices/events/search`` since the last poll
and ``clients/count?distinct=site_id``, each with ``limit=1000`` plus extra pages for big orgs.
``orgs/{id}/sites`` is only asked (and then cached for ``sites_refresh``) when ``stats/sites`` does not
carry the site names. Metric and label names are those of ``docs/metrics.md``.

A failed endpoint (after the client's retries) becomes a :class:`CollectorError` covering exactly what
it feeds, so those metrics are *unknown* this cycle; everything else is still returned.
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from mistwatch.errors import CollectionFailed
from mistwatch.hookspecs import CollectContext, Collector
from mistwatch.model import CollectorError, Entity, Event, Snapshot

NAME = "mist"
#: Mist's documented API budget per token and clock hour.
CALLS_PER_HOUR = 5000
#: First run (no cursor): look this far back for device events.
FIRST_EVENT_WINDOW = 3600
#: Never ask for more than this much event history in one cycle, however long we were away.
MAX_EVENT_WINDOW = 24 * 3600
#: Open alarms older than this are not asked for (the API default window is one day).
ALARM_WINDOW = "7d"
SLE_KINDS = ("wifi", "wired", "wan")

#: Mist alarm severity -> ours (docs/metrics.md). Anything else is taken as minor, never dropped.
ALARM_SEVERITY = {"critical": "critical", "major": "major", "warn": "minor", "warning": "minor",
                  "minor": "minor", "info": "info", "informational": "info"}

_SITE_COUNTERS = (("ap", "num_ap"), ("switch", "num_switch"), ("gateway", "num_gateway"))

METRICS: dict[str, str] = {
    "device.connected": "1 when the device status is connected, else 0",
    "device.uptime": "seconds since the device booted (a drop means a reboot)",
    "device.last_seen_age": "seconds between the device's last_seen and collection time",
    "device.cpu": "CPU use, percent (AP cpu_util; switch/gateway 100 - cpu_stat.idle)",
    "device.memory": "memory use, percent (AP mem_used_kb/mem_total_kb; switch/gateway memory_stat.usage)",
    "device.clients": "wireless clients on the AP",
    "site.ap_total": "APs assigned to the site",
    "site.ap_connected": "APs connected",
    "site.switch_total": "switches assigned to the site",
    "site.switch_connected": "switches connected",
    "site.gateway_total": "gateways assigned to the site",
    "site.gateway_connected": "gateways connected",
    "site.devices_total": "APs + switches + gateways",
    "site.devices_connected": "connected APs + switches + gateways",
    "site.devices_disconnected": "devices_total - devices_connected",
    "site.ap_connected_ratio": "connected APs / APs, 0..1 (absent when the site has no AP)",
    "site.clients": "wireless clients (clients/count by site, else stats/sites num_clients)",
    "site.alarms_open": "open Mist alarms at the site",
    "site.alarms_critical": "open Mist alarms of severity critical",
    "site.alarms_major": "open Mist alarms of severity major",
    "org.sites": "sites in the org",
    "org.devices": "devices assigned to sites",
    "org.devices_connected": "connected devices",
    "org.clients": "wireless clients in the org",
}
#: Mist's sites-sle result keys per SLE, in our names (Mist's "-" become "_").
SLE_METRICS: dict[str, tuple[str, ...]] = {
    "wifi": ("coverage", "capacity", "time_to_connect", "successful_connect", "roaming", "throughput",
             "ap_health", "ap_availability"),
    "wired": ("switch_health", "switch_throughput", "switch_bandwidth"),
    "wan": ("gateway_health", "wan_link_health", "application_health"),
}
for _sle, _names in SLE_METRICS.items():
    for _name in _names:
        METRICS[f"sle.{_sle}.{_name}"] = f"{_sle} SLE {_name.replace('_', ' ')}: share of good user-minutes, 0..1"

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


def _num(value: Any) -> float | None:
    """A finite number from a JSON value (numbers, numeric strings); None otherwise. Hot path: 500k calls."""
    kind = type(value)
    if kind is int:
        return _SMALL_FLOATS[value] if 0 <= value < 1024 else float(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool or kind is dict or kind is list:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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


def device_metrics(row: Mapping[str, Any], now_ts: float) -> dict[str, float]:
    """The device.* metrics of one stats/devices row; a missing field yields no metric."""
    metrics: dict[str, float] = {}
    status = row.get("status")
    if isinstance(status, str):
        metrics["device.connected"] = 1.0 if status == "connected" else 0.0
    uptime = _num(row.get("uptime"))
    if uptime is not None:
        metrics["device.uptime"] = uptime
    last_seen = epoch(row.get("last_seen"))
    if last_seen is not None:
        metrics["device.last_seen_age"] = max(0.0, now_ts - last_seen)
    if row.get("type") == "ap":
        cpu = _num(row.get("cpu_util"))
        used, total = _num(row.get("mem_used_kb")), _num(row.get("mem_total_kb"))
        memory = used * 100.0 / total if used is not None and total else None
        clients = _num(row.get("num_clients"))
        if clients is not None:
            metrics["device.clients"] = clients
    else:
        cpu_stat, memory_stat = row.get("cpu_stat"), row.get("memory_stat")
        idle = _num(cpu_stat.get("idle")) if isinstance(cpu_stat, dict) else None
        cpu = 100.0 - idle if idle is not None else None
        memory = _num(memory_stat.get("usage")) if isinstance(memory_stat, dict) else None
    if cpu is not None:
        metrics["device.cpu"] = cpu
    if memory is not None:
        metrics["device.memory"] = memory
    return metrics


def site_labels(row: Mapping[str, Any], site_id: str, org_id: str, names: dict[str, str]) -> dict[str, str]:
    """The documented site labels from a sites or stats/sites row (strings shared through ``names``)."""
    labels = {"org_id": org_id, "site_id": names[site_id]}
    for label, source in (("site_name", "name"), ("timezone", "timezone"), ("country_code", "country_code")):
        value = _text(row.get(source))
        if value is not None:
            labels[label] = names[value]
    return labels


def site_counter_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """site.* device counters of one stats/sites row."""
    metrics: dict[str, float] = {}
    total_sum = connected_sum = None
    for kind, field_name in _SITE_COUNTERS:
        total = _num(row.get(field_name))
        connected = _num(row.get(f"{field_name}_connected"))
        if total is not None:
            metrics[f"site.{kind}_total"] = total
            total_sum = (total_sum or 0.0) + total
        if connected is not None:
            metrics[f"site.{kind}_connected"] = connected
            connected_sum = (connected_sum or 0.0) + connected
    if total_sum is None:
        total_sum = _num(row.get("num_devices"))
    if connected_sum is None:
        connected_sum = _num(row.get("num_devices_connected"))
    if total_sum is not None:
        metrics["site.devices_total"] = total_sum
    if connected_sum is not None:
        metrics["site.devices_connected"] = connected_sum
    if total_sum is not None and connected_sum is not None:
        metrics["site.devices_disconnected"] = total_sum - connected_sum
    aps, aps_up = metrics.get("site.ap_total"), metrics.get("site.ap_connected")
    if aps and aps_up is not None:
        metrics["site.ap_connected_ratio"] = aps_up / aps
    return metrics


_SLE_NAMES: dict[tuple[str, str], str] = {}


def sle_metrics(sle: str, row: Mapping[str, Any]) -> dict[str, float]:
    """sle.<sle>.* of one sites-sle result; keys are read generically (new SLEs appear as they come)."""
    metrics: dict[str, float] = {}
    for key, value in row.items():
        kind = type(value)
        if kind is not float and kind is not int:  # also skips site_id and bools
            continue
        if key.startswith("num_") or not math.isfinite(value):
            continue
        name = _SLE_NAMES.get((sle, key))
        if name is None:
            name = _SLE_NAMES[(sle, key)] = f"sle.{sle}.{key.replace('-', '_')}"
        metrics[name] = float(value)
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
    site_clients_fallback: dict[str, float] = field(default_factory=dict)
    devices_by_mac: dict[str, Mapping[str, str]] = field(default_factory=dict)
    errors: list[CollectorError] = field(default_factory=list)
    attempted: int = 0
    failed: int = 0
    refused: list[str] = field(default_factory=list)  # 403 messages
    unreachable: int = 0  # endpoints in a row that failed without any HTTP answer
    stop_reason: str = ""  # set when asking further endpoints this cycle is pointless
    portal: str | None = None  # "https://manage.mist.com/admin/?org_id=...": entities' portal_url labels

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


class MistCollector:
    """Collects one Mist org. Keeps the HTTP session and the ``/self`` check across cycles."""

    def __init__(self, *, client_factory: Callable[..., Any] | None = None) -> None:
        self._client_factory = client_factory
        self._clients: dict[tuple, Any] = {}
        self._validated: dict[tuple, str] = {}  # key -> org name, once /self said the token is fine
        self._site_list: dict[tuple, tuple[float, dict[str, dict[str, str]]]] = {}

    # ---- setup

    def _client(self, settings: Mapping[str, Any]) -> tuple[Any, tuple]:
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
        digest = hashlib.sha256(token.encode()).hexdigest()
        key = (base_url, str(settings.get("org_id")), digest, tuple(sorted(options.items())))
        client = self._clients.get(key)
        if client is None:
            factory = self._client_factory or MistClient
            client = self._clients[key] = factory(base_url, token, **options)
        return client, key

    def _check_self(self, client: Any, key: tuple, org_id: str) -> str:
        """Validate the token and its rights on org_id with /self (once per process); the org's name."""
        from mistwatch.plugins.mist.client import MistAPIError, MistAuthError, MistForbiddenError

        if key in self._validated:
            return self._validated[key]
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
        self._validated[key] = org_name
        return org_name

    # ---- one cycle

    def collect(self, ctx: CollectContext) -> Snapshot:
        settings = ctx.settings
        org_id = str(settings["org_id"])
        client, key = self._client(settings)
        client.reset_calls()
        org_name = self._check_self(client, key, org_id)
        now_ts = ctx.now.timestamp()
        cycle = _Cycle(org_id=org_id, now_ts=now_ts, portal=portal_base(settings, key[0]))
        snap = Snapshot(taken_at=ctx.now)
        base = f"/api/v1/orgs/{org_id}"

        # Parsing 60k devices allocates millions of small objects, none of them cyclic garbage: pausing
        # the cyclic GC for the cycle saves about a fifth of the CPU. Reference counting still frees.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._collect_sites(client, cycle, base, ctx, key, settings)
            devices = self._collect_devices(client, cycle, base, ctx)
            for sle in SLE_KINDS:
                self._collect_sle(client, cycle, base, ctx, sle)
            alarm_events = self._collect_alarms(client, cycle, base, ctx)
            device_events, polled = self._collect_device_events(client, cycle, base, ctx)
            self._collect_clients(client, cycle, base, ctx)
        except CollectionFailed:
            self._validated.pop(key, None)  # a refused token is checked again next cycle
            raise
        finally:
            if gc_was_enabled:
                gc.enable()
        if cycle.failed and cycle.failed == cycle.attempted:
            if cycle.refused and len(cycle.refused) == cycle.failed:
                raise CollectionFailed(f"the Mist API token has no rights on org {org_id}: {cycle.refused[0]}")
            raise CollectionFailed(f"every Mist API call failed; first: {cycle.errors[0].message}")

        snap.entities.append(self._org_entity(cycle, org_id, org_name))
        snap.entities.extend(self._site_entities(cycle))
        snap.entities.extend(devices)
        snap.events.extend(alarm_events)
        snap.events.extend(device_events)
        snap.errors.extend(cycle.errors)
        snap.api_calls = client.calls
        last_poll = polled if polled is not None else epoch(ctx.cursor.get("last_event_poll"))
        snap.cursors[NAME] = {"last_event_poll": last_poll} if last_poll is not None else {}
        return snap

    def _call(self, cycle: _Cycle, endpoint: str, kinds: Iterable[str], metrics: Iterable[str],
              fetch: Callable[[], Any]) -> Any:
        """Run one endpoint; on failure record what it covers and return None."""
        from mistwatch.plugins.mist.client import MistAPIError, MistAuthError, MistForbiddenError, MistRateLimitError

        cycle.attempted += 1
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
                    cycle.stop_reason = "the Mist API rate limit was hit earlier in this cycle"
                elif exc.status is None and "gave up" in exc.message:  # timeouts, connection failures
                    cycle.unreachable += 1
                    if cycle.unreachable >= 2:
                        cycle.stop_reason = "the Mist API was unreachable for two endpoints in a row"
                else:
                    cycle.unreachable = 0
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
            cycle.site_metrics[site_id] = site_counter_metrics(row)
            clients = _num(row.get("num_clients"))
            if clients is not None:
                cycle.site_clients_fallback[site_id] = clients

        counters = [f"site.{k}_{w}" for k, _ in _SITE_COUNTERS for w in ("total", "connected")]
        ok = self._call(cycle, "stats/sites", {"site", "org"},
                        [*counters, "site.devices_*", "site.ap_connected_ratio", "org.sites", "org.devices*"],
                        lambda: self._pages(client.iter_pages(f"{base}/stats/sites"), ctx, "sites", handle))
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
                        lambda: self._pages(client.iter_pages(f"{base}/sites"), ctx, "sites", handle))
        if not ok:
            return None
        self._site_list[key] = (time.monotonic(), site_list)
        return site_list

    def _collect_devices(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext) -> list[Entity]:
        names, now_ts, org_id, by_mac = cycle.names, cycle.now_ts, cycle.org_id, cycle.devices_by_mac
        site_names = {site_id: labels["site_name"] for site_id, labels in cycle.sites.items()
                      if "site_name" in labels}
        entities: list[Entity] = []

        def handle(row: Mapping[str, Any]) -> None:
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
            for label, source in (("device_type", "type"), ("model", "model"), ("version", "version")):
                value = _text(get(source))
                if value is not None:
                    labels[label] = names[value]
            if mac is not None:
                labels["mac"] = mac
                by_mac[mac] = labels
            page = _DEVICE_PAGES.get(labels.get("device_type", ""))
            if cycle.portal and page and site_id is not None:
                # ids come from Mist: quoted, so a hostile one cannot bend the link
                labels["portal_url"] = f"{cycle.portal}#!{page}/detail/{quote(device_id)}/{quote(site_id)}"
            entities.append(Entity(f"device:{device_id}", "device", labels, device_metrics(row, now_ts)))

        ok = self._call(cycle, "stats/devices", {"device"}, ["*"], lambda: self._pages(
            client.iter_pages(f"{base}/stats/devices", {"type": "all"}), ctx, "devices", handle))
        return entities if ok else []

    def _collect_sle(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext, sle: str) -> None:
        collected: list[tuple[str, dict[str, float]]] = []

        def handle(row: Mapping[str, Any]) -> None:
            site_id = _text(row.get("site_id"))
            if site_id is not None:
                collected.append((site_id, sle_metrics(sle, row)))

        ok = self._call(cycle, f"insights/sites-sle?sle={sle}", {"site"}, [f"sle.{sle}.*"], lambda: self._pages(
            client.iter_pages(f"{base}/insights/sites-sle", {"sle": sle, "duration": "1h"}),
            ctx, f"sle {sle}", handle))
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
                        ["site.alarms_*", "mist.alarm"], lambda: self._pages(
                            client.iter_search(f"{base}/alarms/search",
                                               {"status": "open", "duration": ALARM_WINDOW}),
                            ctx, "alarms", handle))
        if not ok:
            return []
        for metrics in cycle.site_metrics.values():
            metrics.update({"site.alarms_open": 0.0, "site.alarms_critical": 0.0, "site.alarms_major": 0.0})
        events: list[Event] = []
        for row in rows:
            severity = ALARM_SEVERITY.get(str(row.get("severity") or "").lower(), "minor")
            site_id = _text(row.get("site_id"))
            labels: dict[str, str] = {"org_id": cycle.org_id}
            if site_id is not None:
                metrics = cycle.site(site_id)
                metrics["site.alarms_open"] = metrics.get("site.alarms_open", 0.0) + 1
                if severity in ("critical", "major"):
                    name = f"site.alarms_{severity}"
                    metrics[name] = metrics.get(name, 0.0) + 1
                labels.update(cycle.sites.get(site_id, {"site_id": site_id}))
            labels["alarm_id"] = str(row.get("id") or "")
            if row.get("group"):
                labels["group"] = str(row["group"])
            macs = [str(m) for k in ("aps", "switches", "gateways") for m in row.get(k) or []]
            hostnames = [str(h) for h in row.get("hostnames") or []]
            if len(macs) == 1 and macs[0] in cycle.devices_by_mac:
                device = cycle.devices_by_mac[macs[0]]
                labels.update({k: v for k, v in device.items()
                               if k in ("device_id", "device_name", "device_type", "mac")})
            if macs:
                labels["macs"] = ",".join(macs)
            if hostnames:
                labels["hostnames"] = ",".join(hostnames)
            ts = epoch(row.get("timestamp")) or epoch(row.get("last_seen")) or cycle.now_ts
            alarm_type = str(row.get("type") or "alarm")
            text = alarm_type.replace("_", " ")
            if hostnames:
                text += f": {', '.join(hostnames)}"
            count = _num(row.get("count"))
            events.append(Event(source="mist.alarm", type=alarm_type, severity=severity, timestamp=_dt(ts),
                                labels=labels, text=text, id=labels["alarm_id"],
                                count=int(count) if count and count >= 1 else 1))
        return events

    def _collect_device_events(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext
                               ) -> tuple[list[Event], float | None]:
        now_ts = cycle.now_ts
        since = epoch(ctx.cursor.get("last_event_poll"))
        if since is None or since >= now_ts:
            since = now_ts - FIRST_EVENT_WINDOW
        since = max(since, now_ts - MAX_EVENT_WINDOW)
        start, end = int(since), int(now_ts)
        events: list[Event] = []

        def handle(row: Mapping[str, Any]) -> None:
            ts = epoch(row.get("timestamp"))
            if ts is None:
                return
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
            events.append(Event(source="mist.device_event", type=event_type,
                                severity=device_event_severity(row), timestamp=_dt(ts), labels=labels,
                                text=str(row.get("text") or row.get("reason") or ""),
                                id=f"{mac or ''}:{event_type}:{ts:.3f}"))

        ok = self._call(cycle, "devices/events/search", {"event"}, ["mist.device_event"], lambda: self._pages(
            client.iter_search(f"{base}/devices/events/search",
                               {"device_type": "all", "start": start, "end": end}),
            ctx, "events", handle))
        # On failure the cursor stays put, so the next cycle asks for the missed window again.
        return (events, float(end)) if ok else ([], None)

    def _collect_clients(self, client: Any, cycle: _Cycle, base: str, ctx: CollectContext) -> None:
        counts: dict[str, float] = {}

        def fetch() -> bool:
            first_seen: set[str] = set()
            for rows, done, total in client.iter_pages(f"{base}/clients/count",
                                                       {"distinct": "site_id", "duration": "1h"}):
                rows = [r for r in rows if isinstance(r, dict) and r.get("property") is not None]
                # Paging of count endpoints is not documented: if a server ignores ``page`` it repeats
                # the first page, so stop there (sites left out fall back below).
                if rows and str(rows[0]["property"]) in first_seen:
                    break
                if rows:
                    first_seen.add(str(rows[0]["property"]))
                for row in rows:
                    count = _num(row.get("count"))
                    if count is not None:
                        counts[str(row["property"])] = count
                ctx.progress("clients", done, total)
            return True

        ok = self._call(cycle, "clients/count?distinct=site_id", {"site", "org"},
                        ["site.clients", "org.clients"], fetch)
        if not ok:
            return
        # Sites absent from the count (none seen, or beyond its limit) fall back to stats/sites num_clients.
        for site_id, metrics in cycle.site_metrics.items():
            value = counts.get(site_id, cycle.site_clients_fallback.get(site_id))
            if value is not None:
                metrics["site.clients"] = value
        for site_id, value in counts.items():
            if site_id not in cycle.site_metrics and site_id in cycle.sites:
                cycle.site(site_id)["site.clients"] = value

    # ---- entities

    @staticmethod
    def _site_entities(cycle: _Cycle) -> Iterator[Entity]:
        for site_id, labels in cycle.sites.items():
            if cycle.portal:
                site = quote(site_id)
                labels = {**labels, "portal_url": f"{cycle.portal}#!dashboard/insights/site/{site}/today/{site}"}
            yield Entity(key=f"site:{site_id}", kind="site", labels=labels,
                         metrics=cycle.share(cycle.site_metrics.get(site_id, {})))

    @staticmethod
    def _org_entity(cycle: _Cycle, org_id: str, org_name: str) -> Entity:
        metrics: dict[str, float] = {}
        failed = {err.endpoint for err in cycle.errors}
        if "stats/sites" not in failed:
            metrics["org.sites"] = float(len(cycle.sites))
            for name, site_metric in (("org.devices", "site.devices_total"),
                                      ("org.devices_connected", "site.devices_connected")):
                values = [m[site_metric] for m in cycle.site_metrics.values() if site_metric in m]
                if values:
                    metrics[name] = float(sum(values))
        if "clients/count?distinct=site_id" not in failed:
            clients = [m["site.clients"] for m in cycle.site_metrics.values() if "site.clients" in m]
            metrics["org.clients"] = float(sum(clients))
        labels = {"org_id": org_id, "org_name": org_name}
        if cycle.portal:
            labels["portal_url"] = cycle.portal
        return Entity(key=f"org:{org_id}", kind="org", labels=labels, metrics=metrics)


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
                     description="Juniper Mist org: sites, devices, SLEs, alarms and device events "
                                 "from org-level API calls (about ten calls per cycle, any org size).")
