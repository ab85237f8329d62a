"""Derived metrics (``metrics:`` in rule files): loaded and checked, computed per entity each cycle,
evaluated and stored like collected ones."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from fixtures_rules import REPO, site

from mistwatch.errors import ConfigError
from mistwatch.model import CollectorError, Snapshot
from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.derived import derive
from mistwatch.rules.loader import load_rules
from mistwatch.rules.ruletest import run_rule_tests

NOW = datetime(2026, 3, 10, 10, tzinfo=timezone.utc)
KNOWN = {"site.clients", "site.ap_connected"}
METRICS = """
metrics:
  - name: site.clients_per_ap
    scope: site
    expr: "metrics['site.clients'] / metrics['site.ap_connected']"
    description: wireless clients per connected AP
  - name: site.crowded
    expr: "1 if metrics['site.clients_per_ap'] > 40 else 0"
"""


def load(tmp_path: Path, text: str, known=KNOWN):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules([path], builtin_kinds(), known_metrics=known)


def derived(tmp_path, **metrics: float | None) -> dict[str, float]:
    ruleset = load(tmp_path, METRICS)
    snapshot = Snapshot(NOW, entities=[site(**{k: v for k, v in metrics.items() if v is not None})])
    derive(ruleset.metrics, snapshot)
    return dict(snapshot.entities[0].metrics)


def test_a_derived_metric_is_computed_per_entity_and_may_read_an_earlier_one(tmp_path):
    values = derived(tmp_path, site__clients=90, site__ap_connected=2)
    assert (values["site.clients_per_ap"], values["site.crowded"]) == (45.0, 1.0)


def test_an_entity_without_an_input_or_with_a_zero_divisor_gets_no_value(tmp_path):
    assert "site.clients_per_ap" not in derived(tmp_path, site__clients=90)
    assert "site.clients_per_ap" not in derived(tmp_path, site__clients=90, site__ap_connected=0)


def test_an_unknown_input_makes_the_derived_metric_unknown(tmp_path):
    ruleset = load(tmp_path, METRICS)
    snapshot = Snapshot(NOW, entities=[site(site__clients=90, site__ap_connected=2)],
                        errors=[CollectorError("mist", "clients", "timeout", kinds=frozenset({"site"}),
                                               metrics=frozenset({"site.clients"}))])
    derive(ruleset.metrics, snapshot)
    assert snapshot.is_unknown(snapshot.entities[0], "site.clients_per_ap")


def test_a_rule_on_a_derived_metric_fires_in_a_rule_test(tmp_path):
    (tmp_path / "rules.yaml").write_text(METRICS + textwrap.dedent("""
        rules:
          - {id: crowded, kind: threshold, scope: site, metric: site.clients_per_ap, above: 40, severity: minor}
    """), encoding="utf-8")
    (tmp_path / "test.yaml").write_text(textwrap.dedent("""
        rule_files: [rules.yaml]
        tests:
          - name: 90 clients on 2 APs is crowded
            entities:
              - kind: site
                labels: {site_id: s1, site_name: Dublin}
                series: {site.clients: "30 90", site.ap_connected: "2 2"}
            expect:
              - {at: 0m, alerts: []}
              - {at: 5m, alerts: [{rule: crowded, state: firing, value: 45}]}
    """), encoding="utf-8")
    assert [o.failures for o in run_rule_tests([tmp_path / "test.yaml"], builtin_kinds())] == [[]]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("metrics:\n  - {name: site.x, expr: \"metrics['site.clientz'] * 2\"}\n", 2,
     "unknown metric 'site.clientz'; did you mean 'site.clients'?"),
    ("metrics:\n  - {name: site.clients, expr: '1'}\n", 2, "metric 'site.clients' is already defined by a collector"),
    ("metrics:\n  - {name: site.x, expr: '1'}\n  - {name: site.x, expr: '2'}\n", 3, "already defined"),
    ("metrics:\n  - {name: site.x, expr: 'metrics[}'}\n", 2, "invalid expression"),
    ("metrics:\n  - {name: clients, expr: '1'}\n", 2, "must be a dotted metric name"),
])
def test_bad_derived_metrics_name_the_file_line_and_problem(tmp_path, text, line, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.line == line and message in str(caught.value)


def test_a_cycle_stores_derived_metrics_as_history(tmp_path, simulator):
    from mistwatch.engine import close_app, open_app, run_cycle

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "derived.yaml").write_text(textwrap.dedent("""
        metrics:
          - {name: site.clients_per_device, expr: "metrics['site.clients'] / metrics['site.devices_total']"}
    """), encoding="utf-8")
    config = {"mist": {"base_url": simulator.url, "token": simulator.token, "org_id": simulator.org.org_id},
              "state_dir": str(tmp_path / "var"), "reports": {"dir": str(tmp_path / "reports")},
              "rules": [str(REPO / "rules"), str(tmp_path / "rules")], "notifiers": []}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    app = open_app(tmp_path / "config.yaml")
    try:
        simulator.org.now = NOW
        assert run_cycle(app, mode="insights", now=NOW).status == "ok"
        stored = app.store.values_at("site.clients_per_device", NOW)
    finally:
        close_app(app)
    assert len(stored) == len(simulator.org.site_ids()) and all(v > 0 for v in stored.values())
