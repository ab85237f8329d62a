"""Alerts muted by the config's ``inhibit:`` rules say so where people read alerts: the run's insights
(console and JSON), the HTML and JSON report, ``mistwatch alerts`` and its JSON (also /api/v1/alerts).
The CLI as a user runs it, against the simulator on loopback."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml
from test_e2e import DAY1, mistwatch, run_at

from mistwatch.model import Alert
from mistwatch.rules.lifecycle import mark_inhibited

RULES = """
rules:
  - id: site-big
    kind: threshold
    scope: site
    metric: site.ap_total
    above: 0
    severity: critical
    labels: {category: site}
    summary: "{{ labels.site_name }}: big"
  - id: site-small
    kind: threshold
    scope: site
    metric: site.ap_total
    above: 0
    severity: minor
    labels: {category: site}
    summary: "{{ labels.site_name }}: small"
"""


def write_config(folder, simulator, inhibit: bool = True) -> None:
    (folder / "rules").mkdir()
    (folder / "rules" / "r.yaml").write_text(RULES, encoding="utf-8")
    config = {
        "mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id},
        "state_dir": "var", "reports": {"dir": "reports"}, "rules": ["rules"],
        "notifiers": [{"name": "console", "type": "console"}],
    }
    if inhibit:
        config["inhibit"] = [{"source": ["rule_id=site-big"], "target": ["rule_id=site-small"],
                              "equal": ["site_id"]}]
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.fixture
def inhibited_run(tmp_path, simulator):
    write_config(tmp_path, simulator)
    done = run_at(tmp_path, simulator, DAY1, "healthy", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path, json.loads(done.stdout)


def test_run_json_insights_name_the_alert_that_inhibits(inhibited_run):
    _folder, out = inhibited_run
    alerts = out["insights"]["alerts"]
    small = [a for a in alerts if a["rule"] == "site-small"]
    big = {a["labels"]["site_id"]: a["key"] for a in alerts if a["rule"] == "site-big"}
    assert small and all(a["inhibited_by_rule"] == "site-big" for a in small)
    assert all(a["inhibited_by"] == big[a["labels"]["site_id"]] for a in small)
    assert all(a["inhibited_by"] is None for a in alerts if a["rule"] == "site-big")


def test_the_json_and_html_report_show_the_inhibited_alerts(inhibited_run):
    folder, _out = inhibited_run
    report = json.loads((folder / "reports" / "latest.json").read_text(encoding="utf-8"))
    small = [a for a in report["alerts"] if a["rule_id"] == "site-small"]
    assert small and {a["inhibited_by"] for a in small} == {"site-big"}
    html = (folder / "reports" / "latest.html").read_text(encoding="utf-8")
    assert html.count("(inhibited by site-big)") == len(small)


def test_mistwatch_alerts_shows_what_inhibits_an_alert(inhibited_run, simulator):
    folder, _out = inhibited_run
    env = {"MIST_API_TOKEN": simulator.token}
    listed = json.loads(mistwatch("alerts", "--json", cwd=folder, env=env).stdout)["alerts"]
    assert {a["inhibited_by_rule"] for a in listed if a["rule_id"] == "site-small"} == {"site-big"}
    assert {a["inhibited_by_rule"] for a in listed if a["rule_id"] == "site-big"} == {None}
    table = mistwatch("alerts", cwd=folder, env=env).stdout
    assert "(inhibited by site-big)" in table


def test_the_run_console_listing_shows_what_inhibits_an_alert(tmp_path, simulator):
    write_config(tmp_path, simulator)
    done = run_at(tmp_path, simulator, DAY1, "healthy")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(inhibited by site-big)" in done.stdout


def test_without_inhibit_rules_nothing_is_marked_inhibited(tmp_path, simulator):
    write_config(tmp_path, simulator, inhibit=False)
    out = json.loads(run_at(tmp_path, simulator, DAY1, "healthy", "--json").stdout)
    assert all(a["inhibited_by"] is None for a in out["insights"]["alerts"])


def test_an_alert_no_longer_inhibited_loses_the_mark():
    at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    source = Alert(key="big|s1", rule_id="site-big", labels={"site_id": "s1"}, state="firing", severity="critical",
                   firing_since=at)
    target = Alert(key="small|s1", rule_id="site-small", labels={"site_id": "s1"}, state="firing",
                   severity="minor", firing_since=at)
    mark_inhibited([source, target], {target.key: source})
    assert target.annotations["inhibited_by_rule"] == "site-big"
    mark_inhibited([source, target], {})
    assert "inhibited_by" not in target.annotations and "inhibited_by_rule" not in target.annotations


def test_the_alerts_api_names_what_inhibits_an_alert(http_face):
    from fixtures_notify import make_alert

    face = http_face()
    source = make_alert("site-gateway-down", device_id=None)
    target = make_alert("ap-offline")
    mark_inhibited([source, target], {target.key: source})
    face.env.store.save_alerts([source, target])
    listed = {a["rule_id"]: a for a in face.get("/api/v1/alerts").json()["alerts"]}
    assert listed["ap-offline"]["inhibited_by"] == source.key
    assert listed["ap-offline"]["inhibited_by_rule"] == "site-gateway-down"
    assert listed["site-gateway-down"]["inhibited_by"] is None
