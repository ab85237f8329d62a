"""Deterministic data of the simulated Mist org (used by ``mistwatch.plugins.mist.simulator``).

An org of N sites, each with the same device layout (default 6 devices: 4 APs, 1 switch, 1 gateway).
Everything is derived from ``(seed, site index, device position)`` by integer hashing, so the org is
cheap to build (only one small record per site is stored) and every endpoint agrees on ids, macs,
names and counts. Only what a scenario changes is kept as state (a few overrides).

Time: ``org.now`` is a settable, timezone-aware clock (default: the real time). Uptimes, ``last_seen``,
search windows and the small hourly jitter of SLE values and client counts follow it, so a test or the
demo can replay days. A scenario's incident happened 5 minutes before the clock at which it starts:
the constructor's ``now`` for the constructor's scenario, else the clock of the first request (or
``state`` read) after ``set_scenario`` - so ``set_scenario`` and setting ``now`` may come in either
order. Setting the current scenario again keeps its incident and its times.

Scenarios (``SCENARIOS``):

* ``healthy``: every device connected, SLEs 0.9-1.0 (seeded per site, tiny hourly jitter), no open
  alarms, stable client counts (+-2 % hourly jitter). History holds config events (``*_CONFIGURED``)
  and resolved warn/info alarms; a background alarm is only ever returned once resolved.
* ``degraded``: exactly sites index 1-4 differ from ``healthy`` (see ``affected_sites``):
    - site 1: 3 of its 4 APs disconnected (``AP_DISCONNECTED`` events); wifi ``ap-availability`` 0.25;
      its clients stay (they roam to the remaining AP);
    - site 2: wifi SLE collapse (coverage, capacity, time-to-connect 0.5-0.6), clients down 60 %;
    - site 3: an open critical Mist alarm (``switch_stp_loop``) and an open major one (``ap_bad_cable``);
    - site 4: its gateway and switch disconnected (``GW_DISCONNECTED``/``SW_DISCONNECTED`` events);
      wired ``switch-health`` and wan ``gateway-health``/``wan-link-health`` low.
* ``recovered``: current state as ``healthy``; the devices that were down are connected again with a
  fresh uptime (``*_CONNECTED`` events, indexed by Mist 4 minutes late, as events a device buffered
  while offline are), the site-3 alarms are resolved. History keeps the incident.
* ``upgrade-wave``: a firmware upgrade rolls through sites 1-3: site 1's APs are ``upgrading`` (still
  reporting, ``fwupdate.status`` inprogress) for the wave's first 15 minutes, then run the new version
  with a fresh uptime; site 2's switch has been ``upgrading`` for 2 hours (stuck) and one AP is
  ``restarting`` (back after the 15 minutes too); at site 3 one AP's upgrade ``failed`` (it runs the old version)
  and one AP was claimed but never connected (no ``last_seen``, no ``uptime``).
* ``wan-link-failure``: site 1's gateway lost its second WAN link (``if_stat`` wan2 down, its VPN path
  down, a ``vpn_peer_down`` warn alarm); site 2's primary WAN path is lossy (loss 6 %, latency 180 ms,
  MOS 3.0); site 3's BGP neighbor is down (state ``active``, no routes).

``set_scenario("healthy")`` forgets it all. Background alarms carry Mist's real groups and severities
(``critical``/``warn``/``info``); ``degraded`` also leaves a security alarm Mist never closed (last
seen two days ago). Sites with an odd index answer ``sites-sle`` with the current SLE names
(``wan-link-health-v2``, ``application-health``, ``switch-health-v2``, ``gateway-bandwidth``) next to
the v1 names the spec requires; even ones with the v1 names only. ``SimulatorServer`` also counts
calls per token and clock hour (of ``now``) and answers 429 without ``Retry-After`` once the hour's
budget (default 5,000) is spent.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from mistwatch.plugins.mist import SCENARIOS

_M64 = (1 << 64) - 1
DAY = 86400

# (city, code, country, timezone, lat, lng)
CITIES: tuple[tuple[str, str, str, str, float, float], ...] = (
    ("Dublin", "DUB", "IE", "Europe/Dublin", 53.3498, -6.2603),
    ("Rotterdam", "RTM", "NL", "Europe/Amsterdam", 51.9225, 4.4792),
    ("Amsterdam", "AMS", "NL", "Europe/Amsterdam", 52.3676, 4.9041),
    ("Utrecht", "UTC", "NL", "Europe/Amsterdam", 52.0907, 5.1214),
    ("Antwerp", "ANR", "BE", "Europe/Brussels", 51.2194, 4.4025),
    ("Brussels", "BRU", "BE", "Europe/Brussels", 50.8503, 4.3517),
    ("Lyon", "LYS", "FR", "Europe/Paris", 45.7640, 4.8357),
    ("Paris", "PAR", "FR", "Europe/Paris", 48.8566, 2.3522),
    ("Lille", "LIL", "FR", "Europe/Paris", 50.6292, 3.0573),
    ("Hamburg", "HAM", "DE", "Europe/Berlin", 53.5511, 9.9937),
    ("Munich", "MUC", "DE", "Europe/Berlin", 48.1351, 11.5820),
    ("Cologne", "CGN", "DE", "Europe/Berlin", 50.9375, 6.9603),
    ("Berlin", "BER", "DE", "Europe/Berlin", 52.5200, 13.4050),
    ("Vienna", "VIE", "AT", "Europe/Vienna", 48.2082, 16.3738),
    ("Zurich", "ZRH", "CH", "Europe/Zurich", 47.3769, 8.5417),
    ("Milan", "MIL", "IT", "Europe/Rome", 45.4642, 9.1900),
    ("Turin", "TRN", "IT", "Europe/Rome", 45.0703, 7.6869),
    ("Madrid", "MAD", "ES", "Europe/Madrid", 40.4168, -3.7038),
    ("Barcelona", "BCN", "ES", "Europe/Madrid", 41.3874, 2.1686),
    ("Valencia", "VLC", "ES", "Europe/Madrid", 39.4699, -0.3763),
    ("Lisbon", "LIS", "PT", "Europe/Lisbon", 38.7223, -9.1393),
    ("Porto", "OPO", "PT", "Europe/Lisbon", 41.1579, -8.6291),
    ("London", "LON", "GB", "Europe/London", 51.5072, -0.1276),
    ("Manchester", "MAN", "GB", "Europe/London", 53.4808, -2.2426),
    ("Leeds", "LBA", "GB", "Europe/London", 53.8008, -1.5491),
    ("Glasgow", "GLA", "GB", "Europe/London", 55.8642, -4.2518),
    ("Copenhagen", "CPH", "DK", "Europe/Copenhagen", 55.6761, 12.5683),
    ("Stockholm", "STO", "SE", "Europe/Stockholm", 59.3293, 18.0686),
    ("Oslo", "OSL", "NO", "Europe/Oslo", 59.9139, 10.7522),
    ("Helsinki", "HEL", "FI", "Europe/Helsinki", 60.1699, 24.9384),
    ("Warsaw", "WAW", "PL", "Europe/Warsaw", 52.2297, 21.0122),
    ("Krakow", "KRK", "PL", "Europe/Warsaw", 50.0647, 19.9450),
    ("Prague", "PRG", "CZ", "Europe/Prague", 50.0755, 14.4378),
    ("Budapest", "BUD", "HU", "Europe/Budapest", 47.4979, 19.0402),
    ("Athens", "ATH", "GR", "Europe/Athens", 37.9838, 23.7275),
    ("New York", "NYC", "US", "America/New_York", 40.7128, -74.0060),
    ("Boston", "BOS", "US", "America/New_York", 42.3601, -71.0589),
    ("Chicago", "CHI", "US", "America/Chicago", 41.8781, -87.6298),
    ("Dallas", "DFW", "US", "America/Chicago", 32.7767, -96.7970),
    ("Denver", "DEN", "US", "America/Denver", 39.7392, -104.9903),
    ("Seattle", "SEA", "US", "America/Los_Angeles", 47.6062, -122.3321),
    ("San Jose", "SJC", "US", "America/Los_Angeles", 37.3382, -121.8863),
    ("Toronto", "YTO", "CA", "America/Toronto", 43.6532, -79.3832),
    ("Singapore", "SIN", "SG", "Asia/Singapore", 1.3521, 103.8198),
    ("Tokyo", "TYO", "JP", "Asia/Tokyo", 35.6762, 139.6503),
    ("Sydney", "SYD", "AU", "Australia/Sydney", -33.8688, 151.2093),
)
STREETS = ("Market Street", "Station Road", "Harbour Way", "Park Avenue", "High Street", "Canal Street",
           "Airport Road", "Mill Lane", "Bridge Street", "Commerce Park")
# role, weight, numbered (always carries a number), (min, max) wireless clients
ROLES: tuple[tuple[str, int, bool, tuple[int, int]], ...] = (
    ("Branch", 40, True, (20, 70)),
    ("Store", 35, True, (10, 45)),
    ("Office", 12, False, (60, 140)),
    ("Warehouse", 10, False, (5, 25)),
    ("DC", 3, False, (3, 12)),
)
HQ_CLIENTS = (180, 320)

AP_MODELS = ("AP45", "AP43", "AP34", "AP47")
SWITCH_MODELS = ("EX4100-F-12P", "EX2300-C-12P", "EX4100-48P")
GATEWAY_MODELS = ("SRX320", "SRX340", "SRX300")
VERSIONS = {"ap": "0.14.29543", "switch": "22.4R3.25", "gateway": "22.4R3-S2.11"}
MAC_PREFIX = {"ap": "5c5b35", "switch": "d0dd49", "gateway": "4c9614"}
TYPE_BY_PREFIX = {v: k for k, v in MAC_PREFIX.items()}
EVENT_PREFIX = {"ap": "AP", "switch": "SW", "gateway": "GW"}

WIFI_KEYS = ("ap-availability", "ap-health", "capacity", "coverage", "roaming", "successful-connect",
             "throughput", "time-to-connect")
WIRED_KEYS = ("switch-health", "switch-throughput", "switch-bandwidth")
WAN_KEYS = ("gateway-health", "wan-link-health", "application_health")
SLE_KEYS = {"wifi": WIFI_KEYS, "wired": WIRED_KEYS, "wan": WAN_KEYS}
#: The names Mist sends today next to the v1 ones (sites with an odd index use these).
CURRENT_SLE_NAMES = {"switch-health": "switch-health-v2", "wan-link-health": "wan-link-health-v2",
                     "application_health": "application-health"}
WAN_LINKS = (("ge-0/0/0", "wan1", "broadband"), ("ge-0/0/1", "wan2", "lte"))
UPGRADE_WAVE_MINUTES = 15  # how long the normal part of the upgrade wave takes
UPGRADED_AP_VERSION = "0.14.29889"

# history that is not part of a scenario: resolved alarms of these kinds, config events
BACKGROUND_ALARMS = (("rogue_ap", "security", "warn"), ("infra_dhcp_failure", "infrastructure", "warn"),
                     ("infra_arp_failure", "infrastructure", "info"), ("missing_vlan", "marvis", "warn"))
REF_EPOCH = 1_700_000_000  # created_time of generated objects lies before this
MAX_CACHED_DEVICES = 200_000  # device texts kept up to this org size (~260 MB); bigger orgs build per request
#: Field sets of stats/devices whose texts are kept at once (the collector asks one, tests ``*`` too).
MAX_FIELD_VARIANTS = 4
#: What org-level stats/devices returns without ``fields``. The spec (tag "Orgs Stats - Devices"): "By
#: default, the API call only returns a subset of the available fields. Additional fields can be
#: requested by adding the query parameter `fields=` and the list of fields, or `fields=*` to retrieve
#: all the available fields." Which fields make that subset is not documented, so the simulator keeps
#: only the high-level identity and state fields and strips every nested or detail one: a client that
#: reads a field without asking for it gets nothing here, as it might on a real org.
DEFAULT_DEVICE_FIELDS = frozenset({
    "created_time", "hostname", "id", "ip", "last_seen", "mac", "model", "modified_time", "name",
    "num_clients", "org_id", "serial", "site_id", "status", "type", "uptime", "version"})


def mix(*values: int) -> int:
    """A fast deterministic 64-bit hash of small ints.

    CPython's tuple-of-int hash is not salted (only str/bytes hashing is), so it is stable across
    runs; one multiply-xorshift round spreads its bits for ``unit``."""
    x = (hash(values) * 0x9E3779B97F4A7C15) & _M64
    return x ^ (x >> 29)


def unit(*values: int) -> float:
    """A deterministic float in [0, 1)."""
    return mix(*values) / 18446744073709551616.0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def device_layout(devices_per_site: int) -> tuple[str, ...]:
    """Device types by position in a site: APs first, then one switch, then one gateway."""
    if devices_per_site < 1:
        raise ValueError("devices_per_site must be at least 1")
    if devices_per_site == 1:
        return ("ap",)
    if devices_per_site == 2:
        return ("ap", "switch")
    return ("ap",) * (devices_per_site - 2) + ("switch", "gateway")


class Site:
    """One site's stored data (everything else is derived)."""

    __slots__ = ("address", "city", "clients", "code", "country", "created", "ext_ip", "id", "index",
                 "lat", "lng", "name", "tz")

    def __init__(self, index: int, id: str, name: str, code: str, city: str, country: str, tz: str,
                 address: str, lat: float, lng: float, created: int, clients: int, ext_ip: str):
        self.index = index
        self.id = id
        self.name = name
        self.code = code
        self.city = city
        self.country = country
        self.tz = tz
        self.address = address
        self.lat = lat
        self.lng = lng
        self.created = created
        self.clients = clients
        self.ext_ip = ext_ip


def generate_sites(count: int, seed: int, org_id: str) -> list[Site]:
    rng = random.Random(seed)
    role_names = [r[0] for r in ROLES]
    weights = [r[1] for r in ROLES]
    role_info = {r[0]: r for r in ROLES}
    used: dict[tuple[str, str], int] = {}
    cumulative = [sum(weights[: k + 1]) for k in range(len(weights))]
    sites = []
    # each site is drawn from (seed, index) alone, so a small org is a prefix of a large one
    for i in range(count):
        city, code, country, tz, lat, lng = CITIES[mix(seed, i, 2) % len(CITIES)]
        if i == 0:
            role, name, lo_hi = "HQ", f"{city} HQ", HQ_CLIENTS
            used[(city, "HQ")] = 1
        else:
            pick = mix(seed, i, 1) % cumulative[-1]
            role = next(name for name, upto in zip(role_names, cumulative, strict=True) if pick < upto)
            _, _, numbered, lo_hi = role_info[role]
            n = used.get((city, role), 0) + 1
            used[(city, role)] = n
            name = f"{city} {role} {n}" if numbered or n > 1 else f"{city} {role}"
        h = mix(seed, i, 11)
        sites.append(Site(
            index=i, id=_uuid(rng), name=name, code=f"{code}{i + 1:03d}", city=city, country=country,
            tz=tz, address=f"{1 + h % 180} {STREETS[(h >> 8) % len(STREETS)]}, {city}",
            lat=round(lat + ((h >> 16) % 2000 - 1000) / 20000, 4),
            lng=round(lng + ((h >> 28) % 2000 - 1000) / 20000, 4),
            created=REF_EPOCH - 86400 * 30 - (h >> 40) % (86400 * 400),
            clients=lo_hi[0] + (h >> 20) % (lo_hi[1] - lo_hi[0] + 1),
            ext_ip=f"198.51.{100 + i // 250 % 100}.{1 + i % 250}",
        ))
    return sites


class ScenarioState:
    """What a scenario changes relative to healthy. Rebuilt (never mutated) by ``set_scenario``."""

    def __init__(self, name: str, anchor: float):
        self.name = name
        self.anchor = anchor  # the org's now when the scenario was set
        self.incident_ts: float | None = None
        self.recovered_ts: float | None = None
        self.down: dict[int, float] = {}  # global device index -> disconnected since (epoch s)
        self.boot: dict[int, float] = {}  # global device index -> boot time override (recovered)
        self.sle: dict[tuple[int, str], dict[str, float]] = {}  # (site index, sle) -> overrides
        self.client_factor: dict[int, float] = {}
        self.alarms: list[dict] = []  # alarms; "last_seen" None means "now" (still open)
        self.events: list[dict] = []
        self.affected: dict[int, str] = {}
        self.status: dict[int, str] = {}  # global device index -> status other than connected (reporting)
        self.fwupdate: dict[int, dict] = {}  # global device index -> fwupdate object
        self.version: dict[int, str] = {}  # global device index -> firmware version override
        self.never: set[int] = set()  # claimed, never connected
        self.psu_failed: set[int] = set()  # switches/gateways with PSU 1 failed
        self.wan_down: dict[int, set[str]] = {}  # gateway -> WAN names down
        self.vpn: dict[tuple[int, str], dict] = {}  # (gateway, wan name) -> path stat overrides
        self.bgp_down: set[int] = set()  # gateways whose BGP neighbor is down
        self.expires_at: float | None = None  # the scenario's next phase starts then


class SimulatedOrg:
    """A generated Mist org: sites, devices, clients, SLEs, alarms and events, with a settable clock."""

    def __init__(self, sites: int = 12, devices_per_site: int = 6, scenario: str = "healthy", seed: int = 7,
                 org_id: str | None = None, org_name: str = "Acme Retail", now: datetime | None = None):
        if sites < 1:
            raise ValueError("sites must be at least 1")
        rng = random.Random(mix(seed, 0xC0FFEE))
        self.seed = seed
        self.org_id = org_id or _uuid(rng)
        self.org_name = org_name
        self.msp_id = _uuid(rng)
        self.alarmtemplate_id = _uuid(rng)
        self.layout = device_layout(devices_per_site)
        self.devices_per_site = devices_per_site
        self.n_ap = self.layout.count("ap")
        self._now: datetime | None = None
        if now is not None:
            self.now = now
        self._sites = generate_sites(sites, seed, self.org_id)
        self._site_by_id = {s.id: s for s in self._sites}
        self._mac_offset = mix(seed, 5) % (1 << 23)
        # devices booted before the org was created here; keeps uptimes positive in a replay
        self._boot_ref = self.now.timestamp()
        self._tz_cache: dict[tuple[str, int], int] = {}
        self._sle_base: dict[tuple[int, str], tuple[float, ...]] = {}
        self._history: OrderedDict[tuple[str, int], list[dict]] = OrderedDict()
        self._history_lock = threading.Lock()
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self._scenario = scenario
        self._previous: ScenarioState | None = None
        self._state_lock = threading.Lock()
        # built now: the constructor's scenario starts at the constructor's clock; later ones lazily
        self._state: ScenarioState | None = self._build_state(scenario, None)
        self._device_texts: tuple[tuple[ScenarioState, float], dict[frozenset[str] | None, list]] | None = None

    # --- clock -----------------------------------------------------------------------------------
    @property
    def now(self) -> datetime:
        return self._now if self._now is not None else datetime.now(timezone.utc)

    @now.setter
    def now(self, value: datetime | None) -> None:
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError("SimulatedOrg.now must be timezone-aware")
        self._now = value
        if value is not None and hasattr(self, "_boot_ref") and value.timestamp() < self._boot_ref:
            # a replay that starts before the org was built: devices booted before that start
            self._boot_ref = value.timestamp()
        state = getattr(self, "_state", None)
        if state is not None and state.anchor > self.now.timestamp():
            # the clock went back before the incident: re-anchor so no event lies in the future
            self._state, self._previous = None, None

    # --- public queries ----------------------------------------------------------------------------
    @property
    def scenario(self) -> str:
        return self._scenario

    def set_scenario(self, name: str) -> None:
        """Switch scenario. Setting the current one again keeps its incident (and its times)."""
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        if name == self._scenario:
            return
        with self._state_lock:
            if self._state is not None:
                self._previous = self._state
            self._scenario = name
            self._state = None

    @property
    def state(self) -> ScenarioState:
        """The current scenario's state, anchored at the clock of its first use after ``set_scenario``
        (so ``set_scenario`` and setting ``now`` may come in either order)."""
        state = self._state
        if state is not None and state.expires_at is not None and self.now.timestamp() >= state.expires_at:
            with self._state_lock:  # the scenario moves on by itself (an upgrade wave completes)
                if self._state is state:
                    self._previous, self._state = state, None
            state = None
        if state is None:
            with self._state_lock:
                if self._state is None:
                    self._state = self._build_state(self._scenario, self._previous)
                state = self._state
        return state

    def affected_sites(self, scenario: str | None = None) -> dict[str, str]:
        """Site id -> what differs from healthy, for ``scenario`` (default: the current one)."""
        name = scenario or self.scenario
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}")
        state = self.state if name == self.scenario else self._build_state(name, None)
        return {self._sites[i].id: reason for i, reason in sorted(state.affected.items())}

    def site_ids(self) -> list[str]:
        return [s.id for s in self._sites]

    def site_name(self, site_id: str) -> str:
        return self._site_by_id[site_id].name

    @property
    def sites(self) -> list[Site]:
        return self._sites

    def site(self, site_id: str) -> Site | None:
        return self._site_by_id.get(site_id)

    # --- scenarios ---------------------------------------------------------------------------------
    def _build_state(self, name: str, previous: ScenarioState | None) -> ScenarioState:
        t = self.now.timestamp()
        state = ScenarioState(name, t)
        if name == "healthy":
            return state
        if name == "upgrade-wave":
            return self._upgrade_wave(state, t, previous)
        if name == "wan-link-failure":
            return self._wan_link_failure(state, t)
        n = len(self._sites)
        if name == "degraded" and previous is not None and previous.name == "degraded":
            incident = previous.incident_ts or t - 300
        elif name == "recovered" and previous is not None and previous.incident_ts is not None:
            incident = previous.incident_ts
        else:
            incident = t - 300 if name == "degraded" else t - 3600
        incident = min(incident, t - 300)
        state.incident_ts = incident
        state.anchor = min(incident, t)
        down: dict[int, float] = {}
        if n > 1:
            aps = [p for p, kind in enumerate(self.layout) if kind == "ap"]
            for k, pos in enumerate(aps[1:4]):  # all but the first AP, at most 3
                down[1 * self.devices_per_site + pos] = incident + 2 + k * 7
            state.affected[1] = f"{len(aps[1:4])} of {len(aps)} APs disconnected"
        if n > 2:
            state.sle[(2, "wifi")] = {key: round(0.5 + 0.1 * unit(self.seed, 2, j, 77), 3)
                                      for j, key in enumerate(("coverage", "capacity", "time-to-connect"))}
            state.client_factor[2] = 0.4
            state.affected[2] = "wifi SLE collapse (coverage, capacity, time-to-connect) and clients -60%"
        if n > 3:
            state.alarms = self._incident_alarms(3, incident)
            sw = self.device_pos("switch")
            if sw is not None:
                state.psu_failed.add(3 * self.devices_per_site + sw)
            state.affected[3] = "open critical and warn Mist alarms, a Marvis action, a failed PSU"
        if n > 4:
            for pos, kind in enumerate(self.layout):
                if kind in ("switch", "gateway"):
                    down[4 * self.devices_per_site + pos] = incident + 30 + pos
            if "switch" in self.layout:
                state.sle[(4, "wired")] = {"switch-health": 0.12, "switch-throughput": 0.4}
            if "gateway" in self.layout:
                state.sle[(4, "wan")] = {"gateway-health": 0.1, "wan-link-health": 0.15}
            state.affected[4] = "gateway and switch disconnected"
        state.events = [self._event(g, "DISCONNECTED", ts) for g, ts in sorted(down.items())]
        if name == "degraded":
            state.down = down
            if 1 in state.affected:
                state.sle[(1, "wifi")] = {"ap-availability": 0.25}
            if n > 3:  # a security alarm Mist never closes, last seen two days ago
                rng = random.Random(mix(self.seed, 3, 917))
                state.alarms.append({"id": _uuid(rng), "org_id": self.org_id, "site_id": self._sites[3].id,
                                     "type": "rogue_ap", "group": "security", "severity": "warn",
                                     "status": "open", "count": 1, "timestamp": int(incident) - 3 * DAY,
                                     "last_seen": int(incident) - 2 * DAY, "acked": False,
                                     "bssids": ["02aabbccdd01"], "ssids": ["Free-WiFi"]})
            return state
        # recovered: everything back; the incident stays in the history
        state.sle, state.client_factor = {}, {}
        recovered = max(t - 120, incident + 60)
        state.recovered_ts = recovered
        state.psu_failed = set()
        for g, ts in sorted(down.items()):
            state.boot[g] = recovered + (ts - incident)
            event = self._event(g, "CONNECTED", state.boot[g] + 45)
            event["_indexed_at"] = event["timestamp"] + 240  # Mist indexes it late
            state.events.append(event)
        for alarm in state.alarms:
            alarm["status"] = "resolved"
            alarm["resolved_time"] = int(recovered)
            alarm["last_seen"] = int(recovered)
        state.affected = {}
        if any(g // self.devices_per_site == 1 for g in down):
            state.affected[1] = "APs reconnected (uptime reset)"
        if state.alarms:
            state.affected[3] = "Mist alarms resolved"
        if any(g // self.devices_per_site == 4 for g in down):
            state.affected[4] = "gateway and switch reconnected (uptime reset)"
        return state

    def _incident_alarms(self, site_index: int, incident: float) -> list[dict]:
        site = self._sites[site_index]
        rng = random.Random(mix(self.seed, site_index, 313))
        sw = self.device_pos("switch")
        ap = self.device_pos("ap")
        g0 = site_index * self.devices_per_site
        critical = {"id": _uuid(rng), "org_id": self.org_id, "site_id": site.id, "type": "sw_alarm_chassis_psu",
                    "group": "infrastructure", "severity": "critical", "status": "open", "count": 3,
                    "timestamp": int(incident), "last_seen": None, "acked": False}
        optics = {"id": _uuid(rng), "org_id": self.org_id, "site_id": site.id, "type": "sw_bad_optics",
                  "group": "infrastructure", "severity": "warn", "status": "open", "count": 1,
                  "timestamp": int(incident) + 20, "last_seen": None, "acked": False}
        if sw is not None:
            for alarm in (critical, optics):
                alarm["switches"] = [self.device_mac(g0 + sw)]
                alarm["hostnames"] = [self.device_name(g0 + sw)]
        marvis = {"id": _uuid(rng), "org_id": self.org_id, "site_id": site.id, "type": "bad_cable",
                  "group": "marvis", "severity": "warn", "status": "open", "count": 1,
                  "timestamp": int(incident) + 40, "last_seen": None, "acked": False,
                  "aps": [self.device_mac(g0 + (ap or 0))], "hostnames": [self.device_name(g0 + (ap or 0))]}
        return [critical, optics, marvis]

    def _upgrade_wave(self, state: ScenarioState, t: float, previous: ScenarioState | None) -> ScenarioState:
        """Phase 1 (its first 15 minutes): site 1's APs upgrading, site 2's AP restarting. Phase 2: they
        are done (new version, fresh uptime); the switch of site 2 stays stuck, site 3 stays as it is."""
        dps, n = self.devices_per_site, len(self._sites)
        started = t - 600
        if previous is not None and previous.name == "upgrade-wave" and previous.incident_ts is not None:
            started = previous.incident_ts
        state.incident_ts = started
        state.anchor = started
        done_at = started + UPGRADE_WAVE_MINUTES * 60
        running = t < done_at
        if running:
            state.expires_at = done_at
        aps = [p for p, kind in enumerate(self.layout) if kind == "ap"]
        upgrading = {"status": "inprogress", "progress": 40, "status_id": 5, "timestamp": started,
                     "will_retry": False}
        if n > 1:
            for k, pos in enumerate(aps):
                g = dps + pos
                if running:
                    state.status[g] = "upgrading"
                    state.fwupdate[g] = dict(upgrading)
                else:
                    state.boot[g] = done_at - 240 + 20 * k
                    state.version[g] = UPGRADED_AP_VERSION
                    state.fwupdate[g] = dict(upgrading, status="upgraded", progress=100, status_id=3037)
            state.affected[1] = f"{len(aps)} APs upgrading (a normal wave, done after {UPGRADE_WAVE_MINUTES} min)"
        if n > 2:
            sw = self.device_pos("switch")
            if sw is not None:
                state.status[2 * dps + sw] = "upgrading"
                state.fwupdate[2 * dps + sw] = dict(upgrading, timestamp=started - 2 * 3600, progress=60)
            if aps:
                if running:
                    state.status[2 * dps + aps[0]] = "restarting"
                else:
                    state.boot[2 * dps + aps[0]] = done_at - 300
            state.affected[2] = "switch upgrading for 2 hours (stuck), an AP restarting"
        if n > 3 and aps:
            state.fwupdate[3 * dps + aps[0]] = {"status": "failed", "progress": 0, "status_id": 9,
                                                "timestamp": started, "will_retry": False}
            state.version[3 * dps + aps[0]] = "0.12.27452"
            if len(aps) > 1:
                state.never.add(3 * dps + aps[-1])
            state.affected[3] = "an AP's upgrade failed, an AP claimed but never connected"
        return state

    def _wan_link_failure(self, state: ScenarioState, t: float) -> ScenarioState:
        dps, n = self.devices_per_site, len(self._sites)
        gw = self.device_pos("gateway")
        state.incident_ts = t - 300
        state.anchor = t - 300
        if gw is None:
            return state
        if n > 1:
            g = dps + gw
            state.wan_down[g] = {"wan2"}
            state.vpn[(g, "wan2")] = {"up": False}
            rng = random.Random(mix(self.seed, 1, 419))
            site = self._sites[1]
            state.alarms = [{"id": _uuid(rng), "org_id": self.org_id, "site_id": site.id, "type": "vpn_peer_down",
                             "group": "infrastructure", "severity": "warn", "status": "open", "count": 1,
                             "timestamp": int(t - 290), "last_seen": None, "acked": False,
                             "gateways": [self.device_mac(g)], "hostnames": [self.device_name(g)]}]
            state.events.append(dict(self._event(g, "VPN_PATH_DOWN", t - 295), port_id="ge-0/0/1",
                                     text="VPN path ge-0/0/1 down"))
            state.affected[1] = "gateway lost WAN link wan2 (VPN path down)"
        if n > 2:
            state.vpn[(2 * dps + gw, "wan1")] = {"loss": 6.0, "latency": 180.0, "jitter": 35.0, "mos": 3.0}
            state.affected[2] = "primary WAN path lossy (6 % loss, 180 ms)"
        if n > 3:
            state.bgp_down.add(3 * dps + gw)
            state.affected[3] = "BGP neighbor down"
        return state

    def _event(self, g: int, what: str, ts: float) -> dict:
        kind = self.device_type(g)
        site = self._sites[g // self.devices_per_site]
        return {"type": f"{EVENT_PREFIX[kind]}_{what}", "mac": self.device_mac(g),
                "device_name": self.device_name(g), "device_type": kind, "model": self.device_model(g),
                "org_id": self.org_id, "site_id": site.id, "site_name": site.name,
                "timestamp": round(ts, 1)}

    # --- devices -----------------------------------------------------------------------------------
    @property
    def device_count(self) -> int:
        return len(self._sites) * self.devices_per_site

    def device_pos(self, kind: str) -> int | None:
        return self.layout.index(kind) if kind in self.layout else None

    def device_type(self, g: int) -> str:
        return self.layout[g % self.devices_per_site]

    def _type_ordinal(self, g: int) -> tuple[str, int, int]:
        """(type, number within the site from 1, number within the org from 0)."""
        site, pos = divmod(g, self.devices_per_site)
        kind = self.layout[pos]
        if kind == "ap":
            return kind, pos + 1, site * self.n_ap + pos
        return kind, 1, site

    def device_mac(self, g: int) -> str:
        kind, _, serial = self._type_ordinal(g)
        return f"{MAC_PREFIX[kind]}{(serial + self._mac_offset) & 0xFFFFFF:06x}"

    def device_id(self, g: int) -> str:
        return "00000000-0000-0000-1000-" + self.device_mac(g)

    def device_name(self, g: int) -> str:
        kind, number, _ = self._type_ordinal(g)
        code = self._sites[g // self.devices_per_site].code
        return f"{code}-{ {'ap': 'AP', 'switch': 'SW', 'gateway': 'GW'}[kind]}{number:02d}"

    def device_model(self, g: int) -> str:
        kind = self.device_type(g)
        models = {"ap": AP_MODELS, "switch": SWITCH_MODELS, "gateway": GATEWAY_MODELS}[kind]
        return models[mix(self.seed, g, 3) % len(models)]

    def device_by_mac(self, mac: str) -> int | None:
        mac = mac.lower().replace(":", "").replace("-", "")
        kind = TYPE_BY_PREFIX.get(mac[:6])
        if kind is None or kind not in self.layout or len(mac) != 12:
            return None
        try:
            serial = (int(mac[6:], 16) - self._mac_offset) & 0xFFFFFF
        except ValueError:
            return None
        if kind == "ap":
            site, pos = divmod(serial, self.n_ap)
            pos = [p for p, k in enumerate(self.layout) if k == "ap"][pos]
        else:
            site, pos = serial, self.layout.index(kind)
        if site >= len(self._sites):
            return None
        return site * self.devices_per_site + pos

    def device_texts(self, state: ScenarioState, fields: frozenset[str] | None = None) -> list | None:
        """Per global device index, its ``DeviceText`` for ``state`` and the top-level ``fields`` kept
        (None: all, see :func:`device_fields`), or None until built (lazily, by the request that needs
        it); None for an org too big to keep them (about 1.3 KB each). A new state or boot reference
        starts new lists; a request keeps the list of the state it read, so concurrent requests never
        mix states. A few field sets are kept side by side (a client asks the same one every cycle)."""
        if self.device_count > MAX_CACHED_DEVICES:
            return None
        key = (state, self._boot_ref)
        cached = self._device_texts
        if cached is None or cached[0][0] is not state or cached[0][1] != key[1]:
            cached = self._device_texts = (key, {})
        variants = cached[1]
        texts = variants.get(fields)
        if texts is None:
            while len(variants) >= MAX_FIELD_VARIANTS:  # the oldest field set asked goes
                variants.pop(next(iter(variants), None), None)  # (another request may drop it first)
            texts = variants[fields] = [None] * self.device_count
        return texts

    def prepare(self, fields: str | None = "*") -> None:
        """Build every device's text for the current scenario now (seconds at 10,000 sites) rather than
        in the first requests; ``mistwatch simulate`` calls this before serving, with the ``fields``
        query value the Mist collector sends."""
        state = self.state
        kept = device_fields(fields)
        texts = self.device_texts(state, kept)
        if texts is not None:
            for g in range(self.device_count):
                if texts[g] is None:
                    texts[g] = DeviceText(self, g, state, kept)

    def is_connected(self, g: int, state: ScenarioState) -> bool:
        return g not in state.down

    # --- clients and SLE ---------------------------------------------------------------------------
    def site_clients(self, i: int, now_ts: float, state: ScenarioState) -> int:
        hour = int(now_ts // 3600)
        base = self._sites[i].clients * (0.98 + 0.04 * unit(self.seed, i, hour, 21))
        return round(base * state.client_factor.get(i, 1.0))

    def site_wired_clients(self, i: int) -> int:
        return 3 + self._sites[i].clients // 10

    def sle_values(self, i: int, kind: str, now_ts: float, state: ScenarioState,
                   keys: tuple[str, ...] | None = None) -> dict[str, float]:
        """SLE ratios of site ``i`` for ``kind`` (wifi, wired, wan): seeded per site in 0.92-1.0, with a
        0.01 hourly jitter; scenario overrides win."""
        hour = int(now_ts // 3600)
        over = state.sle.get((i, kind), {})
        base = self._sle_base.get((i, kind))
        if base is None:  # the seeded part, computed once (hashing is most of the cost at 10,000 sites)
            salt = ord(kind[1])
            base = self._sle_base[(i, kind)] = tuple(0.92 + 0.07 * unit(self.seed, i, j, salt)
                                                     for j in range(len(SLE_KEYS[kind])))
        out = {}
        for j, key in enumerate(SLE_KEYS[kind]):
            if keys is not None and key not in keys:
                continue
            if key in over:
                out[key] = over[key]
                continue
            out[key] = round(min(base[j] + 0.01 * unit(self.seed, i, j, hour), 1.0), 3)
        return out

    def tzoffset(self, tz: str, now_ts: float) -> int:
        key = (tz, int(now_ts // 3600))
        offset = self._tz_cache.get(key)
        if offset is None:
            if len(self._tz_cache) > 4096:
                self._tz_cache.clear()
            delta = datetime.fromtimestamp(now_ts, ZoneInfo(tz)).utcoffset()
            offset = self._tz_cache[key] = int(delta.total_seconds() // 60) if delta else 0
        return offset

    # --- history -----------------------------------------------------------------------------------
    def background(self, what: str, day: int) -> list[dict]:
        """Deterministic benign history of one UTC day: ``what`` is "alarms" or "events"."""
        key = (what, day)
        with self._history_lock:  # server threads share this cache
            cached = self._history.get(key)
            if cached is not None:
                self._history.move_to_end(key)
                return cached
        rng = random.Random(mix(self.seed, day, 1 if what == "events" else 2))
        n_sites = len(self._sites)
        items: list[dict] = []
        if what == "events":
            for _ in range(max(2, n_sites // 25)):
                g = rng.randrange(self.device_count)
                ev = self._event(g, "CONFIGURED", day * DAY + rng.random() * DAY)
                ev["audit_id"] = _uuid(rng)
                items.append(ev)
        else:
            for _ in range(max(1, n_sites // 50)):
                i = rng.randrange(n_sites)
                kind, group, severity = BACKGROUND_ALARMS[rng.randrange(len(BACKGROUND_ALARMS))]
                ts = int(day * DAY + rng.random() * DAY)
                resolved = ts + 600 + rng.randrange(1800)
                items.append({"id": _uuid(rng), "org_id": self.org_id, "site_id": self._sites[i].id,
                              "type": kind, "group": group, "severity": severity, "status": "resolved",
                              "count": 1 + rng.randrange(3), "timestamp": ts, "last_seen": resolved,
                              "resolved_time": resolved, "acked": False})
        items.sort(key=lambda x: x["timestamp"])
        with self._history_lock:
            self._history[key] = items
            if len(self._history) > 64:
                self._history.popitem(last=False)
        return items


# --- payloads: the shapes of shared/mist-api/examples.json ------------------------------------------

def site_payload(org: SimulatedOrg, site: Site) -> dict:
    return {"id": site.id, "org_id": org.org_id, "name": site.name, "timezone": site.tz,
            "country_code": site.country, "address": site.address,
            "latlng": {"lat": site.lat, "lng": site.lng}, "sitegroup_ids": [], "alarmtemplate_id": None,
            "networktemplate_id": None, "rftemplate_id": None, "created_time": site.created,
            "modified_time": site.created + 20 * DAY}


def down_by_site(org: SimulatedOrg, state: ScenarioState) -> dict[tuple[int, str], int]:
    """(site index, device type) -> number of disconnected devices."""
    out: dict[tuple[int, str], int] = {}
    # Mist's own counters count what is not "connected" as not connected (upgrading too [unconfirmed])
    for g in {*state.down, *state.never, *state.status}:
        key = (g // org.devices_per_site, org.device_type(g))
        out[key] = out.get(key, 0) + 1
    return out


def site_stats_payload(org: SimulatedOrg, site: Site, now_ts: float, state: ScenarioState,
                       down: dict[tuple[int, str], int]) -> dict:
    out = site_payload(org, site)
    out["tzoffset"] = org.tzoffset(site.tz, now_ts)
    out["lat"], out["lng"] = site.lat, site.lng
    total_connected = 0
    for kind, key in (("ap", "num_ap"), ("switch", "num_switch"), ("gateway", "num_gateway")):
        n = org.layout.count(kind)
        connected = n - down.get((site.index, kind), 0)
        out[key] = n
        out[key + "_connected"] = connected
        total_connected += connected
    out["num_devices"] = org.devices_per_site
    out["num_devices_connected"] = total_connected
    out["num_clients"] = org.site_clients(site.index, now_ts, state)
    return out


# --- stats/devices as text -----------------------------------------------------------------------------
# Building and JSON-encoding 60,000 device dicts per cycle cost seconds of CPU at 10,000 sites. So each
# device's JSON is encoded once per scenario state (``DeviceText``, cached by ``SimulatedOrg.device_texts``)
# with its clock-dependent numbers (uptime, last_seen, counters, hourly cpu/mem/clients) left as %s slots;
# a request only formats those numbers in. The output is the same text json.dumps gave for the dict.
# A text may keep only some top-level fields (``fields=``): its slots are then a subsequence of the
# kind's, picked by index from the values render() computes.

class _Slot:
    """A clock-dependent value in a device template; json-encoded as a marker that becomes a %s slot."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_MARK = "\x00"
_MARK_JSON = '"\\u0000"'  # how json.dumps writes _MARK
# the slots of each kind, in text order; DeviceText.render returns values in this order
AP_SLOTS = ("uptime", "last_seen", "num_clients", "cpu_util", "cpu_system", "cpu_user", "mem_used_kb",
            "port_rx_bytes", "port_tx_bytes", "port_rx_pkts", "port_tx_pkts", "b24_clients", "b24_tx_bytes",
            "b24_rx_bytes", "b5_clients", "b5_tx_bytes", "b5_rx_bytes", "rx_bytes", "tx_bytes", "rx_pkts",
            "tx_pkts")
SWITCH_SLOTS = ("uptime", "last_seen", "cpu_stat", "memory")
SWITCH_PORT_SLOTS = ("rx_pkts", "tx_pkts", "rx_bytes", "tx_bytes")  # per connected AP's port
GATEWAY_SLOTS = ("uptime", "last_seen", "cpu_stat", "memory", "spu_cpu", "spu_memory", "spu_uptime",
                 "rx_bytes", "tx_bytes", "rx_pkts", "tx_pkts")
_SLOT = {n: _Slot(n) for n in (*AP_SLOTS, *SWITCH_SLOTS, *SWITCH_PORT_SLOTS, *GATEWAY_SLOTS)}
_PICKS: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple object per distinct pick, shared by devices


def device_fields(fields: str | None) -> frozenset[str] | None:
    """The top-level fields an org-level stats/devices row keeps for the query value ``fields``: the
    default subset plus the fields named (comma separated); None (all of them) for ``*``."""
    names = {f.strip() for f in (fields or "").split(",") if f.strip()}
    if "*" in names:
        return None
    return DEFAULT_DEVICE_FIELDS | names


def _kept(payload: dict, fields: frozenset[str] | None) -> dict:
    return payload if fields is None else {k: v for k, v in payload.items() if k in fields}


def _pick(names: tuple[str, ...], expected: tuple[str, ...]) -> tuple[int, ...] | None:
    """Indexes into ``expected`` (the slots render() fills, in order) of a text's slots ``names``; None
    when they are all of them. Fields are dropped whole, so ``names`` is a subsequence of ``expected``;
    a name met twice (a switch's ports) has one value, so the first match is the right one."""
    if names == expected:
        return None
    pick, at = [], 0
    for name in names:
        while at < len(expected) and expected[at] != name:
            at += 1
        if at == len(expected):
            raise RuntimeError(f"device template slots {names} are not among {expected}")
        pick.append(at)
        at += 1
    found = tuple(pick)
    return _PICKS.setdefault(found, found)


def _template_text(payload: dict) -> tuple[str, tuple[str, ...]]:
    """(%-format text, slot names in text order) of a payload holding ``_Slot`` values."""
    names: list[str] = []

    def mark(slot: _Slot) -> str:
        names.append(slot.name)  # called in output order
        return _MARK

    text = json.dumps(payload, separators=(",", ":"), check_circular=False, default=mark)
    return text.replace("%", "%%").replace(_MARK_JSON, "%s"), tuple(names)


@functools.lru_cache(maxsize=64)
def _cpu_stat_text(cpu: int) -> str:
    return json.dumps({"idle": 100 - cpu, "user": cpu // 2, "system": cpu - cpu // 2, "interrupt": 0,
                       "load_avg": [round(cpu / 25, 2), round(cpu / 27, 2), round(cpu / 30, 2)]},
                      separators=(",", ":"))


class DeviceText:
    """One device of ``stats/devices`` for one scenario state: JSON text with %s slots (see above) and the
    per-device numbers the slots derive from."""

    __slots__ = ("boot", "cpu0", "g", "kind", "lag", "mem0", "n_up", "pick", "ports_up", "rank", "rate",
                 "site", "static", "text")

    def __init__(self, org: SimulatedOrg, g: int, state: ScenarioState, fields: frozenset[str] | None = None):
        """``fields``: the top-level fields kept (None: all; see :func:`device_fields`)."""
        site_i, pos = divmod(g, org.devices_per_site)
        site = org.sites[site_i]
        kind = org.layout[pos]
        mac = org.device_mac(g)
        name = org.device_name(g)
        h = mix(org.seed, g, 9)
        self.g, self.kind, self.site = g, kind, site_i
        serial_prefix = {"ap": "A07032", "switch": "FJ0324", "gateway": "CV0219"}[kind]
        out: dict = {"type": kind, "id": "00000000-0000-0000-1000-" + mac, "mac": mac, "name": name,
                     "model": org.device_model(g), "serial": f"{serial_prefix}{h % 10_000_000:07d}",
                     "version": state.version.get(g, VERSIONS[kind]), "site_id": site.id, "org_id": org.org_id,
                     "created_time": site.created + 3600 + 60 * pos, "modified_time": site.created + 20 * DAY}
        if kind != "ap":
            out["hostname"] = name
        down_since = state.down.get(g)
        self.static = down_since is not None or g in state.never
        if g in state.never:  # claimed into the site, never came up: no last_seen, no uptime
            out.update(status="disconnected", created_time=int(state.anchor) - DAY,
                       modified_time=int(state.anchor) - DAY)
            self.text = json.dumps(_kept(out, fields), separators=(",", ":"))
            return
        if down_since is not None:  # a disconnected device keeps only its identity (shape unconfirmed)
            out.update(status="disconnected", last_seen=int(down_since), uptime=0)
            self.text = json.dumps(_kept(out, fields), separators=(",", ":"))
            return
        boot = state.boot.get(g)
        if boot is None:
            boot = org._boot_ref - DAY * (2 + h % 88) - (h >> 8) % DAY
        self.boot = boot
        self.lag = (h >> 16) % 40
        self.cpu0 = 3 + (h >> 24) % 18  # + the hourly jitter
        self.mem0 = 25 + (h >> 32) % 30
        a, b = divmod(site_i, 256)
        ip = f"10.{a % 256}.{b}.{10 + pos}"
        self.rate = rate = 2000 + (h >> 40) % 20000
        slot = _SLOT
        out.update(status=state.status.get(g, "connected"), uptime=slot["uptime"], last_seen=slot["last_seen"],
                   ip=ip)
        if g in state.fwupdate:
            out["fwupdate"] = state.fwupdate[g]
        base = site_i * org.devices_per_site
        aps = [p for p, k in enumerate(org.layout) if k == "ap"]
        if kind == "ap":
            connected = [p for p in aps if base + p not in state.down]
            self.rank, self.n_up = connected.index(pos), len(connected)
            out.update(
                ext_ip=site.ext_ip, num_clients=slot["num_clients"], cpu_util=slot["cpu_util"],
                cpu_system=slot["cpu_system"], cpu_user=slot["cpu_user"], mem_used_kb=slot["mem_used_kb"],
                mem_total_kb=505468, power_src="PoE 802.3at", power_constrained=False, power_budget=8400,
                ip_stat={"ip": ip, "netmask": "255.255.255.0", "gateway": f"10.{a % 256}.{b}.1", "dns": ["10.0.0.53"]},
                port_stat={"eth0": {"up": True, "speed": 2500, "full_duplex": True, "rx_bytes": slot["port_rx_bytes"],
                                    "tx_bytes": slot["port_tx_bytes"], "rx_pkts": slot["port_rx_pkts"],
                                    "tx_pkts": slot["port_tx_pkts"], "rx_errors": 0}},
                radio_stat={
                    "band_24": {"channel": (1, 6, 11)[pos % 3], "bandwidth": 20, "power": 12, "noise_floor": -90,
                                "num_clients": slot["b24_clients"], "util_all": 10 + (h >> 12) % 30,
                                "tx_bytes": slot["b24_tx_bytes"], "rx_bytes": slot["b24_rx_bytes"]},
                    "band_5": {"channel": (36, 44, 52, 100)[pos % 4], "bandwidth": 40, "power": 15,
                               "noise_floor": -95, "num_clients": slot["b5_clients"], "util_all": 5 + (h >> 14) % 25,
                               "tx_bytes": slot["b5_tx_bytes"], "rx_bytes": slot["b5_rx_bytes"]}},
                rx_bps=rate, tx_bps=rate * 2, rx_bytes=slot["rx_bytes"], tx_bytes=slot["tx_bytes"],
                rx_pkts=slot["rx_pkts"], tx_pkts=slot["tx_pkts"])
            sw = org.device_pos("switch")
            if sw is not None:
                out["lldp_stat"] = {"system_name": org.device_name(base + sw), "port_id": f"ge-0/0/{pos + 1}",
                                    "port_desc": f"ge-0/0/{pos + 1}",
                                    "chassis_id": _colon_mac(org.device_mac(base + sw)),
                                    "power_draw": 9.5 + (h >> 18) % 40 / 10}
            expected = AP_SLOTS
        else:
            out.update(config_status="COMMITED", cpu_stat=slot["cpu_stat"], memory_stat={"usage": slot["memory"]})
            psu1 = "failed" if g in state.psu_failed else "ok"
            out["module_stat"] = [{
                "model": out["model"], "serial": out["serial"], "status": "ok",
                "psus": [{"name": "Power Supply 0", "status": "ok"}, {"name": "Power Supply 1", "status": psu1}],
                "fans": [{"name": "Fan 0", "status": "ok", "rpm": 6000 + h % 900, "airflow": "out"}],
                "temperatures": [{"name": "CPU", "status": "ok", "celsius": 40 + h % 15}]}]
            if kind == "switch":
                self.ports_up = sum(1 for p in aps if base + p not in state.down)
                if_stat = {}
                for p in aps:
                    up = base + p not in state.down
                    if_stat[f"ge-0/0/{p + 1}.0"] = {"port_id": f"ge-0/0/{p + 1}", "up": up,
                                                    **{n: slot[n] if up else 0 for n in SWITCH_PORT_SLOTS}}
                out.update(clients_stats={"total": {"num_aps": [self.ports_up],
                                                    "num_wired_clients": org.site_wired_clients(site_i)}},
                           if_stat=if_stat,
                           fwupdate=state.fwupdate.get(g) or {
                               "status": "upgraded", "progress": 100, "status_id": 3037,
                               "timestamp": float(site.created + 5 * DAY), "will_retry": False})
                expected = SWITCH_SLOTS + SWITCH_PORT_SLOTS * self.ports_up
            else:
                out.update(ip=site.ext_ip, ext_ip=site.ext_ip, is_ha=False,
                           spu_stat=[{"spu_cpu": slot["spu_cpu"], "spu_memory": slot["spu_memory"],
                                      "spu_current_session": 20 + (h >> 20) % 400, "spu_max_session": 32768,
                                      "spu_uptime": slot["spu_uptime"]}],
                           if_stat={"ge-0/0/0.0": {"port_id": "ge-0/0/0", "port_usage": "wan", "wan_name": "wan1",
                                                   "wan_type": "broadband",
                                                   "up": "wan1" not in state.wan_down.get(g, ()),
                                                   "rx_bytes": slot["rx_bytes"], "tx_bytes": slot["tx_bytes"],
                                                   "rx_pkts": slot["rx_pkts"], "tx_pkts": slot["tx_pkts"]},
                                    # the backup link carries little: its counters are not clock slots
                                    "ge-0/0/1.0": {"port_id": "ge-0/0/1", "port_usage": "wan", "wan_name": "wan2",
                                                   "wan_type": "lte", "up": "wan2" not in state.wan_down.get(g, ()),
                                                   "rx_bytes": h % 100_000, "tx_bytes": h % 70_000,
                                                   "rx_pkts": h % 1000, "tx_pkts": h % 700}})
                if site_i == 0:  # the HQ's gateway is an SRX chassis cluster: node1's stats as *2_stat
                    out.update(is_ha=True, node_name="node0", module2_stat=[
                        {**out["module_stat"][0], "serial": f"CV0220{h % 10_000_000:07d}",
                         "psus": [{"name": "Power Supply 0", "status": "ok"},
                                  {"name": "Power Supply 1", "status": "ok"}]}],
                        if2_stat={"ge-5/0/0.0": {"port_id": "ge-5/0/0", "port_usage": "wan", "wan_name": "wan1",
                                                 "wan_type": "broadband", "up": True, "rx_bytes": h % 90_000,
                                                 "tx_bytes": h % 60_000, "rx_pkts": h % 900, "tx_pkts": h % 600}})
                expected = GATEWAY_SLOTS
        self.text, names = _template_text(_kept(out, fields))
        if fields is None and names != expected:  # render() fills the slots by position
            raise RuntimeError(f"device template slots {names} differ from {expected}")
        self.pick = _pick(names, expected)  # render() computes the values of every slot, by position

    def render(self, now_ts: float, hour: int, site_clients: int) -> str:
        """The device's JSON at ``now_ts`` (``hour`` = now // 3600; ``site_clients`` of its site, APs only)."""
        if self.static:
            return self.text
        u = max(0, int(now_ts - self.boot))
        seen = int(now_ts) - self.lag
        jitter = mix(self.g, hour) % 7
        cpu, mem = self.cpu0 + jitter, self.mem0 + jitter
        ur = u * self.rate
        values: tuple
        if self.kind == "ap":
            share, extra = divmod(site_clients, self.n_up)
            clients = share + (1 if self.rank < extra else 0)
            b24 = clients // 5
            values = (u, seen, clients, cpu, u * 13, u * 5, 505468 * mem // 100, ur, ur * 2, u * 3, u * 4, b24,
                      ur // 10, ur // 20, clients - b24, ur, ur // 2, ur, ur * 2, u * 3, u * 4)
        elif self.kind == "switch":
            values = (u, seen, _cpu_stat_text(cpu), mem) + (u * 3, u * 4, ur, ur * 2) * self.ports_up
        else:
            values = (u, seen, _cpu_stat_text(cpu), mem, cpu // 4, mem, u, ur * 3, ur, u * 5, u * 4)
        if self.pick is not None:  # only some fields kept: their slots' values
            values = tuple(map(values.__getitem__, self.pick))
        return self.text % values


def _colon_mac(mac: str) -> str:
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2))


def device_stats_text(org: SimulatedOrg, devices: Iterable[int], now_ts: float, state: ScenarioState,
                      fields: frozenset[str] | None = None) -> str:
    """The JSON array of ``stats/devices`` for these global device indexes at ``now_ts``, each row with
    the top-level ``fields`` only (None: all; see :func:`device_fields`)."""
    texts = org.device_texts(state, fields)
    hour = int(now_ts // 3600)
    clients: dict[int, int] = {}  # site index -> clients, for its APs
    parts = []
    for g in devices:
        text = None if texts is None else texts[g]
        if text is None:
            text = DeviceText(org, g, state, fields)
            if texts is not None:
                texts[g] = text
        n = 0
        if text.kind == "ap" and not text.static:
            n = clients.get(text.site, -1)
            if n < 0:
                n = clients[text.site] = org.site_clients(text.site, now_ts, state)
        parts.append(text.render(now_ts, hour, n))
    return "[" + ",".join(parts) + "]"


def sle_result(org: SimulatedOrg, site: Site, kind: str, now_ts: float, state: ScenarioState) -> dict:
    i = site.index
    clients = org.site_clients(i, now_ts, state)
    if kind == "wifi":
        head = {"site_id": site.id, "num_aps": org.n_ap, "num_clients": clients}
    elif kind == "wired":
        head = {"site_id": site.id, "num_switches": org.layout.count("switch"),
                "num_clients": org.site_wired_clients(i)}
    else:
        head = {"site_id": site.id, "num_gateways": org.layout.count("gateway"),
                "num_clients": clients + org.site_wired_clients(i)}
    values = org.sle_values(i, kind, now_ts, state)
    if i % 2:  # the names live orgs send today next to the v1 ones the spec documents (and requires)
        values.update({CURRENT_SLE_NAMES[k]: v for k, v in values.items() if k in CURRENT_SLE_NAMES})
        if kind == "wan":
            values["gateway-bandwidth"] = round(0.95 + 0.05 * unit(org.seed, i, 5), 3)
    head.update(values)
    return head


def org_stats_payload(org: SimulatedOrg, now_ts: float, state: ScenarioState) -> dict:
    total = org.device_count
    coverage_ok = capacity_ok = minutes = 0.0
    for site in org.sites:
        values = org.sle_values(site.index, "wifi", now_ts, state, ("coverage", "capacity"))
        m = org.site_clients(site.index, now_ts, state) * 60.0
        minutes += m
        coverage_ok += m * values["coverage"]
        capacity_ok += m * values["capacity"]
    return {"id": org.org_id, "name": org.org_name, "msp_id": org.msp_id, "orggroup_ids": [],
            "alarmtemplate_id": org.alarmtemplate_id, "allow_mist": True, "session_expiry": 1440,
            "created_time": REF_EPOCH - 500 * DAY, "modified_time": REF_EPOCH, "num_sites": len(org.sites),
            "num_devices": total, "num_inventory": total, "num_devices_connected": total - len(state.down),
            "num_devices_disconnected": len(state.down),
            "sle": [{"path": "coverage", "user_minutes": {"ok": round(coverage_ok, 1), "total": minutes}},
                    {"path": "capacity", "user_minutes": {"ok": round(capacity_ok, 1), "total": minutes}}]}


def alarms_in(org: SimulatedOrg, start: float, end: float, now_ts: float, state: ScenarioState) -> list[dict]:
    """Alarms active at some point in [start, end] and already raised at ``now``, oldest first."""
    end = min(end, now_ts)
    out = []
    for day in range(int(start // DAY), int(end // DAY) + 1):
        for alarm in org.background("alarms", day):
            if alarm["resolved_time"] <= now_ts and alarm["timestamp"] <= end and alarm["last_seen"] >= start:
                out.append(alarm)
    for alarm in state.alarms:
        if alarm["last_seen"] is None:
            alarm = dict(alarm, last_seen=int(now_ts))
        if alarm["timestamp"] <= end and alarm["last_seen"] >= start:
            out.append(alarm)
    out.sort(key=lambda a: (a["timestamp"], a["id"]))
    return out


def events_in(org: SimulatedOrg, start: float, end: float, now_ts: float, state: ScenarioState) -> list[dict]:
    """Device events with a timestamp in [start, end] that Mist has indexed by ``now`` (some come late)."""
    end = min(end, now_ts)
    out = []
    for day in range(int(start // DAY), int(end // DAY) + 1):
        out.extend(e for e in org.background("events", day) if start <= e["timestamp"] <= end)
    for e in state.events:
        if start <= e["timestamp"] <= end and e.get("_indexed_at", 0) <= now_ts:
            out.append({k: v for k, v in e.items() if k != "_indexed_at"} if "_indexed_at" in e else e)
    out.sort(key=lambda e: (e["timestamp"], e["mac"], e["type"]))
    return out


# --- WAN paths and BGP peers ---------------------------------------------------------------------------

def _gateways(org: SimulatedOrg, state: ScenarioState) -> list[int]:
    """Global indexes of the branch gateways that report (site 0 is the hub they peer with)."""
    gw = org.device_pos("gateway")
    if gw is None or len(org.sites) < 2:
        return []
    dps = org.devices_per_site
    return [i * dps + gw for i in range(1, len(org.sites)) if i * dps + gw not in state.down]


def vpn_peer_rows(org: SimulatedOrg, now_ts: float, state: ScenarioState) -> list[dict]:
    """stats/vpn_peers/search rows: each branch gateway's two WAN links to the hub gateway."""
    gateways = _gateways(org, state)
    if not gateways:
        return []
    hub = org.device_pos("gateway")
    hub_mac, hub_name, hub_site = org.device_mac(hub), org.device_name(hub), org.sites[0].id
    rows = []
    for g in gateways:
        site = org.sites[g // org.devices_per_site]
        mac, name = org.device_mac(g), org.device_name(g)
        h = mix(org.seed, g, 41)
        for k, (port, wan, _) in enumerate(WAN_LINKS):
            over = state.vpn.get((g, wan), {})
            up = over.get("up", wan not in state.wan_down.get(g, ()))
            row = {"org_id": org.org_id, "site_id": site.id, "mac": mac, "router_name": name, "port_id": port,
                   "type": "ipsec", "peer_mac": hub_mac, "peer_router_name": hub_name, "peer_port_id": port,
                   "peer_site_id": hub_site, "up": up, "is_active": k == 0, "mtu": 1400,
                   "uptime": int(now_ts - REF_EPOCH) % (30 * DAY) if up else 0,
                   "last_seen": int(now_ts) - h % 50}
            if up:
                row.update(latency=over.get("latency", round(12 + h % 40 + 8 * k, 1)),
                           jitter=over.get("jitter", round(0.5 + (h >> 8) % 30 / 10, 1)),
                           loss=over.get("loss", 0.0), mos=over.get("mos", round(4.2 + (h >> 16) % 20 / 100, 2)))
            rows.append(row)
    return rows


def bgp_peer_rows(org: SimulatedOrg, now_ts: float, state: ScenarioState) -> list[dict]:
    """stats/bgp_peers/search rows: each branch gateway's overlay neighbor at the hub."""
    rows = []
    for g in _gateways(org, state):
        site_i = g // org.devices_per_site
        down = g in state.bgp_down
        rows.append({"org_id": org.org_id, "site_id": org.sites[site_i].id, "mac": org.device_mac(g),
                     "neighbor": "10.255.0.1", "neighbor_as": 65000, "local_as": 65001 + site_i % 1000,
                     "neighbor_mac": org.device_mac(org.device_pos("gateway")), "vrf_name": "default",
                     "state": "active" if down else "established", "up": not down,
                     "rx_routes": 0 if down else 10 + site_i % 50, "tx_routes": 4,
                     "rx_pkts": 1000 + site_i, "tx_pkts": 900 + site_i, "uptime": 0 if down else 86400,
                     "evpn_overlay": False, "for_overlay": True, "timestamp": round(now_ts - 30, 1)})
    return rows
