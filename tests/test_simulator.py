"""The Mist API simulator: real HTTP over loopback, checked against the Mist OpenAPI subset."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import requests
from click.testing import CliRunner

from mistwatch.plugins.mist.collector import DEVICE_FIELDS
from mistwatch.plugins.mist.simdata import DEFAULT_DEVICE_FIELDS, device_fields
from mistwatch.plugins.mist.simulator import SCENARIOS, SimulatedOrg, serve

SHARED_API = Path(__file__).resolve().parents[2] / "shared" / "mist-api"
DAY1 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday, 09:00 UTC


def api(server, path: str, token: str | None = None, **params):
    """GET <server>/api/v1/<path with {org}>; returns the requests.Response."""
    headers = {"Authorization": f"Token {token or server.token}"}
    url = f"{server.url}/api/v1/{path.format(org=server.org.org_id)}"
    return requests.get(url, params=params, headers=headers, timeout=10)


def get_json(server, path: str, **params):
    response = api(server, path, **params)
    assert response.status_code == 200, response.text
    return response.json()


def follow(server, first: dict) -> list[dict]:
    """All results of a cursor search: follow the relative ``next`` URL until it is absent."""
    results, body = list(first["results"]), first
    while "next" in body:
        assert body["next"].startswith("/api/v1/")
        response = requests.get(server.url + body["next"], headers={"Authorization": f"Token {server.token}"},
                                timeout=10)
        assert response.status_code == 200
        body = response.json()
        results.extend(body["results"])
    return results


# --- the spec ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spec():
    """(validator module, relaxed spec document) from shared/mist-api, relaxed as validate_examples.py does."""
    script = SHARED_API / "validate_examples.py"
    if not script.is_file() or not (SHARED_API / "monitoring-subset.json").is_file():
        pytest.skip(f"shared Mist API folder not found beside the repository ({SHARED_API.parent.name}/mist-api)")
    module_spec = importlib.util.spec_from_file_location("mist_validate_examples", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    doc = json.loads((SHARED_API / "monitoring-subset.json").read_text())
    return module, module.relax(copy.deepcopy(doc))


def assert_valid(spec, spec_path: str, payload) -> None:
    module, doc = spec
    name = module.response_schema_name(doc, spec_path)
    errors = list(module.build_validator(doc, name).iter_errors(payload))
    messages = []
    for err in errors[:3]:
        if err.context:
            err = module.best_match(err.context)
        messages.append(f"{'/'.join(map(str, err.absolute_path))}: {err.message[:200]}")
    assert not errors, f"{spec_path} vs {name}: {messages}"


# (spec path, request path, params) for every endpoint the collector uses, plus drill-down
PAGED = [
    ("/api/v1/orgs/{org_id}/sites", "orgs/{org}/sites", {}),
    ("/api/v1/orgs/{org_id}/stats/sites", "orgs/{org}/stats/sites", {}),
    ("/api/v1/orgs/{org_id}/stats/devices", "orgs/{org}/stats/devices", {"type": "all"}),
    ("/api/v1/orgs/{org_id}/stats/devices", "orgs/{org}/stats/devices", {}),
    ("/api/v1/orgs/{org_id}/stats/devices", "orgs/{org}/stats/devices", {"type": "all", "fields": "*"}),
    ("/api/v1/orgs/{org_id}/stats/devices", "orgs/{org}/stats/devices",
     {"type": "all", "fields": ",".join(DEVICE_FIELDS)}),
    ("/api/v1/orgs/{org_id}/insights/sites-sle", "orgs/{org}/insights/sites-sle", {"sle": "wifi"}),
    ("/api/v1/orgs/{org_id}/insights/sites-sle", "orgs/{org}/insights/sites-sle", {"sle": "wired"}),
    ("/api/v1/orgs/{org_id}/insights/sites-sle", "orgs/{org}/insights/sites-sle", {"sle": "wan"}),
]
SEARCHES = [
    ("/api/v1/orgs/{org_id}/alarms/search", "orgs/{org}/alarms/search", {"duration": "7d"}),
    ("/api/v1/orgs/{org_id}/alarms/search", "orgs/{org}/alarms/search", {"status": "open"}),
    ("/api/v1/orgs/{org_id}/devices/events/search", "orgs/{org}/devices/events/search",
     {"device_type": "all", "duration": "2d"}),
    ("/api/v1/orgs/{org_id}/stats/vpn_peers/search", "orgs/{org}/stats/vpn_peers/search", {"duration": "1h"}),
]
BGP_SPEC = Path(__file__).resolve().parent / "data" / "bgp_peers_search.openapi.json"


def assert_valid_bgp_search(payload) -> None:
    """stats/bgp_peers/search is not in the shared subset: its schema comes from the official spec
    (tests/data/bgp_peers_search.openapi.json, extracted verbatim; relaxed like the subset)."""
    doc = json.loads(BGP_SPEC.read_text())
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        schema.pop("additionalProperties", None)
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/response_search_bgps", "components": {"schemas": schemas}})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(payload)]
    assert not errors, errors


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_endpoint_matches_the_spec_in_every_scenario(spec, make_simulator, scenario):
    server = make_simulator(sites=12, now=DAY1)
    server.org.now = DAY1 + timedelta(days=1)
    server.org.set_scenario(scenario)
    assert_valid(spec, "/api/v1/self", get_json(server, "self"))
    assert_valid(spec, "/api/v1/orgs/{org_id}/stats", get_json(server, "orgs/{org}/stats"))
    for spec_path, path, params in PAGED:
        for page in (1, 2, 3):
            body = get_json(server, path, limit=5, page=page, **params)
            assert_valid(spec, spec_path, body)
    for spec_path, path, params in SEARCHES:
        body = get_json(server, path, limit=3, **params)
        assert_valid(spec, spec_path, body)
        assert_valid(spec, spec_path, {**body, "results": follow(server, body)})
    bgp = get_json(server, "orgs/{org}/stats/bgp_peers/search", limit=3, duration="1h")
    assert bgp["results"] and "next" in bgp
    assert_valid_bgp_search(bgp)
    assert_valid_bgp_search({**bgp, "results": follow(server, bgp)})
    for site_id in server.org.site_ids()[:6]:
        assert_valid(spec, "/api/v1/sites/{site_id}/stats", get_json(server, f"sites/{site_id}/stats"))
        assert_valid(spec, "/api/v1/sites/{site_id}/stats/devices",
                     get_json(server, f"sites/{site_id}/stats/devices", type="all"))


def test_disconnected_devices_match_the_spec(spec, make_simulator):
    server = make_simulator(sites=6, scenario="degraded")
    body = get_json(server, "orgs/{org}/stats/devices", type="all", status="disconnected")
    assert {d["type"] for d in body} == {"ap", "switch", "gateway"}
    assert_valid(spec, "/api/v1/orgs/{org_id}/stats/devices", body)


# --- pagination ---------------------------------------------------------------------------------------

def test_device_stats_2500_devices_come_in_3_pages_of_at_most_1000(make_simulator):
    server = make_simulator(sites=500, devices_per_site=5)
    ids, sizes = set(), []
    for page in (1, 2, 3, 4):
        response = api(server, "orgs/{org}/stats/devices", type="all", limit=1000, page=page)
        assert response.headers["X-Page-Total"] == "2500"
        assert response.headers["X-Page-Limit"] == "1000"
        assert response.headers["X-Page-Page"] == str(page)
        sizes.append(len(response.json()))
        ids.update(d["id"] for d in response.json())
    assert sizes == [1000, 1000, 500, 0]
    assert len(ids) == 2500


def test_page_limit_defaults_to_100_and_is_capped_at_1000(make_simulator):
    server = make_simulator(sites=1200)
    default = api(server, "orgs/{org}/sites")
    assert len(default.json()) == 100 and default.headers["X-Page-Limit"] == "100"
    capped = api(server, "orgs/{org}/stats/sites", limit=5000)
    assert len(capped.json()) == 1000 and capped.headers["X-Page-Limit"] == "1000"
    assert capped.headers["X-Page-Total"] == "1200"


def test_sites_sle_echoes_limit_page_total_in_body_and_headers(make_simulator):
    server = make_simulator(sites=7)
    response = api(server, "orgs/{org}/insights/sites-sle", sle="wired", limit=3, page=3)
    body = response.json()
    assert (body["limit"], body["page"], body["total"]) == (3, 3, 7)
    assert len(body["results"]) == 1
    assert response.headers["X-Page-Total"] == "7" and response.headers["X-Page-Page"] == "3"


def test_clients_count_by_site_id_is_not_served_because_the_spec_does_not_document_it(simulator):
    assert api(simulator, "orgs/{org}/clients/count", distinct="site_id").status_code == 404


def test_vpn_and_bgp_peer_searches_page_with_next_and_agree_with_the_gateways(make_simulator):
    server = make_simulator(sites=30, now=DAY1)
    first = get_json(server, "orgs/{org}/stats/vpn_peers/search", limit=7, duration="1h")
    paths = follow(server, first)
    assert first["total"] == len(paths) == 2 * 29  # two WAN links per branch gateway to the hub (site 0)
    assert len({(p["mac"], p["port_id"]) for p in paths}) == len(paths)
    bgp = follow(server, get_json(server, "orgs/{org}/stats/bgp_peers/search", limit=7, duration="1h"))
    assert len(bgp) == 29 and {b["state"] for b in bgp} == {"established"}
    gateways = {d["mac"]: d for d in get_json(server, "orgs/{org}/stats/devices", type="gateway", limit=1000)}
    assert {p["mac"] for p in paths} | {b["mac"] for b in bgp} <= set(gateways)


def test_alarm_search_next_is_relative_and_absent_on_the_last_page(make_simulator):
    server = make_simulator(sites=200, now=DAY1)
    everything = get_json(server, "orgs/{org}/alarms/search", duration="3d", limit=1000)
    assert "next" not in everything
    assert everything["total"] == len(everything["results"]) > 5
    first = get_json(server, "orgs/{org}/alarms/search", duration="3d", limit=2)
    assert first["total"] == everything["total"]
    query = parse_qs(urlsplit(first["next"]).query)
    assert urlsplit(first["next"]).path == f"/api/v1/orgs/{server.org.org_id}/alarms/search"
    assert "search_after" in query and query["limit"] == ["2"]
    assert [a["id"] for a in follow(server, first)] == [a["id"] for a in everything["results"]]


def test_search_next_keeps_the_filters_of_the_first_request(make_simulator):
    server = make_simulator(sites=400, now=DAY1)
    first = get_json(server, "orgs/{org}/devices/events/search", device_type="switch", duration="2d", limit=2)
    assert "device_type=switch" in first["next"]
    results = follow(server, first)
    assert len(results) == first["total"] > 2
    assert {e["device_type"] for e in results} == {"switch"}


def test_search_window_takes_epoch_start_and_end(make_simulator):
    server = make_simulator(sites=400, now=DAY1)
    start, end = int(DAY1.timestamp()) - 6 * 3600, int(DAY1.timestamp()) - 3600
    body = get_json(server, "orgs/{org}/devices/events/search", device_type="all", start=start, end=end,
                    limit=1000)
    assert (body["start"], body["end"]) == (start, end)
    assert body["results"] and all(start <= e["timestamp"] <= end for e in body["results"])


def test_search_window_defaults_to_the_last_day_before_now(simulator):
    simulator.org.now = DAY1
    body = get_json(simulator, "orgs/{org}/alarms/search")
    assert body["end"] == int(DAY1.timestamp()) and body["end"] - body["start"] == 86400


# --- filters ------------------------------------------------------------------------------------------

def test_device_stats_type_defaults_to_ap_like_the_real_api(simulator):
    devices = get_json(simulator, "orgs/{org}/stats/devices", limit=1000)
    assert len(devices) == 12 * 4 and {d["type"] for d in devices} == {"ap"}


@pytest.mark.parametrize(("type_", "expected"), [
    ("all", {"ap": 48, "switch": 12, "gateway": 12}),
    ("switch", {"switch": 12}),
    ("switch,gateway", {"switch": 12, "gateway": 12}),
])
def test_device_stats_type_filter(simulator, type_, expected):
    devices = get_json(simulator, "orgs/{org}/stats/devices", type=type_, limit=1000)
    counts: dict[str, int] = {}
    for d in devices:
        counts[d["type"]] = counts.get(d["type"], 0) + 1
    assert counts == expected


def test_device_stats_status_filter(make_simulator):
    server = make_simulator(sites=12, scenario="degraded")
    down = get_json(server, "orgs/{org}/stats/devices", type="all", status="disconnected")
    up = get_json(server, "orgs/{org}/stats/devices", type="all", status="connected", limit=1000)
    assert len(down) == 5 and {d["status"] for d in down} == {"disconnected"}
    assert len(up) == 72 - 5 and {d["status"] for d in up} == {"connected"}


# Org-level stats/devices "only returns a subset of the available fields" unless asked (spec tag text);
# the subset is undocumented, so the simulator keeps high-level fields only (DEFAULT_DEVICE_FIELDS).

def test_org_device_stats_without_fields_lack_every_nested_or_detail_field(make_simulator):
    server = make_simulator(sites=6, now=DAY1, scenario="wan-link-failure")
    devices = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000)
    assert {d["type"] for d in devices} == {"ap", "switch", "gateway"}
    for device in devices:
        assert set(device) <= DEFAULT_DEVICE_FIELDS
        assert not {"if_stat", "module_stat", "radio_stat", "cpu_stat", "fwupdate"} & set(device)
        assert {"id", "mac", "type", "status", "last_seen", "uptime"} <= set(device)


def test_org_device_stats_with_fields_add_exactly_the_fields_named(make_simulator):
    server = make_simulator(sites=6, now=DAY1, scenario="degraded")
    named = {"if_stat", "module_stat", "radio_stat", "cpu_stat", "spu_stat", "port_stat"}
    full = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000, fields="*")
    asked = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000, fields=",".join(sorted(named)))
    # the same rows cut to the default subset plus the fields named, clock-dependent values included
    assert asked == [{k: v for k, v in d.items() if k in DEFAULT_DEVICE_FIELDS | named} for d in full]
    assert {k for d in asked for k in d} >= named


def test_org_device_stats_with_fields_star_return_every_field(make_simulator):
    server = make_simulator(sites=6, now=DAY1)
    site_id = server.org.site_ids()[1]
    everything = get_json(server, "orgs/{org}/stats/devices", type="all", site_id=site_id, fields="*")
    assert everything == get_json(server, f"sites/{site_id}/stats/devices", type="all")
    assert {"if_stat", "module_stat", "radio_stat", "lldp_stat", "ip_stat"} <= {k for d in everything for k in d}


def test_device_texts_are_kept_for_the_last_four_field_sets_asked():
    org = SimulatedOrg(sites=2, now=DAY1)
    state = org.state
    asked = [device_fields(name) for name in ("if_stat", "module_stat", "radio_stat", "cpu_stat", "fwupdate")]
    texts = [org.device_texts(state, fields) for fields in asked]
    assert org.device_texts(state, asked[-1]) is texts[-1]  # kept
    assert org.device_texts(state, asked[0]) is not texts[0]  # the oldest made room for the fifth


def test_device_ids_and_macs_agree_across_endpoints(make_simulator):
    server = make_simulator(sites=12, scenario="degraded")
    server.org.now = datetime.now(timezone.utc)  # frozen: last_seen must not tick between the two calls
    devices = {d["mac"]: d for d in get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000,
                                             fields="*")}
    for d in devices.values():
        assert d["id"] == "00000000-0000-0000-1000-" + d["mac"]
    events = get_json(server, "orgs/{org}/devices/events/search", device_type="all", duration="1h")["results"]
    for event in events:
        assert devices[event["mac"]]["name"] == event["device_name"]
        assert devices[event["mac"]]["site_id"] == event["site_id"]
    site_id = server.org.site_ids()[1]
    drill = get_json(server, f"sites/{site_id}/stats/devices", type="all")
    assert drill == [d for d in devices.values() if d["site_id"] == site_id]
    assert get_json(server, "orgs/{org}/stats/devices", mac=drill[0]["mac"], fields="*") == [drill[0]]


def test_site_stats_counts_agree_with_device_stats(make_simulator):
    server = make_simulator(sites=12, scenario="degraded")
    devices = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000)
    for site in get_json(server, "orgs/{org}/stats/sites"):
        mine = [d for d in devices if d["site_id"] == site["id"]]
        assert site["num_ap"] == sum(d["type"] == "ap" for d in mine)
        assert site["num_ap_connected"] == sum(d["type"] == "ap" and d["status"] == "connected" for d in mine)
        assert site["num_devices_connected"] == sum(d["status"] == "connected" for d in mine)
        assert site["num_clients"] == sum(d.get("num_clients", 0) for d in mine)


# --- auth and errors ----------------------------------------------------------------------------------

def test_missing_or_wrong_token_gets_401(simulator):
    missing = requests.get(f"{simulator.url}/api/v1/self", timeout=5)
    wrong = api(simulator, "self", token="not-the-token")
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json() == {"detail": "Authentication credentials were not provided."}


def test_self_lists_the_org_in_the_token_privileges(simulator):
    body = get_json(simulator, "self")
    assert body["privileges"] == [{"scope": "org", "role": "read", "org_id": simulator.org.org_id,
                                   "name": "Acme Retail"}]


def test_org_outside_the_token_privileges_gets_403(simulator):
    response = api(simulator, "orgs/9f3c2a1e-5b7d-4c8e-a1f2-3d4e5f6a7b8c/stats/devices")
    assert response.status_code == 403
    assert response.json() == {"detail": "You do not have permission to perform this action."}
    assert api(simulator, "sites/9f3c2a1e-5b7d-4c8e-a1f2-3d4e5f6a7b8c/stats").status_code == 403


def test_unknown_path_gets_404(simulator):
    assert api(simulator, "orgs/{org}/no-such-thing").status_code == 404
    assert api(simulator, "nothing").status_code == 404


def test_bad_parameters_get_400(simulator):
    assert api(simulator, "orgs/{org}/insights/sites-sle").status_code == 400
    assert api(simulator, "orgs/{org}/stats/devices", type="router").status_code == 400
    assert api(simulator, "orgs/{org}/alarms/search", duration="forever").status_code == 400
    assert api(simulator, "orgs/{org}/sites", page="0").status_code == 400


def test_unused_query_parameters_are_ignored(simulator):
    plain = get_json(simulator, "orgs/{org}/stats/sites")
    assert get_json(simulator, "orgs/{org}/stats/sites", fields="*", evpn_unused="true") == plain


def test_serve_refuses_non_loopback_addresses():
    org = SimulatedOrg(sites=1)
    for host in ("0.0.0.0", "192.0.2.10", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            serve(org, host=host)


# --- faults and counters ------------------------------------------------------------------------------

def test_429_fault_with_retry_after_then_normal_again(simulator):
    simulator.inject("*/stats/devices", 429, count=2, retry_after=7)
    for _ in range(2):
        response = api(simulator, "orgs/{org}/stats/devices")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert "5000 API Calls per hour" in response.json()["detail"]
    assert api(simulator, "orgs/{org}/stats/devices").status_code == 200


def test_429_fault_without_retry_after_sends_no_header(simulator):
    simulator.inject("/api/v1/self", "429")
    response = api(simulator, "self")
    assert response.status_code == 429 and "Retry-After" not in response.headers


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_faults(simulator, status):
    simulator.inject("*/sites", status)
    assert api(simulator, "orgs/{org}/sites").status_code == status
    assert api(simulator, "orgs/{org}/sites").status_code == 200


def test_fault_applies_only_to_matching_paths(simulator):
    simulator.inject("*/alarms/search", 503)
    assert api(simulator, "orgs/{org}/sites").status_code == 200
    assert api(simulator, "orgs/{org}/alarms/search").status_code == 503


def test_slow_fault_delays_the_answer(simulator):
    simulator.inject("*/stats/sites", "slow", delay=0.3)
    started = time.monotonic()
    response = api(simulator, "orgs/{org}/stats/sites")
    assert response.status_code == 200 and time.monotonic() - started >= 0.3
    with pytest.raises(requests.Timeout):
        simulator.inject("*/stats/sites", "slow", delay=1.0)
        requests.get(f"{simulator.url}/api/v1/orgs/{simulator.org.org_id}/stats/sites", timeout=0.2,
                     headers={"Authorization": f"Token {simulator.token}"})


def test_malformed_fault_sends_cut_json_with_status_200(simulator):
    simulator.inject("*/stats/devices", "malformed")
    response = api(simulator, "orgs/{org}/stats/devices")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_drop_fault_closes_the_connection_without_a_response(simulator):
    simulator.inject("*/stats/devices", "drop")
    with pytest.raises(requests.ConnectionError):
        api(simulator, "orgs/{org}/stats/devices")
    assert api(simulator, "orgs/{org}/stats/devices").status_code == 200


def test_clear_faults_removes_pending_faults(simulator):
    simulator.inject("*", 500, count=10)
    simulator.clear_faults()
    assert api(simulator, "self").status_code == 200


def test_unknown_fault_kind_is_refused(simulator):
    with pytest.raises(ValueError):
        simulator.inject("*", "teapot")


def test_calls_are_counted_by_path_without_query(simulator):
    api(simulator, "self")
    api(simulator, "orgs/{org}/sites", page=1)
    api(simulator, "orgs/{org}/sites", page=2)
    assert simulator.calls == 3
    assert simulator.calls_by_path[f"/api/v1/orgs/{simulator.org.org_id}/sites"] == 2
    assert simulator.requests[-1] == ("GET", f"/api/v1/orgs/{simulator.org.org_id}/sites", {"page": "2"})
    simulator.reset_counters()
    assert simulator.calls == 0 and not simulator.calls_by_path and not simulator.requests


# --- scenarios ----------------------------------------------------------------------------------------

def per_site_view(server) -> dict[str, dict]:
    """Everything the simulator serves, keyed by site id (one full pass over every endpoint)."""
    view: dict[str, dict] = {sid: {"devices": [], "alarms": [], "events": []} for sid in server.org.site_ids()}
    for site in get_json(server, "orgs/{org}/stats/sites"):
        view[site["id"]]["stats"] = site
    for kind in ("wifi", "wired", "wan"):
        for row in get_json(server, "orgs/{org}/insights/sites-sle", sle=kind)["results"]:
            view[row["site_id"]][kind] = row
    for path in ("stats/vpn_peers/search", "stats/bgp_peers/search"):
        for row in get_json(server, f"orgs/{{org}}/{path}", limit=1000)["results"]:
            view[row["site_id"]].setdefault(path, []).append(row)
    for device in get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000, fields="*"):
        view[device["site_id"]]["devices"].append(device)
    for alarm in get_json(server, "orgs/{org}/alarms/search", duration="2d", limit=1000)["results"]:
        view[alarm["site_id"]]["alarms"].append(alarm)
    for event in get_json(server, "orgs/{org}/devices/events/search", device_type="all", duration="2d",
                          limit=1000)["results"]:
        view[event["site_id"]]["events"].append(event)
    return view


@pytest.mark.parametrize("scenario", ["degraded", "recovered", "upgrade-wave", "wan-link-failure"])
def test_a_scenario_changes_exactly_its_documented_sites(make_simulator, scenario):
    healthy = make_simulator(sites=30, now=DAY1)
    other = make_simulator(sites=30, now=DAY1)
    other.org.set_scenario(scenario)
    before, after = per_site_view(healthy), per_site_view(other)
    changed = {sid for sid in before if before[sid] != after[sid]}
    assert changed == set(other.org.affected_sites())
    assert set(other.org.affected_sites(scenario)) == set(healthy.org.affected_sites(scenario))


def test_a_server_that_served_before_a_new_hour_and_scenario_answers_like_a_fresh_one(make_simulator):
    later = DAY1 + timedelta(hours=1, minutes=5)

    def fresh(scenario: str):
        server = make_simulator(sites=30, now=DAY1)
        server.org.now = later
        server.org.set_scenario(scenario)
        return per_site_view(server)

    used = make_simulator(sites=30, now=DAY1)
    views = [per_site_view(used)]  # fills the device texts and the hourly rows
    used.org.now = later
    views.append(per_site_view(used))
    assert views[-1] == fresh("healthy")
    used.org.set_scenario("degraded")
    views.append(per_site_view(used))
    assert views[-1] == fresh("degraded")
    assert views[0] != views[1] != views[2]


def test_affected_sites_of_degraded_are_sites_1_to_4():
    org = SimulatedOrg(sites=12)
    ids = org.site_ids()
    assert list(org.affected_sites("degraded")) == ids[1:5]
    assert org.affected_sites("healthy") == {} and org.affected_sites() == {}


def test_healthy_org_is_connected_with_high_sles_and_no_open_alarms(simulator):
    devices = get_json(simulator, "orgs/{org}/stats/devices", type="all", limit=1000)
    assert {d["status"] for d in devices} == {"connected"}
    for kind, keys in (("wifi", 8), ("wired", 3), ("wan", 3)):
        for row in get_json(simulator, "orgs/{org}/insights/sites-sle", sle=kind)["results"]:
            values = {k: v for k, v in row.items() if k != "site_id" and not k.startswith("num_")}
            current = {k for k in values if k.endswith("-v2") or k in ("application-health", "gateway-bandwidth")}
            assert len(values) - len(current) == keys and all(0.9 <= v <= 1.0 for v in values.values())
    assert get_json(simulator, "orgs/{org}/alarms/search", status="open")["total"] == 0


def test_degraded_site_1_has_3_of_4_aps_disconnected_with_events(make_simulator):
    server = make_simulator(sites=12, scenario="degraded")
    site_id = server.org.site_ids()[1]
    aps = get_json(server, f"sites/{site_id}/stats/devices")
    assert sorted(d["status"] for d in aps) == ["connected"] + ["disconnected"] * 3
    events = get_json(server, "orgs/{org}/devices/events/search", site_id=site_id, duration="1h")["results"]
    assert sorted(e["mac"] for e in events if e["type"] == "AP_DISCONNECTED") == sorted(
        d["mac"] for d in aps if d["status"] == "disconnected")


def test_degraded_site_2_has_a_wifi_sle_collapse_and_60_percent_fewer_clients(make_simulator):
    healthy = make_simulator(sites=12, now=DAY1)
    degraded = make_simulator(sites=12, now=DAY1, scenario="degraded")
    site_id = degraded.org.site_ids()[2]
    row = next(r for r in get_json(degraded, "orgs/{org}/insights/sites-sle", sle="wifi")["results"]
               if r["site_id"] == site_id)
    assert all(0.5 <= row[k] <= 0.6 for k in ("coverage", "capacity", "time-to-connect"))

    def clients(server):
        return next(r["num_clients"] for r in get_json(server, "orgs/{org}/stats/sites") if r["id"] == site_id)

    assert clients(degraded) == pytest.approx(0.4 * clients(healthy), abs=1)


def test_degraded_site_3_has_open_alarms_in_mists_groups_and_severities(make_simulator):
    server = make_simulator(sites=12, scenario="degraded")
    alarms = get_json(server, "orgs/{org}/alarms/search", status="open", duration="7d")["results"]
    assert {a["site_id"] for a in alarms} == {server.org.site_ids()[3]}
    assert sorted((a["group"], a["type"], a["severity"]) for a in alarms) == [
        ("infrastructure", "sw_alarm_chassis_psu", "critical"), ("infrastructure", "sw_bad_optics", "warn"),
        ("marvis", "bad_cable", "warn"), ("security", "rogue_ap", "warn")]
    never_closed = next(a for a in alarms if a["group"] == "security")
    assert server.org.now.timestamp() - never_closed["last_seen"] >= 2 * 86400


def test_degraded_site_4_has_gateway_and_switch_disconnected_with_events(make_simulator):
    server = make_simulator(sites=12, scenario="degraded")
    site_id = server.org.site_ids()[4]
    devices = get_json(server, f"sites/{site_id}/stats/devices", type="switch,gateway")
    assert {d["status"] for d in devices} == {"disconnected"} and len(devices) == 2
    events = get_json(server, "orgs/{org}/devices/events/search", device_type="all", site_id=site_id,
                      duration="1h")["results"]
    assert sorted(e["type"] for e in events) == ["GW_DISCONNECTED", "SW_DISCONNECTED"]


def test_recovered_closes_alarms_and_brings_devices_back_with_fresh_uptime(make_simulator):
    server = make_simulator(sites=12, now=DAY1, scenario="degraded")
    server.org.now = DAY1 + timedelta(hours=3)
    server.org.set_scenario("recovered")
    assert get_json(server, "orgs/{org}/alarms/search", status="open")["total"] == 0
    resolved = get_json(server, "orgs/{org}/alarms/search", status="resolved", duration="6h")["results"]
    assert sorted(a["severity"] for a in resolved if a["site_id"] == server.org.site_ids()[3]
                  and a["type"] != "rogue_ap") == ["critical", "warn", "warn"]
    devices = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000)
    assert {d["status"] for d in devices} == {"connected"}
    site4 = [d for d in devices if d["site_id"] == server.org.site_ids()[4] and d["type"] != "ap"]
    assert all(d["uptime"] < 600 for d in site4)
    events = get_json(server, "orgs/{org}/devices/events/search", device_type="all", duration="1h")["results"]
    assert [e["type"] for e in events if e["type"].endswith("_CONNECTED")] == []  # Mist indexes them late
    server.org.now = DAY1 + timedelta(hours=3, minutes=5)
    events = get_json(server, "orgs/{org}/devices/events/search", device_type="all", duration="1h")["results"]
    assert sorted(e["type"] for e in events) == ["AP_CONNECTED"] * 3 + ["GW_CONNECTED", "SW_CONNECTED"]


def test_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="unknown scenario"):
        SimulatedOrg(sites=2, scenario="on-fire")
    with pytest.raises(ValueError):
        SimulatedOrg(sites=2).set_scenario("on-fire")


# --- time ---------------------------------------------------------------------------------------------

def test_clock_replays_days_uptime_and_last_seen_follow_now(simulator):
    simulator.org.now = DAY1
    day1 = get_json(simulator, "orgs/{org}/stats/devices", type="all", limit=1000)
    simulator.org.now = DAY1 + timedelta(days=1)
    day2 = get_json(simulator, "orgs/{org}/stats/devices", type="all", limit=1000)
    for a, b in zip(day1, day2, strict=True):
        assert a["id"] == b["id"] and b["uptime"] - a["uptime"] == 86400
        assert 0 <= DAY1.timestamp() + 86400 - b["last_seen"] < 60


def test_degraded_incident_stays_at_its_time_when_the_clock_moves_on(make_simulator):
    server = make_simulator(sites=12, now=DAY1, scenario="degraded")
    server.org.now = DAY1 + timedelta(days=1)
    site_id = server.org.site_ids()[1]
    down = get_json(server, f"sites/{site_id}/stats/devices", status="disconnected")
    assert all(DAY1.timestamp() - 600 <= d["last_seen"] <= DAY1.timestamp() for d in down)
    recent = get_json(server, "orgs/{org}/devices/events/search", device_type="all", duration="1h")["results"]
    assert not [e for e in recent if e["type"].endswith("_DISCONNECTED")]
    assert get_json(server, "orgs/{org}/alarms/search", status="open")["total"] == 3


def test_scenario_set_before_the_clock_moves_starts_at_the_new_time(make_simulator):
    server = make_simulator(sites=12, now=DAY1)
    get_json(server, "orgs/{org}/stats/sites")  # a healthy cycle on day 1
    server.org.set_scenario("degraded")
    server.org.now = DAY1 + timedelta(days=1)
    events = get_json(server, "orgs/{org}/devices/events/search", device_type="all", duration="15m")["results"]
    assert len([e for e in events if e["type"].endswith("_DISCONNECTED")]) == 5


def test_setting_the_same_scenario_again_keeps_its_incident(make_simulator):
    server = make_simulator(sites=12, now=DAY1, scenario="degraded")
    first = get_json(server, "orgs/{org}/alarms/search", status="open")["results"]
    server.org.now = DAY1 + timedelta(minutes=30)
    server.org.set_scenario("degraded")
    again = get_json(server, "orgs/{org}/alarms/search", status="open")["results"]
    assert [(a["id"], a["timestamp"]) for a in again] == [(a["id"], a["timestamp"]) for a in first]


def test_now_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        SimulatedOrg(sites=1, now=datetime(2026, 1, 1, 9, 0))


# --- generation ---------------------------------------------------------------------------------------

def test_same_seed_same_org_and_other_seed_other_org(make_simulator):
    a, b = make_simulator(sites=12, now=DAY1), make_simulator(sites=12, now=DAY1)
    c = make_simulator(sites=12, now=DAY1, seed=8)
    assert a.org.org_id == b.org.org_id != c.org.org_id
    for path, params in (("orgs/{org}/stats/sites", {}), ("orgs/{org}/insights/sites-sle", {"sle": "wifi"})):
        assert json.dumps(get_json(a, path, **params)).replace(a.org.org_id, "ORG") == json.dumps(
            get_json(b, path, **params)).replace(b.org.org_id, "ORG")
    assert a.org.site_ids() != c.org.site_ids()
    assert [s["name"] for s in get_json(a, "orgs/{org}/sites")] != [s["name"] for s in get_json(c, "orgs/{org}/sites")]


def test_site_names_are_unique_city_and_role():
    org = SimulatedOrg(sites=3000)
    names = [org.site_name(sid) for sid in org.site_ids()]
    assert len(set(names)) == len(names)
    assert names[0].endswith(" HQ")
    roles = {"HQ", "Branch", "Store", "Office", "Warehouse", "DC"}
    assert all(any(f" {role}" in name for role in roles) for name in names)


def test_a_small_org_is_a_prefix_of_a_large_one():
    small, large = SimulatedOrg(sites=12), SimulatedOrg(sites=500)
    assert small.site_ids() == large.site_ids()[:12]
    assert [small.site_name(s) for s in small.site_ids()] == [large.site_name(s) for s in large.site_ids()[:12]]


def test_generating_10000_sites_is_fast(capsys):
    started = time.perf_counter()
    org = SimulatedOrg(sites=10_000)
    elapsed = time.perf_counter() - started
    with serve(org) as server:
        started = time.perf_counter()
        page = api(server, "orgs/{org}/stats/devices", type="all", limit=1000, page=30)
        served = time.perf_counter() - started
    assert len(page.json()) == 1000 and page.headers["X-Page-Total"] == "60000"
    with capsys.disabled():
        print(f"\n[simulator] 10,000 sites x 6 devices built in {elapsed:.3f} s; "
              f"one page of 1,000 devices served in {served:.3f} s")


# --- command line -------------------------------------------------------------------------------------

def test_simulate_help_lists_the_options():
    from mistwatch.plugins.mist.commands import simulate

    result = CliRunner().invoke(simulate, ["--help"])
    assert result.exit_code == 0
    for option in ("--port", "--sites", "--scenario", "--token", "--seed"):
        assert option in result.output


def test_simulate_with_an_unknown_scenario_is_a_usage_error():
    from mistwatch.plugins.mist.commands import simulate

    result = CliRunner().invoke(simulate, ["--scenario", "on-fire"])
    assert result.exit_code == 2 and "on-fire" in result.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_simulate_serves_until_a_signal_then_exits_0(sig):
    proc = subprocess.Popen([sys.executable, "-m", "mistwatch", "simulate", "--port", "0", "--sites", "3",
                             "--token", "cli-token"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        while not any(line.startswith("Serving") for line in lines):
            line = proc.stdout.readline()
            assert line, f"simulate ended early: {proc.stderr.read()}"
            lines.append(line)
        base_url = next(line.split()[-1] for line in lines if line.strip().startswith("base_url:"))
        org_id = next(line.split()[-1] for line in lines if line.strip().startswith("org_id:"))
        response = requests.get(f"{base_url}/api/v1/orgs/{org_id}/sites",
                                headers={"Authorization": "Token cli-token"}, timeout=5)
        assert response.status_code == 200 and len(response.json()) == 3
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_close_stops_serving_even_with_an_idle_keep_alive_connection():
    server = serve(SimulatedOrg(sites=1))
    session = requests.Session()
    url = f"{server.url}/api/v1/self"
    assert session.get(url, headers={"Authorization": f"Token {server.token}"}, timeout=5).status_code == 200
    server.close()
    with pytest.raises(requests.ConnectionError):
        session.get(url, headers={"Authorization": f"Token {server.token}"}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)


# --- Mist's own behaviour: the hourly budget, upgrades, WAN --------------------------------------------

def test_the_hourly_budget_answers_429_without_retry_after_once_spent_until_the_hour_turns(make_simulator):
    server = make_simulator(sites=3, now=DAY1)
    server.hourly_budget = 3
    for _ in range(3):
        assert api(server, "orgs/{org}/stats/sites").status_code == 200
    refused = requests.get(f"{server.url}/api/v1/self", headers={"Authorization": f"Token {server.token}"},
                           timeout=10)
    assert refused.status_code == 429 and "Retry-After" not in refused.headers
    assert "5000 API Calls per hour" in refused.json()["detail"]
    server.org.now = DAY1 + timedelta(hours=1)
    assert api(server, "orgs/{org}/stats/sites").status_code == 200


def test_an_upgrade_wave_reports_mists_status_strings_and_a_never_connected_device(make_simulator):
    server = make_simulator(sites=6, now=DAY1, scenario="upgrade-wave")
    ids = server.org.site_ids()
    devices = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000, fields="fwupdate")
    by_site = {sid: [d for d in devices if d["site_id"] == sid] for sid in ids}
    assert {d["status"] for d in by_site[ids[1]] if d["type"] == "ap"} == {"upgrading"}
    assert all(d["fwupdate"]["status"] == "inprogress" for d in by_site[ids[1]] if d["type"] == "ap")
    (switch,) = [d for d in by_site[ids[2]] if d["type"] == "switch"]
    assert switch["status"] == "upgrading" and DAY1.timestamp() - switch["fwupdate"]["timestamp"] >= 2 * 3600
    assert "restarting" in {d["status"] for d in by_site[ids[2]]}
    failed = [d for d in by_site[ids[3]] if d.get("fwupdate", {}).get("status") == "failed"]
    assert len(failed) == 1 and failed[0]["status"] == "connected"
    never = [d for d in by_site[ids[3]] if "last_seen" not in d]
    assert len(never) == 1 and "uptime" not in never[0] and never[0]["status"] == "disconnected"
    assert all(d["status"] == "connected" for sid in (ids[0], *ids[4:]) for d in by_site[sid])


def test_a_wan_link_failure_shows_in_if_stat_vpn_paths_bgp_and_an_alarm(make_simulator):
    server = make_simulator(sites=6, now=DAY1, scenario="wan-link-failure")
    ids = server.org.site_ids()
    gateway = get_json(server, f"sites/{ids[1]}/stats/devices", type="gateway")[0]
    wan = {p["wan_name"]: p["up"] for p in gateway["if_stat"].values() if p.get("port_usage") == "wan"}
    assert wan == {"wan1": True, "wan2": False}
    paths = get_json(server, "orgs/{org}/stats/vpn_peers/search", limit=1000)["results"]
    assert [(p["port_id"], p["up"]) for p in paths if p["site_id"] == ids[1]] == [("ge-0/0/0", True),
                                                                                  ("ge-0/0/1", False)]
    lossy = [p for p in paths if p["site_id"] == ids[2] and p["loss"] > 0]
    assert len(lossy) == 1 and lossy[0]["loss"] == 6.0
    bgp = get_json(server, "orgs/{org}/stats/bgp_peers/search", limit=1000)["results"]
    assert [b["site_id"] for b in bgp if b["state"] != "established"] == [ids[3]]
    alarms = get_json(server, "orgs/{org}/alarms/search", status="open")["results"]
    assert [(a["type"], a["severity"], a["site_id"]) for a in alarms] == [("vpn_peer_down", "warn", ids[1])]


def test_odd_sites_send_the_current_sle_names_next_to_the_v1_ones(simulator):
    rows = get_json(simulator, "orgs/{org}/insights/sites-sle", sle="wan")["results"]
    ids = simulator.org.site_ids()
    odd, even = rows[ids.index(rows[1]["site_id"])], rows[0]
    assert {"wan-link-health-v2", "application-health", "gateway-bandwidth", "wan-link-health"} <= set(odd)
    assert "wan-link-health-v2" not in even and "wan-link-health" in even


def test_the_normal_part_of_an_upgrade_wave_completes_with_the_new_version_and_the_stuck_switch_stays(
        make_simulator):
    server = make_simulator(sites=6, now=DAY1, scenario="upgrade-wave")
    ids = server.org.site_ids()
    get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000)  # the wave starts being seen
    server.org.now = DAY1 + timedelta(minutes=20)
    devices = get_json(server, "orgs/{org}/stats/devices", type="all", limit=1000, fields="fwupdate")
    aps = [d for d in devices if d["site_id"] == ids[1] and d["type"] == "ap"]
    assert {(d["status"], d["version"], d["fwupdate"]["status"]) for d in aps} == {
        ("connected", "0.14.29889", "upgraded")}
    assert all(d["uptime"] < 20 * 60 for d in aps)
    assert {d["status"] for d in devices if d["site_id"] == ids[2]} == {"connected", "upgrading"}
