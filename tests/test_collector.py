"""The Mist collector plugin against the simulator over loopback."""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from mistwatch.errors import CollectionFailed
from mistwatch.hookspecs import CollectContext
from mistwatch.model import Snapshot
from mistwatch.plugins import mist
from mistwatch.plugins.mist import collector as mistcollector
from mistwatch.plugins.mist.client import MistClient
from mistwatch.plugins.mist.collector import METRICS, MistCollector, device_metrics, epoch, settings_schema

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

SITE_LABELS = {"org_id", "site_id", "site_name", "timezone", "country_code"}
DEVICE_LABELS = {"org_id", "site_id", "site_name", "device_id", "device_name", "device_type", "mac", "model",
                 "version"}
SITE_METRICS = {"site.ap_total", "site.ap_connected", "site.switch_total", "site.switch_connected",
                "site.gateway_total", "site.gateway_connected", "site.devices_total", "site.devices_connected",
                "site.ap_connected_ratio", "site.clients", "site.alarms_open", "site.alarms_critical",
                "site.alarms_major", "site.marvis_actions_open", "site.devices_upgrading",
                "site.devices_not_connected_yet", "site.devices_status_unknown"}
SLE_NAMES = {name for name in METRICS if name.startswith("sle.")} - {"sle.wired.switch_stc"}
ORG_METRICS = {"org.sites", "org.devices", "org.devices_connected", "org.clients"}


def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def collector() -> MistCollector:
    # Real client, real HTTP; only the backoff sleeps are skipped.
    return MistCollector(client_factory=functools.partial(MistClient, sleep=no_sleep))


def settings_for(server, **extra) -> dict:
    return {"base_url": server.url, "token": server.token, "org_id": server.org.org_id, "max_retries": 1,
            **extra}


def collect(collector: MistCollector, server, now: datetime = NOW, cursor: dict | None = None,
            progress=None, state: dict | None = None, **extra) -> Snapshot:
    """One cycle. ``state`` is the collector's persistent state (the store's, in a real run)."""
    server.org.now = now
    ctx = CollectContext(settings=settings_for(server, **extra), now=now, cursor=cursor or {},
                         state=state if state is not None else {}, **({"progress": progress} if progress else {}))
    return collector.collect(ctx)


def by_kind(snap: Snapshot, kind: str) -> list:
    return [e for e in snap.entities if e.kind == kind]


def site_of(snap: Snapshot, site_id: str):
    return next(e for e in snap.entities if e.key == f"site:{site_id}")


@pytest.fixture
def healthy(make_simulator):
    return make_simulator(sites=12, devices_per_site=6, scenario="healthy", now=NOW)


# ------------------------------------------------------------------------------ the metric catalogue

def documented_metrics() -> set[str]:
    """Metric names from the table of docs/metrics.md (``sle.<kind>.<name>`` rows expanded)."""
    names: set[str] = set()
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) != 4 or cells[1] not in ("device", "site", "org", "vpn_peer", "bgp_peer"):
            continue
        for name in re.findall(r"`([a-z0-9_.<>]+)`", cells[0]):
            if name.endswith(".<name>"):
                names.update(f"{name[:-len('<name>')]}{n}" for n in re.findall(r"`([a-z][a-z_]*)`", cells[3]))
            else:
                names.add(name)
    return names


def test_declared_metrics_are_exactly_those_of_the_docs():
    documented = documented_metrics()
    assert len(documented) > 30
    assert set(METRICS) == documented


def test_plugin_registers_the_mist_collector_with_its_settings_schema():
    (collector,) = list(mist.mistwatch_collectors())
    assert collector.name == "mist" and collector.config_key == "mist"
    assert collector.metrics == METRICS
    jsonschema.Draft202012Validator.check_schema(collector.settings_schema)


def test_config_check_lines_name_the_api_host_of_the_cloud_and_mask_the_token():
    from mistwatch.plugins.mist.collector import describe

    lines = dict(describe({"cloud": "global01", "org_id": "org-123", "token": "tok-secret"}))
    assert lines == {"Mist API": "https://api.mist.com (cloud global01)", "Org id": "org-123", "Token": "***"}


@pytest.mark.parametrize(("base_url", "portal"), [
    ("https://api.mist.com", "https://manage.mist.com"),
    ("https://api.eu.mist.com", "https://manage.eu.mist.com"),
    ("https://api.gc1.mist.com", "https://manage.gc1.mist.com"),
    ("https://api.ac5.mist.com", "https://manage.ac5.mist.com"),
    ("http://127.0.0.1:8765", None),
    ("https://api.example.com", None),
])
def test_the_portal_follows_the_configured_cloud(base_url, portal):
    from mistwatch.plugins.mist.client import portal_root

    assert portal_root(base_url) == portal


def test_every_entity_links_to_its_page_in_the_portal(collector, healthy):
    snap = collect(collector, healthy, portal_url="https://manage.eu.mist.com")
    org_id = healthy.org.org_id
    home = f"https://manage.eu.mist.com/admin/?org_id={org_id}"
    (org,) = by_kind(snap, "org")
    assert org.labels["portal_url"] == home
    site = by_kind(snap, "site")[0]
    sid = site.labels["site_id"]
    assert site.labels["portal_url"] == f"{home}#!dashboard/insights/site/{sid}/today/{sid}"
    for device in by_kind(snap, "device"):
        labels = device.labels
        assert labels["portal_url"] == (f"{home}#!{labels['device_type']}/detail/{labels['device_id']}/"
                                        f"{labels['site_id']}")


def test_settings_schema_accepts_a_cloud_or_a_base_url_and_rejects_the_rest():
    validator = jsonschema.Draft202012Validator(settings_schema())
    assert validator.is_valid({"cloud": "eu", "token": "t0ken", "org_id": "o"})
    assert validator.is_valid({"base_url": "https://api.gc2.mist.com", "token": "t0ken", "org_id": "o",
                               "timeout": 10, "page_limit": 500, "max_retries": 2, "verify_tls": False,
                               "sites_refresh": 600, "hourly_budget": 2500})
    assert not validator.is_valid({"cloud": "mars", "token": "t0ken", "org_id": "o"})
    assert not validator.is_valid({"cloud": "eu", "org_id": "o"})  # token missing
    assert not validator.is_valid({"cloud": "eu", "token": "t0ken"})  # org_id missing
    assert not validator.is_valid({"token": "t0ken", "org_id": "o"})  # neither cloud nor base_url
    assert not validator.is_valid({"cloud": "eu", "token": "t0ken", "org_id": "o", "tokn": "typo"})
    assert not validator.is_valid({"cloud": "eu", "token": "t0ken", "org_id": "o", "page_limit": 5000})
    assert not validator.is_valid({"cloud": "eu", "token": "t0ken", "org_id": "o", "hourly_budget": 0})


# ------------------------------------------------------------------------------------------ healthy

def test_healthy_org_gives_one_org_every_site_and_every_device(collector, healthy):
    snap = collect(collector, healthy)
    assert len(by_kind(snap, "org")) == 1
    assert len(by_kind(snap, "site")) == 12
    assert len(by_kind(snap, "device")) == 72
    assert snap.errors == []
    assert {e.key for e in by_kind(snap, "site")} == {f"site:{s.id}" for s in healthy.org.sites}


def test_entities_carry_exactly_the_documented_labels(collector, healthy):
    snap = collect(collector, healthy)
    (org,) = by_kind(snap, "org")
    assert dict(org.labels) == {"org_id": healthy.org.org_id, "org_name": healthy.org.org_name}
    names = {s.id: s.name for s in healthy.org.sites}
    for site in by_kind(snap, "site"):
        assert set(site.labels) == SITE_LABELS
        assert site.labels["site_name"] == names[site.labels["site_id"]]
    for device in by_kind(snap, "device"):
        assert set(device.labels) == DEVICE_LABELS | {"status"}
        assert device.labels["status"] == "connected"
        assert device.key == f"device:{device.labels['device_id']}"
        assert device.labels["device_type"] in ("ap", "switch", "gateway")
        assert device.labels["site_name"] == names[device.labels["site_id"]]


def test_healthy_metrics_are_all_present_with_healthy_values(collector, healthy):
    snap = collect(collector, healthy)
    for device in by_kind(snap, "device"):
        expected = {"device.connected", "device.uptime", "device.last_seen_age", "device.cpu", "device.memory"}
        kind = device.labels["device_type"]
        if kind == "ap":
            expected |= {"device.clients", "device.radio_util_24", "device.radio_util_5",
                         "device.noise_floor_24", "device.noise_floor_5"}
        else:
            expected |= {"device.config_failed", "device.psus", "device.psus_failed", "device.fans_failed",
                         "device.temperature_max", "device.temperatures_alarm"}
        if kind == "switch":
            expected.add("device.fwupdate_failed")
        if kind == "gateway":
            expected |= {"device.ha", "device.wan_links", "device.wan_links_up", "device.wan_links_down"}
        assert set(device.metrics) == expected
        assert "device.upgrading" not in device.metrics  # only written while upgrading
        assert device.metrics.get("device.psus_failed", 0) == 0 and device.metrics.get("device.wan_links_down", 0) == 0
        assert device.metrics["device.connected"] == 1.0
        assert 0 <= device.metrics["device.cpu"] <= 100 and 0 <= device.metrics["device.memory"] <= 100
        assert 0 <= device.metrics["device.last_seen_age"] < 600
    for site in by_kind(snap, "site"):
        # gateway_bandwidth comes only in the current (v2) WAN SLE names, which odd-index sites use
        assert set(site.metrics) >= SITE_METRICS | (SLE_NAMES - {"sle.wan.gateway_bandwidth"})
        assert site.metrics["site.ap_connected_ratio"] == 1.0
        assert site.metrics["site.devices_total"] == 6 == site.metrics["site.devices_connected"]
        assert site.metrics["site.alarms_open"] == 0
        assert all(0.9 <= site.metrics[name] <= 1.0 for name in SLE_NAMES - {"sle.wan.gateway_bandwidth"})
    (org,) = by_kind(snap, "org")
    assert set(org.metrics) == ORG_METRICS
    assert org.metrics["org.sites"] == 12 and org.metrics["org.devices"] == 72
    assert org.metrics["org.clients"] == sum(s.metrics["site.clients"] for s in by_kind(snap, "site"))
    assert [e for e in snap.events if e.source == "mist.alarm"] == []


def test_api_calls_are_counted_and_no_site_level_endpoint_is_used(collector, healthy):
    snap = collect(collector, healthy)
    assert snap.api_calls == healthy.calls == 10  # /self + 9 org-level calls
    assert not any(path.startswith("/api/v1/sites/") for path in healthy.calls_by_path)
    devices = [q for _m, p, q in healthy.requests if p.endswith("/stats/devices")]
    assert devices[0]["type"] == "all" and devices[0]["limit"] == "1000"
    events = [q for _m, p, q in healthy.requests if p.endswith("/devices/events/search")]
    assert events[0]["device_type"] == "all"


# stats/devices returns "only a subset of the available fields" unless fields= names them (spec tag
# "Orgs Stats - Devices"); the subset is undocumented, so the collector names every field it reads.

def test_device_stats_are_asked_with_the_fields_the_collector_reads_on_every_page(collector, make_simulator):
    server = make_simulator(sites=300, devices_per_site=6, now=NOW)  # 1,800 devices: two pages
    collect(collector, server)
    pages = [q for _m, p, q in server.requests if p.endswith("/stats/devices")]
    assert [q["page"] for q in pages] == ["1", "2"]
    for query in pages:
        assert query["type"] == "all" and query["limit"] == "1000"
        assert query["fields"] == ",".join(mistcollector.DEVICE_FIELDS)


def test_docs_list_exactly_the_device_fields_sent():
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### Fields of stats/devices"):]
    listed = section[section.index("the collector reads):"):section.index("Not `fields=*`")]
    assert set(re.findall(r"`([a-z_0-9]+)`", listed)) == set(mistcollector.DEVICE_FIELDS)


class _ReadRecorder(dict):
    """A stats/devices row that notes each top-level field the collector looks at."""

    def __init__(self, row: dict, read: set[str]):
        super().__init__(row)
        self.read = read

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def test_the_device_fields_asked_are_exactly_the_row_fields_the_collector_reads(make_simulator):
    read: set[str] = set()

    class RecordingClient(MistClient):
        def iter_pages(self, path, params=None):
            for items, done, total in super().iter_pages(path, params):
                if path.endswith("/stats/devices"):
                    items = [_ReadRecorder(row, read) for row in items]
                yield items, done, total

    collector = MistCollector(client_factory=functools.partial(RecordingClient, sleep=no_sleep))
    # between them these scenarios take every branch of the device code: a WAN link, a PSU and an
    # upgrade failed, devices down, busy and never connected
    for scenario in ("degraded", "upgrade-wave", "wan-link-failure"):
        collect(collector, make_simulator(sites=6, devices_per_site=6, scenario=scenario, now=NOW))
    assert read <= set(mistcollector.DEVICE_FIELDS)  # nothing read that was not asked for
    # and nothing asked that is not read: hostname is read only for a device without a name, and the
    # simulator names every device
    assert set(mistcollector.DEVICE_FIELDS) - read == {"hostname"}
    assert list(mistcollector.DEVICE_FIELDS) == sorted(mistcollector.DEVICE_FIELDS)


def test_self_is_asked_once_per_token_per_day_and_remembered_across_restarts(healthy):
    state: dict = {}
    collect(MistCollector(), healthy, state=state)
    healthy.reset_counters()
    restarted = MistCollector()  # a new process: only the persistent state remembers
    snap = collect(restarted, healthy, now=NOW + timedelta(minutes=5), state=state)
    assert healthy.calls_by_path["/api/v1/self"] == 0
    assert snap.api_calls == healthy.calls == 9
    collect(restarted, healthy, now=NOW + timedelta(hours=25), state=state)
    assert healthy.calls_by_path["/api/v1/self"] == 1
    assert healthy.token not in repr(state)


def test_progress_is_reported_per_stage_as_pages_come_in(collector, make_simulator):
    server = make_simulator(sites=300, devices_per_site=6, now=NOW)  # 1,800 devices: two pages
    seen: list[tuple[str, int, int | None]] = []
    collect(collector, server, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert [s for s in seen if s[0] == "devices"] == [("devices", 1000, 1800), ("devices", 1800, 1800)]
    assert {"sites", "devices", "sle wifi", "alarms", "events", "wan paths", "bgp peers"} <= {s[0] for s in seen}


def test_call_count_does_not_grow_with_the_number_of_sites(collector, make_simulator):
    small = make_simulator(sites=10, devices_per_site=6, now=NOW)
    big = make_simulator(sites=2000, devices_per_site=6, now=NOW)
    small_calls = collect(collector, small).api_calls
    big_snap = collect(collector, big)
    assert len(by_kind(big_snap, "site")) == 2000 and len(by_kind(big_snap, "device")) == 12000
    # Only extra pages differ: stats/sites and 3 x sites-sle get 1 more page each at 2,000 sites,
    # stats/devices 11 more at 12,000 devices, the WAN paths (2 per gateway) 3 more, BGP peers 1 more.
    extra_pages = 4 * 1 + 11 + 3 + 1
    assert big_snap.api_calls == small_calls + extra_pages
    assert small_calls <= 15
    assert {p.rsplit("/", 1)[-1] for p in small.calls_by_path} == {p.rsplit("/", 1)[-1] for p in big.calls_by_path}


def test_small_pages_give_the_same_snapshot_with_more_calls(make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="degraded", now=NOW)
    big_pages = collect(MistCollector(), server)
    small_pages = collect(MistCollector(), server, page_limit=5)
    assert small_pages.api_calls > big_pages.api_calls + 20
    assert {e.key: dict(e.metrics) for e in small_pages.entities} == \
        {e.key: dict(e.metrics) for e in big_pages.entities}
    assert sorted((e.source, e.id) for e in small_pages.events) == sorted((e.source, e.id) for e in big_pages.events)


# ----------------------------------------------------------------------------------------- degraded

def test_degraded_scenario_shows_on_exactly_the_affected_sites(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="degraded", now=NOW)
    snap = collect(collector, server)
    sites = server.org.sites
    aps_down, sle_collapse, alarms, wan_down = (site_of(snap, sites[i].id).metrics for i in (1, 2, 3, 4))

    assert aps_down["site.ap_connected"] == 1 and aps_down["site.ap_connected_ratio"] == 0.25
    assert aps_down["sle.wifi.ap_availability"] == pytest.approx(0.25)
    assert sle_collapse["sle.wifi.coverage"] < 0.7 and sle_collapse["sle.wifi.capacity"] < 0.7
    assert alarms["site.alarms_open"] == 4  # critical PSU, warn optics, a Marvis action, an old security one
    assert alarms["site.alarms_critical"] == 1 and alarms["site.alarms_major"] == 3
    assert alarms["site.marvis_actions_open"] == 1
    assert wan_down["site.gateway_connected"] == 0 and wan_down["site.switch_connected"] == 0
    assert wan_down["sle.wan.gateway_health"] < 0.5 and wan_down["sle.wired.switch_health"] < 0.5

    for index in (0, *range(5, 12)):
        healthy_site = site_of(snap, sites[index].id).metrics
        assert healthy_site["site.marvis_actions_open"] == 0
        assert healthy_site["site.ap_connected_ratio"] == 1.0 and healthy_site["site.alarms_open"] == 0

    down = {d.labels["device_name"] for d in by_kind(snap, "device") if d.metrics["device.connected"] == 0}
    psu = [d for d in by_kind(snap, "device") if d.metrics.get("device.psus_failed")]
    assert [(d.labels["site_id"], d.labels["chassis_faults"]) for d in psu] == [(sites[3].id, "Power Supply 1 failed")]
    assert len(down) == 5  # 3 APs of site 1, switch and gateway of site 4
    assert all(d.labels["site_id"] in (sites[1].id, sites[4].id)
               for d in by_kind(snap, "device") if d.metrics["device.connected"] == 0)


def test_open_alarms_become_events_with_mists_severities_mapped_and_their_group(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="degraded", now=NOW)
    snap = collect(collector, server)
    alarms = {e.type: e for e in snap.events if e.source == "mist.alarm"}
    assert set(alarms) == {"sw_alarm_chassis_psu", "sw_bad_optics", "bad_cable", "rogue_ap"}
    assert {t: (e.labels["mist_severity"], e.severity, e.labels["group"]) for t, e in alarms.items()} == {
        "sw_alarm_chassis_psu": ("critical", "critical", "infrastructure"),
        "sw_bad_optics": ("warn", "major", "infrastructure"),
        "bad_cable": ("warn", "major", "marvis"),
        "rogue_ap": ("warn", "major", "security")}
    site3 = server.org.sites[3]
    for event in alarms.values():
        assert event.labels["site_id"] == site3.id and event.labels["site_name"] == site3.name
        assert event.labels["alarm_id"] == event.id
        assert event.timestamp.tzinfo is not None
    assert alarms["bad_cable"].labels["device_name"].startswith(site3.code)


def test_an_alarms_timestamp_is_when_mist_last_saw_it(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="degraded", now=NOW)
    snap = collect(collector, server)
    rogue = next(e for e in snap.events if e.type == "rogue_ap")  # opened 3 days, last seen 2 days ago
    assert NOW - rogue.timestamp >= timedelta(days=2)
    assert NOW - datetime.fromisoformat(rogue.labels["opened_at"]) >= timedelta(days=3)


def test_mist_alarm_severities_map_explicitly_and_an_unknown_one_is_kept_as_minor():
    assert mistcollector.ALARM_SEVERITY == {"critical": "critical", "warn": "major", "info": "info"}
    cycle = mistcollector._Cycle(org_id="o", now_ts=NOW.timestamp())
    event = mistcollector.alarm_event({"id": "a1", "type": "x", "group": "infrastructure", "severity": "fatal",
                              "timestamp": NOW.timestamp()}, cycle)
    assert event.severity == "minor" and event.labels["mist_severity"] == "fatal"


def test_device_events_carry_site_and_device_labels(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="degraded", now=NOW)
    snap = collect(collector, server)
    events = [e for e in snap.events if e.source == "mist.device_event"]
    assert sorted(e.type for e in events) == ["AP_DISCONNECTED"] * 3 + ["GW_DISCONNECTED", "SW_DISCONNECTED"]
    for event in events:
        assert {"org_id", "site_id", "site_name", "mac", "device_name", "device_type", "device_id"} <= set(event.labels)
        assert event.severity == "minor"
        assert NOW - timedelta(hours=1) <= event.timestamp <= NOW


# ------------------------------------------------------------------------------------------ cursor

def test_cursor_carries_the_last_event_poll_into_the_next_cycle(collector, healthy):
    first = collect(collector, healthy)
    assert first.cursors["mist"]["last_event_poll"] == NOW.timestamp()
    query = next(q for _m, p, q in healthy.requests if p.endswith("/devices/events/search"))
    assert int(query["start"]) == int((NOW - timedelta(hours=1)).timestamp())  # first run: a short window

    healthy.reset_counters()
    later = NOW + timedelta(minutes=5)
    second = collect(collector, healthy, now=later, cursor=first.cursors["mist"])
    query = next(q for _m, p, q in healthy.requests if p.endswith("/devices/events/search"))
    # the window overlaps the previous one, for events Mist indexes late
    assert int(query["start"]) == int(NOW.timestamp()) - mistcollector.EVENT_OVERLAP
    assert int(query["end"]) == int(later.timestamp())
    assert second.cursors["mist"]["last_event_poll"] == later.timestamp()


def test_events_of_the_next_cycle_are_only_the_new_ones(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="degraded", now=NOW)
    first = collect(collector, server)
    assert any(e.source == "mist.device_event" for e in first.events)
    second = collect(collector, server, now=NOW + timedelta(minutes=5), cursor=first.cursors["mist"])
    assert [e for e in second.events if e.source == "mist.device_event"] == []


def test_an_event_indexed_late_is_still_seen_once(collector, make_simulator):
    # recovered: the devices' *_CONNECTED events are indexed by Mist 4 minutes after they happened
    server = make_simulator(sites=12, devices_per_site=6, scenario="recovered", now=NOW)
    connected_at = min(e["timestamp"] for e in server.org.state.events if e["type"].endswith("_CONNECTED"))
    cycle_at = datetime.fromtimestamp(connected_at + 60, tz=timezone.utc)  # happened, not yet indexed
    first = collect(collector, server, now=cycle_at)
    assert not any(e.type.endswith("_CONNECTED") for e in first.events)
    cursor = first.cursors["mist"]
    seen: list[str] = []
    for minutes in (5, 10, 15):  # three more cycles: the late events come once, in the overlap
        snap = collect(collector, server, now=cycle_at + timedelta(minutes=minutes), cursor=cursor)
        cursor = snap.cursors["mist"]
        seen += [e.id for e in snap.events if e.type.endswith("_CONNECTED")]
    assert len(seen) == 5 == len(set(seen))


def test_a_failed_event_poll_keeps_the_cursor_so_the_window_is_asked_again(collector, healthy):
    healthy.inject("*/devices/events/search", "503", count=2)
    snap = collect(collector, healthy, cursor={"last_event_poll": NOW.timestamp() - 300})
    assert snap.cursors["mist"] == {"last_event_poll": NOW.timestamp() - 300}
    (error,) = snap.errors
    assert error.endpoint == "devices/events/search"


# ------------------------------------------------------------------------------------------ failures

def test_failing_wifi_sle_marks_sle_wifi_unknown_not_zero_and_keeps_the_rest(collector, healthy):
    healthy.inject("*/insights/sites-sle", "500", count=2)  # max_retries=1: exactly the first (wifi) call
    snap = collect(collector, healthy)
    (error,) = snap.errors
    assert error.endpoint == "insights/sites-sle?sle=wifi" and "gave up after 2 attempts" in error.message
    assert error.kinds == {"site"} and error.metrics == {"sle.wifi.*", "site.sle_wifi_clients"}
    for site in by_kind(snap, "site"):
        assert not any(name.startswith("sle.wifi.") for name in site.metrics)
        assert snap.is_unknown(site, "sle.wifi.coverage")
        assert "sle.wired.switch_health" in site.metrics and not snap.is_unknown(site, "sle.wired.switch_health")
        assert "site.ap_total" in site.metrics and not snap.is_unknown(site, "site.ap_total")
    assert all(not snap.is_unknown(d, "device.connected") for d in by_kind(snap, "device"))
    assert len(by_kind(snap, "device")) == 72


def test_failing_device_stats_marks_devices_unknown_and_keeps_sites(collector, healthy):
    healthy.inject("*/stats/devices", "503", count=100)
    snap = collect(collector, healthy)
    assert by_kind(snap, "device") == []
    assert snap.kind_unknown("device")
    (error,) = snap.errors
    assert error.endpoint == "stats/devices" and error.kinds == {"device"}
    for site in by_kind(snap, "site"):
        assert site.metrics["site.ap_connected"] == 4 and not snap.is_unknown(site, "site.ap_connected")
    assert not snap.kind_unknown("site")


def test_failing_site_stats_falls_back_to_the_site_list_for_names(collector, healthy):
    healthy.inject("*/stats/sites", "503", count=100)
    snap = collect(collector, healthy)
    assert [e.endpoint for e in snap.errors] == ["stats/sites"]
    assert healthy.calls_by_path[f"/api/v1/orgs/{healthy.org.org_id}/sites"] == 1
    sites = by_kind(snap, "site")
    assert len(sites) == 12 and all(set(s.labels) == SITE_LABELS for s in sites)
    for site in sites:
        # the device counters come from stats/devices, which answered; only the client count is missing
        assert site.metrics["site.ap_total"] == 4 and not snap.is_unknown(site, "site.ap_total")
        assert "site.clients" not in site.metrics and snap.is_unknown(site, "site.clients")
        assert "sle.wifi.coverage" in site.metrics and not snap.is_unknown(site, "sle.wifi.coverage")
    (org,) = by_kind(snap, "org")
    assert "org.sites" not in org.metrics and snap.is_unknown(org, "org.sites")
    assert org.metrics["org.devices"] == 72
    assert all("site_name" in d.labels for d in by_kind(snap, "device"))


def test_the_site_list_is_reused_for_sites_refresh_seconds(collector, healthy):
    sites_path = f"/api/v1/orgs/{healthy.org.org_id}/sites"
    healthy.inject("*/stats/sites", "503", count=4)  # two cycles, two attempts each
    collect(collector, healthy)
    second = collect(collector, healthy, now=NOW + timedelta(minutes=5))
    assert healthy.calls_by_path[sites_path] == 1
    assert len(by_kind(second, "site")) == 12 and all("site_name" in s.labels for s in by_kind(second, "site"))
    healthy.inject("*/stats/sites", "503", count=2)
    collect(collector, healthy, now=NOW + timedelta(minutes=10), sites_refresh=0)
    assert healthy.calls_by_path[sites_path] == 2


def test_site_clients_come_from_stats_sites_and_clients_count_is_not_asked(collector, healthy):
    snap = collect(collector, healthy)
    assert not any(p.endswith("/clients/count") for p in healthy.calls_by_path)
    counts = {s.id: healthy.org.site_clients(s.index, NOW.timestamp(), healthy.org.state) for s in healthy.org.sites}
    assert {e.labels["site_id"]: e.metrics["site.clients"] for e in by_kind(snap, "site")} == counts


def test_failing_site_stats_marks_site_clients_unknown(collector, healthy):
    healthy.inject("*/stats/sites", "502", count=2)
    snap = collect(collector, healthy)
    for site in by_kind(snap, "site"):
        assert "site.clients" not in site.metrics and snap.is_unknown(site, "site.clients")
        assert not snap.is_unknown(site, "site.alarms_open")
        assert site.metrics["site.ap_connected"] == 4  # stats/devices still counts the devices
    (org,) = by_kind(snap, "org")
    assert snap.is_unknown(org, "org.clients")


def test_failing_alarms_mark_site_alarm_counts_unknown(collector, healthy):
    healthy.inject("*/alarms/search", "malformed", count=2)
    snap = collect(collector, healthy)
    (error,) = snap.errors
    assert error.endpoint == "alarms/search?status=open"
    for site in by_kind(snap, "site"):
        assert "site.alarms_open" not in site.metrics and snap.is_unknown(site, "site.alarms_critical")


def test_rate_limit_stops_the_cycle_from_spending_more_calls(collector, healthy):
    healthy.inject("*/insights/sites-sle", "429", count=1, retry_after=3600)
    snap = collect(collector, healthy)
    assert snap.errors[0].endpoint == "insights/sites-sle?sle=wifi"
    assert "hourly API budget" in snap.errors[0].message
    assert all(e.message.startswith("not asked: the Mist API rate limit") for e in snap.errors[1:])
    assert len(snap.errors) == 7  # wifi, wired, wan, alarms, events, vpn peers, bgp peers
    assert healthy.calls == 1 + 2 + 1  # /self, stats/sites, stats/devices, the one 429
    assert len(by_kind(snap, "device")) == 72


def test_an_unreachable_api_is_given_up_after_two_endpoints(collector, healthy):
    state: dict = {}
    collect(collector, healthy, state=state)  # /self checked; now the API goes away mid-run
    healthy.reset_counters()
    healthy.inject("/api/v1/orgs/*", "drop", count=1000)
    with pytest.raises(CollectionFailed, match=r"every Mist API call failed.*connection failed"):
        collect(collector, healthy, state=state)
    assert healthy.calls == 4  # two endpoints x two attempts, the other seven not asked


def test_bad_token_raises_collection_failed_with_a_clear_message(collector, healthy):
    ctx = CollectContext(settings={**settings_for(healthy), "token": "wrong-token-4711"}, now=NOW)
    with pytest.raises(CollectionFailed, match="refused the API token") as err:
        collector.collect(ctx)
    assert "wrong-token-4711" not in str(err.value)
    assert err.value.exit_code == 1


def test_org_outside_the_token_raises_collection_failed_naming_what_it_can_access(collector, healthy):
    ctx = CollectContext(settings={**settings_for(healthy), "org_id": "not-my-org"}, now=NOW)
    with pytest.raises(CollectionFailed, match=r"no privileges on org_id not-my-org.*Acme Retail"):
        collector.collect(ctx)


def test_every_call_failing_raises_collection_failed(collector, healthy):
    healthy.inject("/api/v1/orgs/*", "503", count=1000)
    with pytest.raises(CollectionFailed, match=r"every Mist API call failed.*HTTP 503"):
        collect(collector, healthy)


def test_token_refused_mid_run_raises_and_rechecks_self_next_time(collector, healthy):
    state: dict = {}
    collect(collector, healthy, state=state)
    healthy.api.token = "rotated-token"  # the configured token stops working
    with pytest.raises(CollectionFailed, match="refused the API token"):
        collect(collector, healthy, state=state)
    healthy.api.token = healthy.token
    healthy.reset_counters()
    collect(collector, healthy, state=state)
    assert healthy.calls_by_path["/api/v1/self"] == 1


# ------------------------------------------------------------------------------------------ parsing

def test_timestamps_in_seconds_or_milliseconds_parse_alike():
    assert epoch(1712412455) == 1712412455
    assert epoch(1712412455215) == pytest.approx(1712412455.215)
    assert epoch("1596588619.007") == pytest.approx(1596588619.007)
    assert epoch(None) is None and epoch("soon") is None and epoch(True) is None and epoch(-5) is None


def test_device_rows_with_missing_fields_yield_no_metric_and_unknown_fields_are_ignored():
    now = 1764590400.0
    disconnected_ap = {"type": "ap", "id": "x", "status": "disconnected", "last_seen": 1764585000,
                       "uptime": 0, "brand_new_field": {"nested": [1, 2]}}
    assert device_metrics(disconnected_ap, now) == {"device.connected": 0.0, "device.uptime": 0.0,
                                                    "device.last_seen_age": 5400.0}
    switch = {"type": "switch", "status": "connected", "cpu_stat": {"idle": 74}, "memory_stat": {"usage": 16},
              "last_seen": 1764590380000}  # milliseconds
    assert device_metrics(switch, now) == {"device.connected": 1.0, "device.last_seen_age": 20.0,
                                           "device.cpu": 26.0, "device.memory": 16.0}
    ap = {"type": "ap", "cpu_util": 7, "mem_used_kb": 202096, "mem_total_kb": 505468, "num_clients": 23}
    metrics = device_metrics(ap, now)
    assert metrics["device.cpu"] == 7 and metrics["device.clients"] == 23
    assert metrics["device.memory"] == pytest.approx(39.98, abs=0.01)


# ------------------------------------------------------------------------------ Mist's device states

def devices_by_name(snap: Snapshot) -> dict:
    return {d.labels["device_name"]: d for d in by_kind(snap, "device")}


def test_upgrading_and_restarting_devices_that_report_are_up_not_offline(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="upgrade-wave", now=NOW)
    snap = collect(collector, server)
    sites = server.org.sites
    wave = site_of(snap, sites[1].id).metrics
    assert wave["site.ap_connected_ratio"] == 1.0 and wave["site.devices_disconnected"] == 0
    assert wave["site.devices_upgrading"] == 4
    busy = [d for d in by_kind(snap, "device") if d.metrics.get("device.upgrading") == 1]
    assert len(busy) == 6 and all(d.metrics["device.connected"] == 1 for d in busy)
    assert {d.labels["status"] for d in busy} == {"upgrading", "restarting"}


def test_a_claimed_device_that_never_connected_is_inventory_not_an_outage(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="upgrade-wave", now=NOW)
    snap = collect(collector, server)
    site3 = site_of(snap, server.org.sites[3].id).metrics
    assert site3["site.devices_not_connected_yet"] == 1
    assert site3["site.ap_total"] == 3 and site3["site.ap_connected_ratio"] == 1.0
    assert site3["site.devices_disconnected"] == 0
    (never,) = [d for d in by_kind(snap, "device") if d.metrics.get("device.never_connected")]
    assert "device.connected" not in never.metrics and never.labels["site_id"] == server.org.sites[3].id


def test_a_failed_firmware_update_is_reported_on_a_connected_device(collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="upgrade-wave", now=NOW)
    snap = collect(collector, server)
    (failed,) = [d for d in by_kind(snap, "device") if d.metrics.get("device.fwupdate_failed")]
    assert failed.metrics["device.connected"] == 1 and failed.labels["fwupdate_status"] == "failed"


def test_an_upgrade_in_progress_reports_the_age_of_mists_timestamp():
    now = NOW.timestamp()
    row = {"type": "switch", "status": "upgrading", "last_seen": now - 60,
           "fwupdate": {"status": "inprogress", "progress": 60, "timestamp": now - 5400.5, "will_retry": False}}
    assert device_metrics(row, now)["device.upgrade_age"] == 5400.5


@pytest.mark.parametrize("fwupdate", [
    {"status": "inprogress", "progress": 40},  # no timestamp: mistwatch's own observation is the fallback
    {"status": "inprogress", "timestamp": "soon"},
    {"status": "upgraded", "progress": 100, "timestamp": NOW.timestamp() - 7200},
    {"status": "scheduled", "timestamp": NOW.timestamp() - 7200},
])
def test_an_upgrade_age_is_given_only_for_an_update_in_progress_with_a_timestamp(fwupdate):
    row = {"type": "ap", "status": "upgrading", "last_seen": NOW.timestamp(), "fwupdate": fwupdate}
    assert "device.upgrade_age" not in device_metrics(row, NOW.timestamp())


@pytest.mark.parametrize(("will_retry", "failed"), [(True, 0.0), (False, 1.0), (None, 1.0)])
def test_a_failed_update_mist_will_retry_is_not_failed_until_the_retries_end(will_retry, failed):
    fwupdate = {"status": "failed", "progress": 0, "timestamp": NOW.timestamp() - 600}
    if will_retry is not None:
        fwupdate["will_retry"] = will_retry
    row = {"type": "ap", "status": "connected", "last_seen": NOW.timestamp(), "fwupdate": fwupdate}
    assert device_metrics(row, NOW.timestamp())["device.fwupdate_failed"] == failed


@pytest.mark.parametrize(("row", "state", "connected"), [
    ({"status": "connected", "last_seen": NOW.timestamp() - 30}, "connected", 1.0),
    ({"status": "disconnected", "last_seen": NOW.timestamp() - 900, "uptime": 0}, "gone", 0.0),
    ({"status": "upgrading", "last_seen": NOW.timestamp() - 60}, "busy", 1.0),
    ({"status": "restarting", "last_seen": NOW.timestamp() - 600}, "busy", 1.0),
    ({"status": "upgrading", "last_seen": NOW.timestamp() - 3 * 3600}, "gone", 0.0),  # stopped reporting
    ({"status": "disconnected"}, "never", None),
    ({"status": "connected"}, "connected", 1.0),  # connected wins even without last_seen
    ({"status": "provisioning", "last_seen": NOW.timestamp() - 30}, "unknown", None),
])
def test_device_status_strings_are_read_with_mists_meaning(row, state, connected):
    assert mistcollector.device_state(row, NOW.timestamp()) == state
    assert device_metrics(row, NOW.timestamp()).get("device.connected") == connected


def test_an_unknown_status_is_counted_as_unknown_and_kept_as_a_label():
    metrics = device_metrics({"type": "ap", "status": "<script>x</script>", "last_seen": NOW.timestamp()},
                             NOW.timestamp())
    assert metrics["device.status_unknown"] == 1 and "device.connected" not in metrics


# --------------------------------------------------------------------------------- WAN, chassis, radios

def test_a_wan_link_failure_shows_as_a_link_down_a_path_down_a_lossy_path_and_a_bgp_peer_down(
        collector, make_simulator):
    server = make_simulator(sites=12, devices_per_site=6, scenario="wan-link-failure", now=NOW)
    snap = collect(collector, server)
    sites = server.org.sites
    (gateway,) = [d for d in by_kind(snap, "device") if d.metrics.get("device.wan_links_down")]
    assert gateway.labels["site_id"] == sites[1].id and gateway.labels["wan_links_down"] == "wan2"
    assert gateway.metrics["device.connected"] == 1 and gateway.metrics["device.wan_links_up"] == 1
    paths = by_kind(snap, "vpn_peer")
    assert len(paths) == 22 and len({p.key for p in paths}) == 22
    down = [p for p in paths if p.metrics["vpn_peer.up"] == 0]
    assert [(p.labels["site_id"], p.labels["port_id"]) for p in down] == [(sites[1].id, "ge-0/0/1")]
    assert down[0].labels["device_id"] == gateway.labels["device_id"]
    lossy = [p for p in paths if p.metrics.get("vpn_peer.loss", 0) > 2]
    assert [(p.labels["site_id"], p.metrics["vpn_peer.loss"], p.metrics["vpn_peer.mos"]) for p in lossy] == [
        (sites[2].id, 6.0, 3.0)]
    bgp_down = [b for b in by_kind(snap, "bgp_peer") if b.metrics["bgp_peer.up"] == 0]
    assert [(b.labels["site_id"], b.labels["bgp_state"], b.metrics["bgp_peer.rx_routes"]) for b in bgp_down] == [
        (sites[3].id, "active", 0.0)]


def test_peers_are_not_asked_for_an_org_without_gateways(collector, make_simulator):
    server = make_simulator(sites=4, devices_per_site=2, now=NOW)  # APs and a switch per site
    snap = collect(collector, server)
    assert not any("peers" in path for path in server.calls_by_path)
    assert by_kind(snap, "vpn_peer") == [] and snap.errors == []


def test_chassis_parts_and_radios_are_read_from_device_rows():
    now = NOW.timestamp()
    switch = {"type": "switch", "status": "connected", "last_seen": now, "config_status": "failed",
              "module_stat": [{"psus": [{"name": "PSU 0", "status": "ok"}, {"name": "PSU 1", "status": "absent"}],
                               "fans": [{"name": "Fan 0", "status": "failed"}],
                               "temperatures": [{"name": "CPU", "status": "ok", "celsius": 51},
                                                {"name": "Intake", "status": "major", "celsius": 66}]}]}
    metrics = device_metrics(switch, now)
    assert (metrics["device.psus"], metrics["device.psus_failed"]) == (1, 0)  # an empty slot is not a failure
    assert metrics["device.fans_failed"] == 1 and metrics["device.config_failed"] == 1
    assert (metrics["device.temperature_max"], metrics["device.temperatures_alarm"]) == (66, 1)
    assert mistcollector.chassis_faults(switch["module_stat"]) == "Fan 0 failed, Intake major"
    ap = {"type": "ap", "status": "connected", "last_seen": now, "power_constrained": True,
          "radio_stat": {"band_24": {"util_all": 91, "noise_floor": -82}, "band_6": {"util_all": 4}}}
    metrics = device_metrics(ap, now)
    assert metrics["device.radio_util_24"] == 91 and metrics["device.noise_floor_24"] == -82
    assert metrics["device.radio_util_6"] == 4 and "device.radio_util_5" not in metrics
    assert metrics["device.power_constrained"] == 1


def _ha_gateway(now: float) -> dict:
    ok_chassis = [{"psus": [{"name": "Power Supply 0", "status": "ok"}], "fans": [{"name": "Fan 0", "status": "ok"}],
                   "temperatures": [{"name": "CPU", "status": "ok", "celsius": 45}]}]
    return {"type": "gateway", "status": "connected", "last_seen": now, "is_ha": True, "node_name": "node0",
            "module_stat": ok_chassis,
            "module2_stat": [{"psus": [{"name": "Power Supply 0", "status": "failed"}],
                              "temperatures": [{"name": "CPU", "status": "ok", "celsius": 58}]}],
            "if_stat": {"ge-0/0/0.0": {"port_usage": "wan", "wan_name": "wan1", "up": True}},
            "if2_stat": {"ge-5/0/0.0": {"port_usage": "wan", "wan_name": "wan1", "up": False}}}


def test_the_second_node_of_an_ha_gateway_counts_in_chassis_health_and_wan_links():
    now = NOW.timestamp()
    metrics = device_metrics(_ha_gateway(now), now)
    assert metrics["device.ha"] == 1
    assert (metrics["device.psus"], metrics["device.psus_failed"], metrics["device.temperature_max"]) == (2, 1, 58)
    assert (metrics["device.wan_links"], metrics["device.wan_links_down"]) == (2, 1)


def test_the_labels_name_the_second_node_of_an_ha_gateway():
    row = _ha_gateway(NOW.timestamp())
    assert mistcollector.chassis_faults(mistcollector.device_modules(row)) == "node1 Power Supply 0 failed"
    assert [n for n, up in mistcollector.gateway_wan_links(row) if not up] == ["node1 wan1"]


def test_the_simulated_hq_gateway_is_an_ha_cluster_whose_second_node_counts(collector, make_simulator):
    snap = collect(collector, make_simulator(sites=3, now=NOW))
    (hq,) = [e for e in snap.entities if e.kind == "device" and e.metrics.get("device.ha") == 1]
    assert (hq.metrics["device.psus"], hq.metrics["device.wan_links"], hq.metrics["device.wan_links_up"]) == (4, 3, 3)


def test_sle_v1_and_current_names_map_to_one_metric_and_the_current_one_wins():
    row = {"site_id": "s", "num_gateways": 1, "num_clients": 40, "wan-link-health": 0.9,
           "wan-link-health-v2": 0.7, "application-health": 0.95, "gateway-bandwidth": 0.99, "new-thing-v3": 0.5}
    assert mistcollector.sle_metrics("wan", row) == {
        "sle.wan.wan_link_health": 0.7, "sle.wan.application_health": 0.95, "sle.wan.gateway_bandwidth": 0.99,
        "sle.wan.new_thing": 0.5, "site.sle_wan_clients": 40.0}
    assert mistcollector.sle_metrics("wired", {"switch-health-v2": 0.8, "num_users": 3}) == {
        "sle.wired.switch_health": 0.8, "site.sle_wired_clients": 3.0}


# ------------------------------------------------------------------------------------- the budget

def test_calls_are_counted_per_token_and_clock_hour_across_restarts(healthy):
    state: dict = {}
    collect(MistCollector(), healthy, state=state)
    snap = collect(MistCollector(), healthy, now=NOW + timedelta(minutes=15), state=state)
    assert snap.api_budget["mist"]["calls_hour"] == 10 + 9 == healthy.calls_this_hour()
    assert snap.api_budget["mist"]["calls_cycle"] == 9
    assert snap.api_budget["mist"]["min_interval_s"] == 60  # 9 calls a cycle: every minute fits
    later = collect(MistCollector(), healthy, now=NOW + timedelta(hours=1), state=state)
    assert later.api_budget["mist"]["calls_hour"] == 9  # a new clock hour
    assert healthy.token not in repr(state)


def test_a_429_without_retry_after_stops_the_cycle_and_no_call_is_made_until_the_hour_turns(healthy):
    state: dict = {}
    collector = MistCollector()
    collect(collector, healthy, state=state)
    healthy.hourly_budget = healthy.calls_this_hour() + 3  # another tool spent the rest of the hour
    snap = collect(collector, healthy, now=NOW + timedelta(minutes=10), state=state)
    assert [e.endpoint for e in snap.errors][:1] == ["insights/sites-sle?sle=wired"]
    assert all("budget" in e.message for e in snap.errors)
    assert snap.api_budget["mist"]["blocked_until"] == "2026-01-05T10:01:00+00:00"
    healthy.reset_counters()
    with pytest.raises(CollectionFailed, match=r"429.*no call is made before 10:01 UTC"):
        collect(collector, healthy, now=NOW + timedelta(minutes=40), state=state)
    assert healthy.calls == 0
    resumed = collect(collector, healthy, now=NOW + timedelta(hours=1, minutes=5), state=state)
    assert resumed.errors == [] and healthy.calls == 9


def test_when_the_hour_would_run_out_optional_endpoints_are_skipped_before_device_state(healthy):
    state: dict = {}
    collector = MistCollector()
    collect(collector, healthy, state=state)  # 10 calls; the interval of the next ones is 1 minute
    collect(collector, healthy, now=NOW + timedelta(minutes=1), state=state)
    # 58 more one-minute cycles in this hour at 9 calls each would need 522; leave 460
    snap = collect(collector, healthy, now=NOW + timedelta(minutes=2), state=state, hourly_budget=480)
    budget = snap.api_budget["mist"]
    assert budget["skipped"] == ["stats/bgp_peers/search", "stats/vpn_peers/search"]
    assert sorted(e.endpoint for e in snap.errors) == sorted(budget["skipped"])
    assert all(e.message.startswith("skipped:") for e in snap.errors)
    assert by_kind(snap, "device") and by_kind(snap, "vpn_peer") == []
    assert snap.is_unknown(by_kind(snap, "site")[0], "site.alarms_open") is False


def test_planning_skips_the_least_wanted_optional_endpoint_first():
    optional = [("alarms", 1), ("events", 1), ("vpn", 2), ("bgp", 1)]
    assert mistcollector.plan_optional(0, 5000, 12, 6, optional) == []
    assert mistcollector.plan_optional(4900, 5000, 12, 6, optional) == ["vpn", "bgp"]  # 8.3 calls a cycle left
    assert mistcollector.plan_optional(4990, 5000, 2, 6, optional) == ["alarms", "events", "vpn", "bgp"]


def test_the_shortest_interval_follows_the_cost_of_a_cycle():
    assert mistcollector.min_interval_s(9, 5000) == 60
    assert mistcollector.min_interval_s(137, 5000) == 120  # 36 cycles an hour fit: every 100 s, so 2 minutes
    assert mistcollector.min_interval_s(6000, 5000) is None
