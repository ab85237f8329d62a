"""A Mist-compatible API on loopback, for tests, the demo and ``mistwatch simulate``.

``serve(SimulatedOrg(...))`` starts a real HTTP server (stdlib ``ThreadingHTTPServer`` in a daemon
thread) that answers, with the shapes of the real API (see shared/mist-api/README.md §1-§2), every
endpoint the Mist collector uses::

    GET /api/v1/self
    GET /api/v1/orgs/{org_id}/stats
    GET /api/v1/orgs/{org_id}/sites                      page/limit, X-Page-* headers
    GET /api/v1/orgs/{org_id}/stats/sites                page/limit, X-Page-* headers
    GET /api/v1/orgs/{org_id}/stats/devices              type (default ap; all|ap|switch|gateway, comma
                                                         list), status, site_id, mac, fields, page/limit
    GET /api/v1/orgs/{org_id}/insights/sites-sle         sle=wifi|wired|wan, page/limit (body + headers)
    GET /api/v1/orgs/{org_id}/alarms/search              status, site_id, type, severity, start/end/
                                                         duration, limit, sort; cursor ``next``
    GET /api/v1/orgs/{org_id}/devices/events/search      device_type (default ap), type, mac, site_id,
                                                         start/end/duration, limit, sort; cursor ``next``
    GET /api/v1/orgs/{org_id}/stats/vpn_peers/search     mac, site_id, type, start/end/duration, limit;
                                                         cursor ``next``
    GET /api/v1/orgs/{org_id}/stats/bgp_peers/search     mac, site_id, start/end/duration, limit; cursor
    GET /api/v1/sites/{site_id}/stats                    drill-down
    GET /api/v1/sites/{site_id}/stats/devices            drill-down, like the org call (every field)

Org-level ``stats/devices`` returns, like Mist, "only a subset of the available fields" unless asked:
without ``fields`` a row holds the high-level fields of ``simdata.DEFAULT_DEVICE_FIELDS`` (the real
subset is undocumented, so every nested or detail field is left out); ``fields=a,b`` adds those,
``fields=*`` gives everything. The site-level list has no ``fields`` parameter in the spec: every field.

Auth: ``Authorization: Token <token>``; otherwise 401. An org (or site) outside the token's privileges
gets 403, an unknown path 404, a bad parameter 400. Unused query parameters are ignored. Each token has
``hourly_budget`` calls (default 5,000, Mist's limit) per clock hour of the org's clock; past it every
call gets 429 without ``Retry-After`` (as Mist documents it) until the hour turns.

The data and the scenarios are described in ``mistwatch.plugins.mist.simdata`` (``healthy``, ``degraded`` - sites
index 1-4 only - and ``recovered``). Fault injection (``server.inject``) and call counters are for
tests of the client.
"""

from __future__ import annotations

import bisect
import fnmatch
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mistwatch.plugins.mist.simdata import (
    DAY,
    SCENARIOS,
    SimulatedOrg,
    alarms_in,
    bgp_peer_rows,
    device_fields,
    device_stats_text,
    down_by_site,
    events_in,
    org_stats_payload,
    site_payload,
    site_stats_payload,
    sle_result,
    vpn_peer_rows,
)

__all__ = ["FAULT_KINDS", "SCENARIOS", "SimulatedOrg", "SimulatorServer", "serve"]

FAULT_KINDS = ("429", "500", "502", "503", "slow", "malformed", "drop")
DETAIL_401 = "Authentication credentials were not provided."
DETAIL_403 = "You do not have permission to perform this action."
DETAIL_429 = "Too Many Request. The API Token used for the request reached the 5000 API Calls per hour threshold"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEVICE_TYPES = ("ap", "switch", "gateway")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}


class BadRequest(Exception):
    """A query parameter the real API would refuse: 400 with this detail."""


class Response:
    """A status, a body (a JSON value, or bytes already encoded as JSON) and extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}


class _Fault:
    __slots__ = ("delay", "glob", "kind", "remaining", "retry_after")

    def __init__(self, glob: str, kind: str, count: int, retry_after: float | None, delay: float | None):
        self.glob = glob
        self.kind = kind
        self.remaining = count
        self.retry_after = retry_after
        self.delay = delay


# --- query helpers ---------------------------------------------------------------------------------

def _int_param(query: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"invalid {name}: {raw!r}") from None
    if value < minimum:
        raise BadRequest(f"invalid {name}: {raw!r}")
    return value


def _limit(query: dict[str, str]) -> int:
    # limit=0 is accepted by the spec (minimum 0); treat it as the default. Above the max: capped.
    return min(_int_param(query, "limit", DEFAULT_LIMIT, 0) or DEFAULT_LIMIT, MAX_LIMIT)


def _duration(raw: str) -> int:
    m = _DURATION.match(raw.strip())
    if not m:
        raise BadRequest(f"invalid duration: {raw!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _time_param(raw: str, now_ts: float, name: str) -> float:
    raw = raw.strip()
    if raw == "now":
        return now_ts
    if raw.startswith("-"):
        return now_ts - _duration(raw[1:])
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"invalid {name}: {raw!r}") from None


def window(query: dict[str, str], now_ts: float) -> tuple[int, int]:
    """(start, end) epoch seconds from start/end/duration, like the search endpoints (default 1d)."""
    end = _time_param(query["end"], now_ts, "end") if query.get("end") else None
    start = _time_param(query["start"], now_ts, "start") if query.get("start") else None
    duration = _duration(query["duration"]) if query.get("duration") else None
    if start is None:
        end = now_ts if end is None else end
        start = end - (duration or DAY)
    elif end is None:
        end = min(now_ts, start + duration) if duration else now_ts
    if start > end:
        raise BadRequest("start is after end")
    return int(start), int(end)


def _csv(query: dict[str, str], name: str) -> list[str]:
    return [v.strip() for v in query.get(name, "").split(",") if v.strip()]


def _page(items_len: int, query: dict[str, str]) -> tuple[int, int, int, int]:
    """(limit, page, first index, end index) for page/limit pagination."""
    limit = _limit(query)
    page = _int_param(query, "page", 1, 1)
    first = min((page - 1) * limit, items_len)
    return limit, page, first, min(first + limit, items_len)


def _page_headers(limit: int, page: int, total: int) -> dict[str, str]:
    return {"X-Page-Limit": str(limit), "X-Page-Page": str(page), "X-Page-Total": str(total)}


# --- the API ---------------------------------------------------------------------------------------

class MistApi:
    """Routes a GET to a handler; pure apart from reading the org (no HTTP here)."""

    def __init__(self, org: SimulatedOrg, token: str):
        self.org = org
        self.token = token
        org_routes: list[tuple[str, Callable[[dict[str, str], str], Response]]] = [
            ("stats", self.org_stats),
            ("sites", self.sites),
            ("stats/sites", self.sites_stats),
            ("stats/devices", self.org_devices),
            ("insights/sites-sle", self.sites_sle),
            ("alarms/search", self.alarms_search),
            ("devices/events/search", self.events_search),
            ("stats/vpn_peers/search", self.vpn_peers_search),
            ("stats/bgp_peers/search", self.bgp_peers_search),
        ]
        self.org_routes = dict(org_routes)
        self.site_routes = {"stats": self.site_stats, "stats/devices": self.site_devices}
        self._hourly_lock = threading.Lock()
        self._hourly_stamp: tuple[Any, int] | None = None
        self._hourly_texts: dict[tuple, bytes] = {}
        self._peers: tuple[tuple[Any, int], dict[str, tuple[list, list]]] | None = None

    def handle(self, path: str, query: dict[str, str], authorization: str | None) -> Response:
        if authorization != f"Token {self.token}":
            return Response(401, {"detail": DETAIL_401})
        parts = path.rstrip("/").split("/")
        if parts[:3] != ["", "api", "v1"]:
            return Response(404, {"detail": "Not found."})
        rest = parts[3:]
        try:
            if rest == ["self"]:
                return self.self_()
            if len(rest) >= 3 and rest[0] == "orgs":
                fn = self.org_routes.get("/".join(rest[2:]))
                if fn is None:
                    return Response(404, {"detail": "Not found."})
                if rest[1] != self.org.org_id:
                    return Response(403, {"detail": DETAIL_403})
                return fn(query, path)
            if len(rest) >= 3 and rest[0] == "sites":
                fn = self.site_routes.get("/".join(rest[2:]))
                if fn is None:
                    return Response(404, {"detail": "Not found."})
                if self.org.site(rest[1]) is None:
                    return Response(403, {"detail": DETAIL_403})
                return fn(query, rest[1])
        except BadRequest as exc:
            return Response(400, {"detail": str(exc)})
        return Response(404, {"detail": "Not found."})

    # each handler reads the clock and the scenario state once, so one response is consistent
    def _snapshot(self) -> tuple[float, Any]:
        return self.org.now.timestamp(), self.org.state

    def _hourly(self, key: tuple, now_ts: float, state: Any, build: Callable[[], Any]) -> bytes:
        """The JSON text of ``build()``, cached for the scenario state and the hour: the per-site rows of
        stats/sites, sites-sle and clients/count change only with those, and rebuilding them cost most of
        a second of CPU per cycle at 10,000 sites. One state and hour are kept."""
        stamp = (state, int(now_ts // 3600))
        with self._hourly_lock:
            if self._hourly_stamp is None or self._hourly_stamp[0] is not state or self._hourly_stamp[1] != stamp[1]:
                self._hourly_stamp, self._hourly_texts = stamp, {}
            texts = self._hourly_texts
            text = texts.get(key)
        if text is None:  # built outside the lock: two requests may build the same text, harmlessly
            text = texts[key] = _dumps(build())
        return text

    def self_(self) -> Response:
        return Response(200, {"name": "mistwatch simulator (org token)", "privileges": [
            {"scope": "org", "role": "read", "org_id": self.org.org_id, "name": self.org.org_name}]})

    def org_stats(self, query: dict[str, str], path: str) -> Response:
        now_ts, state = self._snapshot()
        return Response(200, org_stats_payload(self.org, now_ts, state))

    def sites(self, query: dict[str, str], path: str) -> Response:
        sites = self.org.sites
        limit, page, first, last = _page(len(sites), query)
        body = [site_payload(self.org, s) for s in sites[first:last]]
        return Response(200, body, _page_headers(limit, page, len(sites)))

    def sites_stats(self, query: dict[str, str], path: str) -> Response:
        now_ts, state = self._snapshot()
        sites = self.org.sites
        limit, page, first, last = _page(len(sites), query)

        def build() -> list[dict]:
            down = down_by_site(self.org, state)
            return [site_stats_payload(self.org, s, now_ts, state, down) for s in sites[first:last]]

        body = self._hourly(("stats/sites", first, last), now_ts, state, build)
        return Response(200, body, _page_headers(limit, page, len(sites)))

    def site_stats(self, query: dict[str, str], site_id: str) -> Response:
        now_ts, state = self._snapshot()
        site = self.org.site(site_id)
        return Response(200, site_stats_payload(self.org, site, now_ts, state, down_by_site(self.org, state)))

    def _device_types(self, query: dict[str, str], name: str) -> list[str]:
        types = _csv(query, name) or ["ap"]  # the real API's default: APs only
        if "all" in types:
            return list(DEVICE_TYPES)
        for t in types:
            if t not in DEVICE_TYPES:
                raise BadRequest(f"invalid {name}: {t!r}")
        return types

    def _devices(self, query: dict[str, str], site_indexes: range, fields: frozenset[str] | None) -> Response:
        now_ts, state = self._snapshot()
        org = self.org
        types = self._device_types(query, "type")
        status = query.get("status", "all") or "all"
        if status not in ("all", "connected", "disconnected"):
            raise BadRequest(f"invalid status: {status!r}")
        dps = org.devices_per_site
        positions = [p for p, kind in enumerate(org.layout) if kind in types]
        if query.get("mac"):
            g = org.device_by_mac(query["mac"])
            matching: Any = [g] if g is not None and g // dps in site_indexes and g % dps in positions else []
        elif status == "disconnected":
            matching = sorted(g for g in state.down if g // dps in site_indexes and g % dps in positions)
        else:
            n = len(positions)
            first_site = site_indexes.start
            # the k-th device in (site, position) order, without a list of all devices
            matching = _IndexView(len(site_indexes) * n,
                                  lambda k: (first_site + k // n) * dps + positions[k % n])
            if status == "connected":
                matching = [g for g in matching if g not in state.down]
        limit, page, first, last = _page(len(matching), query)
        body = device_stats_text(org, (matching[k] for k in range(first, last)), now_ts, state, fields).encode()
        return Response(200, body, _page_headers(limit, page, len(matching)))

    def org_devices(self, query: dict[str, str], path: str) -> Response:
        fields = device_fields(query.get("fields"))  # the default subset unless asked for more
        if query.get("site_id"):
            site = self.org.site(query["site_id"])
            return self._devices(query, range(site.index, site.index + 1) if site else range(0), fields)
        return self._devices(query, range(len(self.org.sites)), fields)

    def site_devices(self, query: dict[str, str], site_id: str) -> Response:
        index = self.org.site(site_id).index
        query = {k: v for k, v in query.items() if k != "site_id"}
        return self._devices(query, range(index, index + 1), None)

    def sites_sle(self, query: dict[str, str], path: str) -> Response:
        now_ts, state = self._snapshot()
        kind = query.get("sle")
        if kind not in ("wifi", "wired", "wan"):
            raise BadRequest("sle must be one of wan, wifi, wired")
        start, end = window(query, now_ts)
        interval = _duration(query["interval"]) if query.get("interval") else 3600
        needs = {"wifi": "ap", "wired": "switch", "wan": "gateway"}[kind]
        sites = self.org.sites if needs in self.org.layout else []
        limit, page, first, last = _page(len(sites), query)
        results = self._hourly(("sites-sle", kind, first, last), now_ts, state, lambda: [
            sle_result(self.org, s, kind, now_ts, state) for s in sites[first:last]])
        head = {"start": start, "end": end, "interval": interval, "limit": limit, "page": page, "total": len(sites)}
        return Response(200, _with_results(head, results), _page_headers(limit, page, len(sites)))

    def _search(self, query: dict[str, str], path: str, items: list[dict],
                key: Callable[[dict], tuple[int, str]], start: int, end: int) -> Response:
        """Cursor pagination: ``next`` is a relative URL with ``search_after``, absent on the last page."""
        limit = _limit(query)
        descending = query.get("sort", "").startswith("-")
        ordered = sorted(items, key=key, reverse=descending)
        total = len(ordered)
        if query.get("search_after"):
            try:
                after = tuple(json.loads(query["search_after"]))
            except (ValueError, TypeError):
                raise BadRequest("invalid search_after") from None
            ordered = [x for x in ordered if (key(x) < after if descending else key(x) > after)]
        page = ordered[:limit]
        body: dict[str, Any] = {"start": start, "end": end, "limit": limit, "total": total, "results": page}
        if len(ordered) > limit:
            params = {k: v for k, v in query.items() if k not in ("search_after", "duration", "page")}
            params.update(start=str(start), end=str(end), limit=str(limit),
                          search_after=json.dumps(list(key(page[-1]))))
            body["next"] = f"{path}?{urlencode(sorted(params.items()))}"
        return Response(200, body)

    def alarms_search(self, query: dict[str, str], path: str) -> Response:
        now_ts, state = self._snapshot()
        start, end = window(query, now_ts)
        alarms = alarms_in(self.org, start, end, now_ts, state)
        for name in ("status", "site_id", "type", "severity", "group"):
            wanted = set(_csv(query, name))
            if wanted:
                alarms = [a for a in alarms if a.get(name) in wanted]
        if query.get("acked") in ("true", "false"):
            alarms = [a for a in alarms if a.get("acked") == (query["acked"] == "true")]
        return self._search(query, path, alarms, lambda a: (int(a["timestamp"] * 1000), a["id"]), start, end)

    def _peer_rows(self, kind: str, now_ts: float, state: Any) -> tuple[list, list]:
        """(sorted keys, rows) of the vpn or bgp peer rows, built once per state and minute: at 10,000
        sites they are 20,000 rows, asked page by page."""
        stamp = (state, int(now_ts // 60))
        with self._hourly_lock:
            cached = self._peers
            if cached is None or cached[0][0] is not state or cached[0][1] != stamp[1]:
                cached = self._peers = (stamp, {})
            found = cached[1].get(kind)
        if found is None:
            if kind == "vpn":
                rows = vpn_peer_rows(self.org, now_ts, state)
                keyed = sorted(((0, f"{r['mac']}:{r['port_id']}:{r['peer_mac']}"), r) for r in rows)
            else:
                rows = bgp_peer_rows(self.org, now_ts, state)
                keyed = sorted(((0, f"{r['mac']}:{r['vrf_name']}:{r['neighbor']}"), r) for r in rows)
            found = cached[1][kind] = ([k for k, _ in keyed], [r for _, r in keyed])
        return found

    def _peers_search(self, kind: str, query: dict[str, str], path: str) -> Response:
        now_ts, state = self._snapshot()
        start, end = window(query, now_ts)
        keys, rows = self._peer_rows(kind, now_ts, state)
        filters = [(name, set(_csv(query, name))) for name in ("mac", "site_id", "type") if _csv(query, name)]
        if filters:
            pairs = [(k, r) for k, r in zip(keys, rows, strict=True)
                     if all(r.get(name) in wanted for name, wanted in filters)]
            keys, rows = [k for k, _ in pairs], [r for _, r in pairs]
        limit = _limit(query)
        first = 0
        if query.get("search_after"):
            try:
                after = tuple(json.loads(query["search_after"]))
            except (ValueError, TypeError):
                raise BadRequest("invalid search_after") from None
            first = bisect.bisect_right(keys, after)
        page = rows[first:first + limit]
        body: dict[str, Any] = {"start": start, "end": end, "limit": limit, "total": len(rows), "results": page}
        if first + limit < len(rows):
            params = {k: v for k, v in query.items() if k not in ("search_after", "duration", "page")}
            params.update(start=str(start), end=str(end), limit=str(limit),
                          search_after=json.dumps(list(keys[first + limit - 1])))
            body["next"] = f"{path}?{urlencode(sorted(params.items()))}"
        return Response(200, body)

    def vpn_peers_search(self, query: dict[str, str], path: str) -> Response:
        vpn_type = query.get("type")
        if vpn_type and not set(_csv(query, "type")) <= {"ipsec", "svr"}:
            raise BadRequest(f"invalid type: {vpn_type!r}")
        return self._peers_search("vpn", query, path)

    def bgp_peers_search(self, query: dict[str, str], path: str) -> Response:
        return self._peers_search("bgp", {k: v for k, v in query.items() if k != "type"}, path)

    def events_search(self, query: dict[str, str], path: str) -> Response:
        now_ts, state = self._snapshot()
        start, end = window(query, now_ts)
        types = set(self._device_types(query, "device_type"))
        events = [e for e in events_in(self.org, start, end, now_ts, state) if e["device_type"] in types]
        for name in ("type", "mac", "site_id"):
            wanted = set(_csv(query, name))
            if wanted:
                events = [e for e in events if e.get(name) in wanted]
        return self._search(query, path, events,
                            lambda e: (int(e["timestamp"] * 1000), f"{e['mac']}:{e['type']}"), start, end)


class _IndexView:
    """A read-only sequence computed from an index (no list of 60,000 devices per request)."""

    def __init__(self, length: int, item: Callable[[int], int]):
        self._len = length
        self._item = item

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> int:
        if not 0 <= k < self._len:
            raise IndexError(k)
        return self._item(k)

    def __iter__(self):
        return (self._item(k) for k in range(self._len))


# --- the HTTP server -------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API behind a load balancer
    server_version = "mistwatch-simulator"
    sim: SimulatorServer  # set on the per-server subclass
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    timeout = 60  # an idle keep-alive connection does not hold a thread forever

    def setup(self) -> None:
        super().setup()
        self.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and the CLI print their own
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        if method != "GET":
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
        fault = self.sim._record(method, path, query)
        if fault is None and self.sim._over_budget(self.headers.get("Authorization")):
            self._send(429, _dumps({"detail": DETAIL_429}), {})  # no Retry-After, as Mist documents it
            return
        if fault is not None:
            if fault.kind == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.kind == "slow":
                time.sleep(1.0 if fault.delay is None else fault.delay)
            elif fault.kind == "malformed":
                self._send(200, b'{"results": [{"id": "00000000-0000', {})
                return
            elif fault.kind == "429":
                headers = {} if fault.retry_after is None else {"Retry-After": _retry_after(fault.retry_after)}
                self._send(429, _dumps({"detail": DETAIL_429}), headers)
                return
            else:
                self._send(int(fault.kind), _dumps({"detail": f"simulated HTTP {fault.kind}"}), {})
                return
        if method != "GET":
            self._send(405, _dumps({"detail": f'Method "{method}" not allowed.'}), {"Allow": "GET"})
            return
        response = self.sim.api.handle(path, query, self.headers.get("Authorization"))
        body = response.body if isinstance(response.body, bytes) else _dumps(response.body)
        self._send(response.status, body, response.headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), check_circular=False).encode()


def _with_results(head: dict, results: bytes) -> bytes:
    """The JSON of ``head`` with a last key "results" whose value is JSON text already."""
    return _dumps(head)[:-1] + b',"results":' + results + b"}"


def _retry_after(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (timeout, closed socket) is normal in fault tests: no traceback
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _V6Server(_Server):
    address_family = socket.AF_INET6


class SimulatorServer:
    """A running simulator. ``url`` is the host root; clients add ``/api/v1/...``."""

    def __init__(self, org: SimulatedOrg, host: str, port: int, token: str, hourly_budget: int | None = 5000):
        self.org = org
        self.token = token
        self.api = MistApi(org, token)
        self.hourly_budget = hourly_budget
        self._hour_calls: dict[tuple[str, int], int] = {}
        self.calls = 0
        self.calls_by_path: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        handler = type("SimulatorHandler", (_Handler,), {"sim": self})
        server_cls = _V6Server if ":" in host else _Server
        self._httpd = server_cls((host, port), handler)
        bound_host, bound_port = self._httpd.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.host = str(bound_host)
        self.port = int(bound_port)
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mist-simulator:{self.port}", daemon=True)
        self._thread.start()
        self._closed = False

    # --- faults and counters ------------------------------------------------------------------------
    def inject(self, path_glob: str, kind: str | int, count: int = 1, retry_after: float | None = None,
               delay: float | None = None) -> None:
        """Make the next ``count`` requests whose path (no query) matches ``path_glob`` fail as ``kind``:
        429 (optional Retry-After), 500/502/503, slow (sleep ``delay`` s, then answer), malformed
        (200 with cut JSON), drop (close the connection without a response)."""
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(_Fault(path_glob, kind, count, retry_after, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.calls = 0
            self.calls_by_path = Counter()
            self.requests = []

    def _record(self, method: str, path: str, query: dict[str, str]) -> _Fault | None:
        with self._lock:
            self.calls += 1
            self.calls_by_path[path] += 1
            self.requests.append((method, path, query))
            for fault in self._faults:
                if fault.remaining > 0 and fnmatch.fnmatchcase(path, fault.glob):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _over_budget(self, authorization: str | None) -> bool:
        """Count a call of this token in the org clock's hour; True once the hour's budget is spent."""
        if not authorization or self.hourly_budget is None:
            return False
        key = (authorization, int(self.org.now.timestamp() // 3600))
        with self._lock:
            if len(self._hour_calls) > 64:
                self._hour_calls.clear()
            used = self._hour_calls[key] = self._hour_calls.get(key, 0) + 1
        return used > self.hourly_budget

    def calls_this_hour(self, token: str | None = None) -> int:
        """Calls of ``token`` (default: the simulator's) in the current hour of the org's clock."""
        key = (f"Token {token or self.token}", int(self.org.now.timestamp() // 3600))
        with self._lock:
            return self._hour_calls.get(key, 0)

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # --- webhooks -----------------------------------------------------------------------------------
    def updown_webhook(self, g: int, *, connected: bool = False, at: float | None = None) -> bytes:
        """A ``device-updowns`` body for device ``g`` of the simulated org, as Mist would send it."""
        from mistwatch.plugins.mist.webhook import sample

        site = self.org.sites[g // self.org.devices_per_site]
        return sample(self.org.org_id, site.id, self.org.device_mac(g), connected=connected, at=at,
                      site_name=site.name, device_name=self.org.device_name(g), device_type=self.org.device_type(g))

    def send_webhook(self, url: str, secret: str, body: bytes, *, session: Any = None) -> Any:
        """POST ``body`` to ``url`` signed with ``secret`` (``X-Mist-Signature-v2``), as Mist does."""
        import requests

        from mistwatch.plugins.mist.webhook import sign

        return (session or requests).post(url, data=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Mist-Signature-v2": sign(secret, body)})

    # --- life cycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # idle keep-alive connections: end them so their threads exit
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimulatorServer(url={self.url!r}, org_id={self.org.org_id!r}, sites={len(self.org.sites)})"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(org: SimulatedOrg, *, host: str = "127.0.0.1", port: int = 0, token: str = "sim-token",
          hourly_budget: int | None = 5000) -> SimulatorServer:
    """Start the simulator on ``host:port`` (port 0: a free one). Loopback only: this is a test server.
    ``hourly_budget``: calls per token and clock hour before 429 (None: unlimited)."""
    if not _is_loopback(host):
        raise ValueError(f"the simulator binds loopback addresses only, not {host!r}")
    if not token:
        raise ValueError("token must not be empty")
    if host == "localhost":
        host = "127.0.0.1"
    return SimulatorServer(org, host, port, token, hourly_budget)
