"""Several Mist orgs in one mistwatch (``mist: {orgs: [...]}``), against simulators on loopback."""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mistwatch.errors import CollectionFailed, ConfigError
from mistwatch.hookspecs import CollectContext
from mistwatch.plugins.mist.client import MistClient
from mistwatch.plugins.mist.collector import MistCollector
from mistwatch.plugins.mist.orgs import _LastSeen, collect_orgs

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def two_orgs(make_simulator):
    return (make_simulator(token="token-a", sites=3, seed=1, org_name="North"),
            make_simulator(token="token-b", sites=4, seed=2, org_name="South"))


def org_entry(server, name=None, **extra) -> dict:
    entry = {"org_id": server.org.org_id, "token": server.token, "base_url": server.url, **extra}
    return {**entry, "name": name} if name else entry


def run(orgs, cursor=None, last=None):
    one = MistCollector(client_factory=functools.partial(MistClient, sleep=lambda s: None)).collect
    for server in orgs:
        if hasattr(server, "org"):
            server.org.now = NOW
    ctx = CollectContext(settings={"max_retries": 0, "orgs": orgs}, now=NOW, cursor=cursor or {})
    return one, ctx, collect_orgs(one, ctx, last or _LastSeen())


def test_every_org_is_collected_and_every_entity_says_which_org(two_orgs):
    a, b = two_orgs
    _, _, snap = run([org_entry(a, "North HQ"), org_entry(b)])
    orgs = {e.labels["org_id"]: e.labels["org_name"] for e in snap.entities}
    assert orgs == {a.org.org_id: "North HQ", b.org.org_id: "South"}  # configured name, else Mist's
    sites = [e for e in snap.entities if e.kind == "site"]
    assert len(sites) == 7 and len({e.key for e in snap.entities}) == len(snap.entities)
    assert all("org_name" in e.labels for e in snap.events)


def test_each_org_spends_its_own_calls_and_keeps_its_own_event_cursor(two_orgs):
    a, b = two_orgs
    _, _, snap = run([org_entry(a), org_entry(b)])
    assert a.calls > 0 and b.calls > 0
    assert snap.api_calls == a.calls + b.calls
    assert set(snap.cursors["mist"]["orgs"]) == {a.org.org_id, b.org.org_id}


def test_each_orgs_api_budget_is_reported_under_its_own_name_with_its_own_calls(two_orgs):
    a, b = two_orgs
    _, _, snap = run([org_entry(a, "North HQ"), org_entry(b)])
    budgets = snap.api_budget
    assert set(budgets) == {"mist org North HQ", "mist org South"}
    assert budgets["mist org North HQ"]["calls_cycle"] == a.calls
    assert budgets["mist org South"]["calls_cycle"] == b.calls
    assert budgets["mist org South"]["org_id"] == b.org.org_id


def test_two_orgs_of_one_name_keep_a_budget_line_each(two_orgs):
    a, b = two_orgs
    _, _, snap = run([org_entry(a, "Retail"), org_entry(b, "Retail")])
    assert set(snap.api_budget) == {"mist org Retail", f"mist org Retail ({b.org.org_id})"}


def test_an_org_that_fails_stands_in_with_its_last_entities_unknown_and_the_others_go_on(two_orgs):
    a, b = two_orgs
    last = _LastSeen()
    run([org_entry(a), org_entry(b)], last=last)
    _, _, snap = run([org_entry(a), org_entry(b, token="revoked")], last=last)
    south = [e for e in snap.entities if e.labels.get("org_id") == b.org.org_id]
    assert south and all(e.unknown == frozenset({"*"}) and not e.metrics for e in south)
    north = [e for e in snap.entities if e.labels.get("org_id") == a.org.org_id]
    assert north and all(not snap.is_unknown(e, "device.connected") for e in north if e.kind == "device")
    assert any(err.endpoint == f"org {b.org.org_id}" for err in snap.errors)


def test_an_endpoint_failing_in_one_org_leaves_only_that_orgs_data_unknown(two_orgs):
    a, b = two_orgs
    last = _LastSeen()
    run([org_entry(a), org_entry(b)], last=last)
    b.inject("*/stats/devices*", 500, count=10)
    _, _, snap = run([org_entry(a), org_entry(b)], last=last)
    devices = {org.org.org_id: [e for e in snap.entities if e.kind == "device" and e.labels["org_id"] == org.org.org_id]
               for org in (a, b)}
    assert devices[b.org.org_id] and all(snap.is_unknown(e, "device.connected") for e in devices[b.org.org_id])
    assert devices[a.org.org_id] and not any(snap.is_unknown(e, "device.connected") for e in devices[a.org.org_id])
    assert not snap.kind_unknown("device")  # org B's devices stand in: none is missing
    assert any("stats/devices" in err.endpoint and err.message.startswith("org South: ") for err in snap.errors)


def test_when_every_org_fails_the_collection_fails_naming_each(two_orgs):
    a, b = two_orgs
    with pytest.raises(CollectionFailed, match=r"org North: .*; org South: "):
        run([org_entry(a, "North", token="x"), org_entry(b, "South", token="y")])


def test_config_with_orgs_needs_no_single_org_token_variable(tmp_path, monkeypatch):
    from mistwatch.config import load_config

    monkeypatch.delenv("MIST_API_TOKEN", raising=False)
    monkeypatch.delenv("MIST_ORG_ID", raising=False)
    monkeypatch.setenv("TOKEN_A", "secret-a")
    (tmp_path / "rules").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text("mist:\n  orgs:\n    - {name: A, org_id: o1, token: '${TOKEN_A}', cloud: global01}\n"
                    "rules: [rules/]\n", encoding="utf-8")
    config = load_config(path)
    assert config.data["mist"]["orgs"][0]["token"] == "secret-a"
    assert "token" not in config.data["mist"]


def test_an_org_without_a_token_is_a_config_error_naming_it(tmp_path):
    from mistwatch.config import load_config

    (tmp_path / "rules").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text("mist:\n  orgs:\n    - {name: A, org_id: o1, cloud: global01}\nrules: [rules/]\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key.startswith("mist.orgs") and "token" in caught.value.message


def test_demo_with_three_orgs_alerts_in_each_naming_its_org(tmp_path):
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mistwatch", "demo", "--orgs", "3", "--sites", "5", "--json",
                           "--out", str(tmp_path / "demo")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    # the console notifier's panels come first on stdout (as with one org); the JSON is the last block
    lines = done.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    alerts = json.loads("\n".join(lines[start:]))["insights"]["alerts"]
    firing = {a["labels"].get("org_name") for a in alerts if a["state"] == "firing"}
    assert firing == {"Acme Retail", "Org 2", "Org 3"}


def test_simulate_serves_several_orgs_and_prints_a_config_that_collects_them_all(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    import yaml

    env = {**os.environ, "COLUMNS": "200"}
    sim = subprocess.Popen([sys.executable, "-m", "mistwatch", "simulate", "--orgs", "2", "--port", "0",
                            "--sites", "3"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in sim.stdout:
            lines.append(line)
            if line.startswith("Serving"):
                break
        snippet = "".join(lines[next(i for i, line in enumerate(lines) if line.startswith("mist:")):-1])
        rules = str(Path(__file__).resolve().parents[1] / "rules")
        config = {**yaml.safe_load(snippet), "rules": [rules], "state_dir": "var",
                  "notifiers": [{"name": "console", "type": "console"}]}
        assert len(config["mist"]["orgs"]) == 2
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "mistwatch", "run", "--mode", "monitor", "--json"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["totals"]["sites"] == 6
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)


def test_requests_of_every_org_add_up_also_those_of_an_org_whose_token_is_refused(two_orgs):
    a, b = two_orgs
    _, _, snap = run([org_entry(a), {**org_entry(b), "token": "not-the-token"}])
    mine = snap.api_requests["mist"]
    assert mine["/api/v1/self"] == {"200": 1, "401": 1}
    assert mine["/api/v1/orgs/{org_id}/stats/devices"] == {"200": 1}


def test_an_orgs_token_record_made_this_cycle_is_not_taken_for_a_stale_one_by_another_org():
    # the orgs are collected at once: org B's thread must not drop the record org A's thread has
    # just made (no cycle finished yet), or A's calls this hour are lost from its budget
    now = NOW.timestamp()
    state = {}
    first = MistCollector._token_entry(state, "token-a", now)
    first["calls"] = 16
    MistCollector._token_entry(state, "token-b", now)
    assert state["tokens"]["token-a"] is first and first["calls"] == 16
