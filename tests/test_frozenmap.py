"""FrozenMap: the compact read-only mapping of entities' labels and metrics, and everything downstream
that must take it where it took a dict (rules, store, report, notifications, ``run --json``)."""

from __future__ import annotations

import functools
import json
import pickle
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer

import pytest
import yaml
from fixtures_http import HttpReceiver, _handler
from fixtures_rules import REPO, Cycles, rules_from

from mistwatch import model
from mistwatch.hookspecs import CollectContext
from mistwatch.model import Entity, FrozenMap, Snapshot
from mistwatch.plugins.mist.client import MistClient
from mistwatch.plugins.mist.collector import MistCollector
from mistwatch.plugins.mist.orgs import _LastSeen, collect_orgs
from mistwatch.plugins.mist.simulator import SimulatedOrg, serve
from mistwatch.rules.derived import derive
from mistwatch.rules.expr import Expression, ExpressionError, Template

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
LABELS = {"org_id": "o1", "site_id": "s1", "site_name": "Dublin <b>HQ</b>", "device_name": "ap-01"}
METRICS = {"device.connected": 1.0, "device.clients": 12.0, "device.uptime": 3600.0}


# --- the mapping ----------------------------------------------------------------------------------

def test_equals_the_dict_it_was_made_from():
    frozen = FrozenMap(LABELS)
    assert frozen == LABELS
    assert LABELS == frozen  # noqa: SIM300  (the dict on the left: its == must defer to the map's)


def test_differs_from_a_dict_with_one_value_changed():
    assert FrozenMap(METRICS) != {**METRICS, "device.clients": 13.0}


def test_differs_from_a_dict_with_the_same_values_under_other_keys():
    assert FrozenMap({"a": 1.0, "b": 2.0}) != {"a": 1.0, "c": 2.0}


def test_equals_another_frozen_map_of_the_same_items_in_another_order():
    assert FrozenMap({"a": 1.0, "b": 2.0}) == FrozenMap({"b": 2.0, "a": 1.0})


def test_item_assignment_raises_type_error():
    frozen = FrozenMap(LABELS)
    with pytest.raises(TypeError):
        frozen["site_name"] = "elsewhere"  # type: ignore[index]


def test_item_deletion_raises_type_error():
    frozen = FrozenMap(LABELS)
    with pytest.raises(TypeError):
        del frozen["site_name"]  # type: ignore[attr-defined]


def test_its_storage_cannot_be_rebound():
    frozen = FrozenMap(LABELS)
    with pytest.raises(TypeError):
        frozen._values = ("x",) * len(LABELS)  # type: ignore[misc]


def test_calling_init_again_does_not_change_it():
    frozen = FrozenMap(LABELS)
    frozen.__init__({"site_name": "elsewhere"})  # type: ignore[misc]
    assert frozen == LABELS


def test_has_no_mutating_dict_methods():
    frozen = FrozenMap(LABELS)
    assert not any(hasattr(frozen, name) for name in ("update", "pop", "setdefault", "clear", "popitem"))


def test_a_change_to_the_source_dict_does_not_reach_the_map():
    source = dict(LABELS)
    frozen = FrozenMap(source)
    source["site_name"] = "elsewhere"
    assert frozen["site_name"] == LABELS["site_name"]


def test_maps_with_the_same_keys_in_the_same_order_share_one_index():
    first = FrozenMap(METRICS)
    second = FrozenMap({name: value + 1 for name, value in METRICS.items()})
    assert first._index is second._index


def test_maps_with_other_keys_do_not_share_the_index():
    assert FrozenMap(METRICS)._index is not FrozenMap({**METRICS, "device.cpu": 5.0})._index


def test_the_layout_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(model, "_LAYOUTS", {})
    monkeypatch.setattr(model, "_MAX_LAYOUTS", 8)
    maps = [FrozenMap({f"key{i}": 1.0}) for i in range(50)]
    assert len(model._LAYOUTS) <= 8
    assert [m[f"key{i}"] for i, m in enumerate(maps)] == [1.0] * 50


def test_is_smaller_than_the_dict_it_replaces():
    labels = {f"label_{i}": f"value {i}" for i in range(10)}
    frozen = FrozenMap(labels)
    assert sys.getsizeof(frozen) + sys.getsizeof(frozen._values) < sys.getsizeof(labels) * 2 / 3


def test_reads_like_the_dict():
    frozen = FrozenMap(METRICS)
    assert (frozen["device.clients"], frozen.get("device.clients"), frozen.get("device.cpu"),
            frozen.get("device.cpu", -1.0)) == (12.0, 12.0, None, -1.0)
    assert ("device.uptime" in frozen, "device.cpu" in frozen, len(frozen)) == (True, False, 3)


def test_a_missing_key_raises_key_error():
    with pytest.raises(KeyError):
        FrozenMap(METRICS)["device.cpu"]


def test_iterates_keys_values_and_items_in_the_dicts_order():
    frozen = FrozenMap(METRICS)
    assert (list(frozen), list(frozen.keys()), list(frozen.values()), list(frozen.items())) == (
        list(METRICS), list(METRICS.keys()), list(METRICS.values()), list(METRICS.items()))


def test_views_can_be_iterated_twice_and_support_len_and_in():
    items, values = FrozenMap(METRICS).items(), FrozenMap(METRICS).values()
    assert list(items) == list(items) and len(items) == 3 and ("device.clients", 12.0) in items
    assert list(values) == list(values) and len(values) == 3 and 3600.0 in values


def test_keys_are_a_set_like_view():
    assert {"device.clients", "device.cpu"} - FrozenMap(METRICS).keys() == {"device.cpu"}


def test_repr_is_the_dicts():
    assert repr(FrozenMap(LABELS)) == repr(LABELS)


def test_copy_and_dict_give_a_mutable_dict_of_the_same_items():
    frozen = FrozenMap(LABELS)
    assert type(frozen.copy()) is dict and frozen.copy() == LABELS and dict(frozen) == LABELS


def test_or_with_a_dict_gives_a_dict_the_right_side_winning():
    assert FrozenMap({"a": 1, "b": 2}) | {"b": 3} == {"a": 1, "b": 3}
    assert {"b": 3, "c": 4} | FrozenMap({"a": 1, "b": 2}) == {"b": 2, "c": 4, "a": 1}


def test_spreads_into_a_dict():
    assert {**FrozenMap(LABELS), "category": "site"} == {**LABELS, "category": "site"}


def test_survives_pickling():
    frozen = FrozenMap(METRICS)
    assert pickle.loads(pickle.dumps(frozen)) == frozen


def test_a_frozen_map_of_a_frozen_map_shares_its_values():
    frozen = FrozenMap(METRICS)
    assert FrozenMap(frozen)._values is frozen._values


def test_is_not_hashable_like_the_dict_it_equals():
    with pytest.raises(TypeError):
        hash(FrozenMap(LABELS))


# --- rules: expressions and templates -------------------------------------------------------------

def frozen_site(site_id: str, name: str, **metrics: float) -> Entity:
    labels = FrozenMap({"org_id": "o1", "site_id": site_id, "site_name": name})
    return Entity(f"site:{site_id}", "site", labels, FrozenMap({k.replace("__", "."): v for k, v in metrics.items()}))


def test_expressions_read_frozen_labels_by_attribute_and_by_item():
    expr = Expression("labels.site_name == labels['site_name'] and labels.get('site_id') == 's1'")
    assert expr.evaluate({"labels": FrozenMap({"site_name": "Dublin", "site_id": "s1"})}) is True


def test_expressions_read_frozen_metrics_by_item_get_and_in():
    expr = Expression("metrics['site.clients'] > 3 and metrics.get('site.aps', 0) == 0 and 'site.clients' in metrics")
    assert expr.evaluate({"metrics": FrozenMap({"site.clients": 4.0})}) is True


def test_templates_read_frozen_labels_by_attribute_item_and_get():
    template = Template("{{ labels.site_name }}/{{ labels['site_id'] }}/{{ labels.get('x', 'none') }}")
    assert template.render({"labels": FrozenMap({"site_name": "Dublin", "site_id": "s1"})}) == "Dublin/s1/none"


def test_templates_loop_over_frozen_metrics_items():
    template = Template("{% for name, value in metrics.items() %}{{ name }}={{ value | num }};{% endfor %}")
    assert template.render({"metrics": FrozenMap({"a": 1.0, "b": 2.5})}) == "a=1;b=2.50;"


@pytest.mark.parametrize("source", ["labels._index", "labels._values", "labels.copy()", "labels['_index']"])
def test_frozen_maps_private_parts_and_copy_stay_out_of_reach(source):
    with pytest.raises(ExpressionError):
        Expression(source).evaluate({"labels": FrozenMap({"site_name": "x"})})


def test_a_rule_over_frozen_entities_fires_and_renders_its_summary(tmp_path):
    ruleset = rules_from(tmp_path, """
        rules:
          - id: busy-site
            kind: threshold
            scope: site
            metric: site.clients
            above: 100
            when: "labels.site_name != 'Lab' and metrics['site.ap_total'] > 0"
            severity: minor
            summary: "{{ labels.site_name }}: {{ metrics['site.clients'] | num }} on {{ labels.get('site_id') }}"
    """)
    cycles = Cycles(ruleset)
    cycles.run([frozen_site("s1", "Dublin", site__clients=150, site__ap_total=3),
                frozen_site("s2", "Lab", site__clients=150, site__ap_total=3)])
    alert = cycles.only("busy-site")
    assert alert.summary == "Dublin: 150 on s1"


def test_an_alert_made_from_a_frozen_entity_has_dict_labels(tmp_path):
    ruleset = rules_from(tmp_path, """
        rules:
          - {id: busy-site, kind: threshold, scope: site, metric: site.clients, above: 100, severity: minor}
    """)
    cycles = Cycles(ruleset)
    cycles.run([frozen_site("s1", "Dublin", site__clients=150)])
    assert type(cycles.only("busy-site").labels) is dict


# --- the Mist collector ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collected():
    with serve(SimulatedOrg(sites=4, devices_per_site=3)) as server:
        server.org.now = NOW
        collector = MistCollector(client_factory=functools.partial(MistClient, sleep=lambda seconds: None))
        settings = {"base_url": server.url, "token": server.token, "org_id": server.org.org_id, "max_retries": 1}
        yield collector.collect(CollectContext(settings=settings, now=NOW, cursor={}, state={}))


def test_the_collector_freezes_every_entitys_labels_and_metrics(collected):
    kinds = {e.kind for e in collected.entities}
    assert {"org", "site", "device"} <= kinds
    assert all(type(e.labels) is FrozenMap and type(e.metrics) is FrozenMap for e in collected.entities)


def test_the_collectors_devices_of_one_type_share_a_label_layout(collected):
    aps = [e for e in collected.entities if e.kind == "device" and e.labels.get("device_type") == "ap"]
    assert len(aps) > 1 and len({id(e.labels._index) for e in aps}) < len(aps)


def test_derived_metrics_keep_the_entitys_metrics_frozen(tmp_path):
    ruleset = rules_from(tmp_path, """
        metrics:
          - {name: site.clients_per_ap, expr: "metrics['site.clients'] / metrics['site.ap_total']"}
    """, known_metrics={"site.clients", "site.ap_total"})
    snapshot = Snapshot(NOW, entities=[frozen_site("s1", "Dublin", site__clients=90, site__ap_total=3)])
    derive(ruleset.metrics, snapshot)
    metrics = snapshot.entities[0].metrics
    assert type(metrics) is FrozenMap and metrics == {"site.clients": 90, "site.ap_total": 3, "site.clients_per_ap": 30}


def test_several_orgs_entities_keep_frozen_labels_with_their_org_name():
    with serve(SimulatedOrg(sites=2, seed=1), token="token-a") as a, serve(SimulatedOrg(sites=2, seed=2),
                                                                          token="token-b") as b:
        orgs = []
        for server, name in ((a, "North"), (b, "South")):
            server.org.now = NOW
            orgs.append({"org_id": server.org.org_id, "token": server.token, "base_url": server.url, "name": name})
        one = MistCollector(client_factory=functools.partial(MistClient, sleep=lambda seconds: None)).collect
        snap = collect_orgs(one, CollectContext(settings={"max_retries": 0, "orgs": orgs}, now=NOW, cursor={}),
                            _LastSeen())
    assert {e.labels["org_name"] for e in snap.entities} == {"North", "South"}
    assert all(type(e.labels) is FrozenMap for e in snap.entities)


# --- everything downstream: a real cycle with the store, the report, a webhook and run --json -----

@pytest.fixture(scope="module")
def degraded_cycle(tmp_path_factory):
    """Three cycles of the degraded scenario with the default rules, all stages, a webhook notifier."""
    from mistwatch.engine import close_app, open_app, run_cycle
    from mistwatch.report.console import summary_json

    tmp = tmp_path_factory.mktemp("frozen")
    ref: list[HttpReceiver] = []
    receiver_server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
    receiver_server.daemon_threads = True
    receiver = HttpReceiver(receiver_server)
    ref.append(receiver)
    threading.Thread(target=receiver_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    with serve(SimulatedOrg(sites=12)) as sim:
        config = {"mist": {"base_url": sim.url, "token": sim.token, "org_id": sim.org.org_id},
                  "state_dir": str(tmp / "var"), "reports": {"dir": str(tmp / "reports")},
                  "rules": [str(REPO / "rules")],
                  "notifiers": [{"name": "hook", "type": "webhook", "url": receiver.url("/in")}]}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        app = open_app(tmp / "config.yaml")
        try:
            sim.org.set_scenario("degraded")
            for minutes in (0, 15, 30):
                at = NOW + timedelta(minutes=minutes)
                sim.org.now = at
                result = run_cycle(app, mode="all", now=at)
            entities = app.store.entities()
            yield {"result": result, "summary": summary_json(result), "entities": entities,
                   "webhooks": [r.json() for r in receiver.requests]}
        finally:
            close_app(app)
            receiver_server.shutdown()
            receiver_server.server_close()


def test_the_cycle_ran_on_frozen_entities(degraded_cycle):
    result = degraded_cycle["result"]
    assert result.status == "ok", result.errors
    assert all(type(e.labels) is FrozenMap for e in result.snapshot.entities)


def test_the_store_keeps_frozen_labels_as_json_objects(degraded_cycle):
    sites = {r.key: r for r in degraded_cycle["entities"] if r.kind == "site"}
    snapshot_sites = {e.key: e for e in degraded_cycle["result"].snapshot.entities if e.kind == "site"}
    assert sites and all(sites[key].labels == dict(e.labels) for key, e in snapshot_sites.items())


def test_the_report_json_holds_the_frozen_sites_names(degraded_cycle):
    report = json.loads(degraded_cycle["result"].report.json.read_text(encoding="utf-8"))
    names = {e.labels["site_name"] for e in degraded_cycle["result"].snapshot.entities if e.kind == "site"}
    assert names and all(name in json.dumps(report, ensure_ascii=False) for name in names)


def test_webhook_payloads_carry_the_alerts_labels(degraded_cycle):
    assert degraded_cycle["webhooks"], "the degraded scenario fires alerts"
    sites = {e.labels["site_id"] for e in degraded_cycle["result"].snapshot.entities if e.kind == "site"}
    found = json.dumps(degraded_cycle["webhooks"])
    assert any(site_id in found for site_id in sites)


def test_run_json_serialises_the_cycle_of_frozen_entities(degraded_cycle):
    out = json.loads(json.dumps(degraded_cycle["summary"], default=str))
    firing = [a for a in out["insights"]["alerts"] if a["state"] == "firing"]
    assert firing and all(isinstance(a["labels"], dict) and a["labels"].get("site_id") for a in firing)
