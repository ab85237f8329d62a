"""Mist API calls by endpoint and status: counted by the client (retries included), reported by the
collector in ``Snapshot.api_requests``, exported by ``/metrics`` and ``run --json``. Real HTTP to the
simulator over loopback."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone

import pytest
import yaml
from test_e2e import DAY1, REPO, mistwatch, run_at
from test_http import cycle_result, samples

from mistwatch.errors import CollectionFailed
from mistwatch.hookspecs import CollectContext
from mistwatch.model import Snapshot
from mistwatch.plugins.mist.client import MistClient, endpoint_template
from mistwatch.plugins.mist.collector import MistCollector

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
ORG = "6748cfa6-4e12-11e6-9188-0242ac110007"


def no_sleep(seconds: float) -> None:
    return None


def collect_once(server, token: str | None = None) -> Snapshot:
    server.org.now = NOW
    collector = MistCollector(client_factory=functools.partial(MistClient, sleep=no_sleep))
    settings = {"base_url": server.url, "token": token or server.token, "org_id": server.org.org_id,
                "max_retries": 2}
    return collector.collect(CollectContext(settings=settings, now=NOW, cursor={}, state={}))


def test_endpoint_template_replaces_ids_by_placeholders_named_after_their_collection():
    assert endpoint_template(f"/api/v1/orgs/{ORG}/stats/devices") == "/api/v1/orgs/{org_id}/stats/devices"
    assert (endpoint_template(f"/api/v1/sites/{ORG}/devices/5c5b35000001/stats")
            == "/api/v1/sites/{site_id}/devices/{device_id}/stats")
    assert endpoint_template("/api/v1/self") == "/api/v1/self"


def test_endpoint_template_drops_the_query_of_a_next_link():
    link = f"/api/v1/orgs/{ORG}/alarms/search?search_after=%5B1%5D&limit=1000"
    assert endpoint_template(link) == "/api/v1/orgs/{org_id}/alarms/search"


def test_the_client_counts_every_attempt_by_endpoint_and_status(make_simulator):
    sim = make_simulator(sites=3, devices_per_site=2)
    client = MistClient(sim.url, sim.token, sleep=no_sleep, timeout=(2, 5))
    sim.inject("*/stats/sites", "503", count=2)
    client.get_pages(f"/api/v1/orgs/{sim.org.org_id}/stats/sites")
    assert dict(client.requests) == {("/api/v1/orgs/{org_id}/stats/sites", "503"): 2,
                                     ("/api/v1/orgs/{org_id}/stats/sites", "200"): 1}
    assert sum(client.requests.values()) == client.calls


def test_a_dropped_connection_counts_as_error(make_simulator):
    sim = make_simulator(sites=3, devices_per_site=2)
    client = MistClient(sim.url, sim.token, sleep=no_sleep, timeout=(2, 5))
    sim.inject("*/stats/sites", "drop", count=1)
    client.get_pages(f"/api/v1/orgs/{sim.org.org_id}/stats/sites")
    assert client.requests[("/api/v1/orgs/{org_id}/stats/sites", "error")] == 1


def test_reset_calls_starts_the_counts_afresh(make_simulator):
    sim = make_simulator(sites=3, devices_per_site=2)
    client = MistClient(sim.url, sim.token, sleep=no_sleep, timeout=(2, 5))
    client.get("/api/v1/self")
    client.reset_calls()
    assert not client.requests


def test_the_collector_reports_its_requests_by_endpoint_in_the_snapshot(make_simulator):
    sim = make_simulator(sites=4, devices_per_site=2)
    sim.inject("*/stats/devices", "429", count=1, retry_after=1)
    snap = collect_once(sim)
    mine = snap.api_requests["mist"]
    assert mine["/api/v1/orgs/{org_id}/stats/devices"] == {"200": 1, "429": 1}
    assert sum(n for outcomes in mine.values() for n in outcomes.values()) == snap.api_calls
    assert not any(sim.org.org_id in endpoint or sim.token in endpoint for endpoint in mine)


def test_merged_snapshots_add_up_their_requests():
    a = Snapshot(taken_at=NOW, api_requests={"mist": {"/x": {"200": 2}}})
    a.merge(Snapshot(taken_at=NOW, api_requests={"mist": {"/x": {"200": 1, "503": 1}}, "lab": {"/y": {"200": 1}}}))
    assert a.api_requests == {"mist": {"/x": {"200": 3, "503": 1}}, "lab": {"/y": {"200": 1}}}


def test_metrics_export_api_requests_by_collector_endpoint_and_status(http_face, make_simulator):
    sim = make_simulator(sites=4, devices_per_site=2)
    sim.inject("*/stats/devices", "500", count=1)
    snap = collect_once(sim)
    face = http_face()
    face.live.record_cycle(cycle_result(api_requests=snap.api_requests), ["mist"])
    face.live.record_cycle(cycle_result(api_requests=snap.api_requests), ["mist"])
    got = samples(face.get("/metrics").text)
    endpoint = "/api/v1/orgs/{org_id}/stats/devices"
    assert got[("mistwatch_api_requests_total",
                (("collector", "mist"), ("endpoint", endpoint), ("status", "500")))] == 2
    assert got[("mistwatch_api_requests_total",
                (("collector", "mist"), ("endpoint", endpoint), ("status", "200")))] == 2


def test_a_cycle_without_requests_adds_none(http_face):
    face = http_face()
    face.live.record_cycle(cycle_result(api_requests={}), ["mist"])
    face.live.record_cycle(cycle_result(), ["mist"])  # a result without the attribute at all
    assert not any(name == "mistwatch_api_requests_total" for name, _ in samples(face.get("/metrics").text))


def write_config(folder, simulator) -> None:
    config = {"mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id},
              "state_dir": "var", "rules": [str(REPO / "rules")], "notifiers": [{"name": "console", "type": "console"}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def test_run_json_carries_the_requests_by_endpoint(tmp_path, simulator):
    write_config(tmp_path, simulator)
    simulator.inject("*/stats/sites", "503", count=1)
    done = run_at(tmp_path, simulator, DAY1, "healthy", "--mode", "monitor", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["api_requests"]["mist"]["/api/v1/orgs/{org_id}/stats/sites"] == {"200": 1, "503": 1}


def test_a_refused_token_still_reports_the_refused_request(make_simulator):
    sim = make_simulator(sites=3, devices_per_site=2)
    with pytest.raises(CollectionFailed) as failed:
        collect_once(sim, token="not-the-token")
    assert failed.value.api_requests == {"mist": {"/api/v1/self": {"401": 1}}}


def test_run_json_of_a_failed_collection_carries_its_requests(tmp_path, simulator):
    write_config(tmp_path, simulator)
    done = mistwatch("run", "--now", DAY1.isoformat(), "--mode", "monitor", "--json", cwd=tmp_path,
                     env={"MIST_API_TOKEN": "not-the-token"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert json.loads(done.stdout)["api_requests"] == {"mist": {"/api/v1/self": {"401": 1}}}
