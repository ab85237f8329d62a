"""`mistwatch rules check|test|schema` through the command line entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fixtures_cli import run_cli
from fixtures_rules import REPO

from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.schema import file_schema

GOOD = "id: ok\nkind: threshold\nmetric: device.cpu\nscope: device\nabove: 90\n"




# (file text, expected line, expected fragment of the message)
MALFORMED = {
    "yaml-syntax": ("rules:\n  - id: a\n    kind: [threshold\n", 4, "YAML syntax error"),
    "duplicate-key": ("rules:\n  - id: a\n    kind: threshold\n    metric: device.cpu\n    above: 1\n"
                      "    above: 2\n", 6, "duplicate key 'above'"),
    "unknown-key": ("rules:\n  - id: a\n    kind: threshold\n    metirc: device.cpu\n", 4,
                    "rules[0].metirc: unknown key"),
    "bad-duration": (GOOD + "for: 10 minutes\n", 6, "for: must be a duration"),
    "unknown-kind": ("id: a\nkind: thresold\nmetric: device.cpu\n", 2,
                     "unknown rule kind 'thresold'; did you mean 'threshold'?"),
    "missing-id": ("rules:\n  - kind: threshold\n    metric: device.cpu\n    above: 1\n", 2,
                   "missing required key 'id'"),
    "bad-severity": (GOOD + "severity: high\n", 6, "severity: must be one of"),
    "no-condition": ("rules:\n  - id: a\n    kind: threshold\n    metric: device.cpu\n", 2,
                     "needs a condition: one of above, below, inside, outside"),
    "bad-regex": (GOOD + "match:\n  site_name: {regex: '(unclosed'}\n", 7,
                  "match.site_name: invalid regular expression"),
    "template-undefined": (GOOD + "summary: '{{ labls.site_name }}'\n", 6, "summary: template error in a test render"),
    "template-syntax": (GOOD + "summary: '{{ value | pct }'\n", 6, "summary: invalid template"),
    "unknown-metric": ("id: a\nkind: threshold\nmetric: device.cpux\nabove: 1\n", 3, "unknown metric 'device.cpux'"),
    "unknown-reference": ("id: a\nkind: correlation\nall_of: [nope]\n", 3, "all_of[0]: unknown rule 'nope'"),
    "self-reference": ("id: a\nkind: correlation\nall_of: [a]\n", 3, "cannot reference itself"),
    "dunder-when": (GOOD + "when: \"labels.__class__\"\n", 6, "when: invalid expression"),
    "tier-range": ("id: a\nkind: threshold\nmetric: device.cpu\ntiers:\n  - {severity: major, inside: [5, 1]}\n", 5,
                   "tiers[0].inside: range [5.0, 1.0] has low > high"),
    "offset-and-baseline": ("id: a\nkind: change\nmetric: device.cpu\ndrop: 1\noffset: 1d\nbaseline: {window: 7d}\n",
                            6, "baseline: use offset or baseline, not both"),
    "rules-not-a-list": ("rules: {id: a}\n", 1, "rules: expected array"),
    "for-cycles-zero": (GOOD + "for: {cycles: 0}\n", 6, "for"),
    "unknown-name-in-when": (GOOD + "when: \"valeu > 3\"\n", 6, "when: unknown name 'valeu'"),
    "tier-that-can-never-apply": ("id: a\nkind: threshold\nmetric: sle.wifi.coverage\ntiers:\n"
                                  "  - {severity: major, below: 0.75}\n  - {severity: critical, below: 0.9}\n", 5,
                                  "tiers[0].below: tier major (below 0.75) can never apply: critical (below 0.9)"),
    "change-tier-that-can-never-apply": ("id: a\nkind: change\nmetric: sle.wifi.coverage\ntiers:\n"
                                         "  - {severity: critical, drop: 0.1}\n  - {severity: major, drop: 0.2}\n",
                                         6, "tiers[1].drop: tier major (drop 0.2) can never apply"),
    "above-and-below-never-both-hold": ("id: a\nkind: threshold\nmetric: device.cpu\nabove: 90\nbelow: 10\n", 5,
                                        "below: above 90 and below 10 can never both hold"),
    "recover-when-on-the-wrong-side": ("id: a\nkind: threshold\nmetric: sle.wifi.coverage\nbelow: 0.8\n"
                                       "recover_when: {below: 0.9}\n", 5,
                                       "recover_when.below: a rule on 'below' recovers on the other side"),
    "scope-typo": ("id: a\nkind: threshold\nmetric: device.cpu\nscope: devce\nabove: 90\n", 4,
                   "scope: unknown scope 'devce'; did you mean 'device'?"),
    "recover-when-without-hysteresis": ("id: a\nkind: threshold\nmetric: device.cpu\nabove: 90\n"
                                        "recover_when: {below: 95}\n", 5,
                                        "recover_when.below: must be at most 90"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_rule_files_exit_2_with_file_line_and_key(case, tmp_path, monkeypatch, capsys):
    text, line, fragment = MALFORMED[case]
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_cli(["rules", "check", "bad.yaml"], capsys)
    assert code == 2, (out, err)
    assert re.match(rf"mistwatch: bad\.yaml:{line}[ :]", err), err
    assert fragment in err
    assert "Traceback" not in err + out and err.count("\n") == 1


def test_duplicate_ids_across_files_name_both_places(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("rules").mkdir()
    Path("rules/a.yaml").write_text(GOOD, encoding="utf-8")
    Path("rules/b.yaml").write_text("# second\n" + GOOD, encoding="utf-8")
    code, _, err = run_cli(["rules", "check", "rules"], capsys)
    assert code == 2
    assert err.strip() == ("mistwatch: rules/b.yaml:2 id: duplicate rule id 'ok' "
                           "(first defined at rules/a.yaml:1)")


def test_an_unknown_rule_reference_names_the_list_item_and_suggests_the_close_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text("rules:\n  - id: sle-drop\n    kind: expression\n    when: 'value is none'\n"
                              "  - id: both\n    kind: correlation\n    all_of:\n      - sle-drop\n"
                              "      - sle-dorp\n", encoding="utf-8")
    code, _, err = run_cli(["rules", "check", "c.yaml"], capsys)
    assert code == 2
    assert err.strip() == ("mistwatch: c.yaml:9 rules[1].all_of[1]: unknown rule 'sle-dorp' referenced by "
                           "'both'; did you mean 'sle-drop'?")


def test_circular_correlations_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text("rules:\n  - {id: a, kind: correlation, all_of: [b]}\n"
                              "  - {id: b, kind: correlation, all_of: [a]}\n", encoding="utf-8")
    code, _, err = run_cli(["rules", "check", "c.yaml"], capsys)
    assert code == 2 and "circular rule references: a -> b -> a" in err


def test_check_the_default_pack_prints_a_table_of_rules(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["rules", "check"], capsys)
    assert code == 0, err
    assert "rule(s) in 5 file(s): OK" in out
    assert "site-degraded" in out and "wifi-coverage-drop" in out


def test_check_without_a_config_or_a_rules_folder_checks_the_shipped_pack(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # e.g. right after pip install, in an empty folder
    code, out, err = run_cli(["rules", "check"], capsys)
    assert code == 0, err
    assert "rule(s) in 5 file(s): OK" in out and "site-degraded" in out


def test_check_takes_rule_paths_from_config_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("mine").mkdir()
    Path("mine/r.yaml").write_text(GOOD, encoding="utf-8")
    Path("config.yaml").write_text("rules: [mine/]\nmist: {token: '${NOT_SET_ANYWHERE}'}\n", encoding="utf-8")
    code, out, err = run_cli(["rules", "check"], capsys)
    assert code == 0, err
    assert "1 rule(s) in 1 file(s): OK" in out


def test_default_pack_has_at_least_30_rules_each_with_description_and_recommendation():
    from mistwatch.rules.loader import load_rules

    ruleset = load_rules([REPO / "rules"], builtin_kinds())
    assert len(ruleset.rules) >= 30
    for rule in ruleset.rules:
        assert rule.description and rule.recommendation is not None, rule.id


def test_schema_command_prints_the_schema_with_every_kind(capsys):
    code, out, _ = run_cli(["rules", "schema"], capsys)
    schema = json.loads(out)
    assert code == 0
    assert set(schema["$defs"]["rule"]["properties"]["kind"]["enum"]) >= {
        "threshold", "change", "absence", "event", "correlation", "expression"}


def test_shipped_schema_file_matches_the_built_in_kinds():
    shipped = json.loads((REPO / "core" / "schemas" / "rules.schema.json").read_text(encoding="utf-8"))
    # regenerate with: mistwatch rules schema > core/schemas/rules.schema.json
    assert shipped == json.loads(json.dumps(file_schema(builtin_kinds())))


def test_default_pack_rule_tests_pass(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "rules" / "tests").glob("*.yaml"))
    assert len(files) >= 3
    code, out, err = run_cli(["rules", "test", *files], capsys)
    assert code == 0, out + err
    assert " 0 failed" in out


RULE_TEST = """
rule_files: [r.yaml]
tests:
  - name: cpu
    entities:
      - kind: device
        labels: {device_id: d1, device_name: sw-1, site_name: Dublin}
        series: {device.cpu: "50 95"}
    expect:
      - at: 5m
        alerts: [{rule: ok, state: firing, severity: SEVERITY}]
"""


def test_a_failing_rule_test_exits_1_with_a_diff(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(GOOD, encoding="utf-8")
    Path("t.yaml").write_text(RULE_TEST.replace("SEVERITY", "critical"), encoding="utf-8")
    code, out, _ = run_cli(["rules", "test", "t.yaml"], capsys)
    assert code == 1
    assert "FAIL  t.yaml: cpu" in out
    assert "severity: expected 'critical', got 'major'" in out
    Path("t.yaml").write_text(RULE_TEST.replace("SEVERITY", "major"), encoding="utf-8")
    assert run_cli(["rules", "test", "t.yaml"], capsys)[0] == 0


@pytest.mark.parametrize(("text", "line"), [
    ("rule_files: [r.yaml]\ntests:\n  - name: x\n    expect: [{at: 7m}]\n", 4),  # not a whole interval
    ("rule_files: [missing.yaml]\ntests: [{name: x, expect: [{at: 0m}]}]\n", 1),
    ("rule_files: [r.yaml]\ntests:\n  - name: x\n    entities: [{kind: site, labels: {}, series: {a: '1 z'}}]\n"
     "    expect: [{at: 0m}]\n", 4),
    ("rule_files: [r.yaml]\ntests:\n  - name: x\n    expect: [{at: 0m, alerts: [{rule: nope}]}]\n", 4),
    ("rule_files: [r.yaml]\ntests:\n  - nme: x\n", 3),
])
def test_a_malformed_rule_test_file_exits_2(text, line, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(GOOD, encoding="utf-8")
    Path("t.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_cli(["rules", "test", "t.yaml"], capsys)
    assert code == 2, out + err
    assert err.startswith(f"mistwatch: t.yaml:{line}"), err
    assert "Traceback" not in err


def test_a_malformed_rule_file_in_a_real_process_gives_one_line_and_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "bad.yaml").write_text("id: a\nkind: threshold\nmetric: device.cpu\nabove: high\n",
                                       encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mistwatch", "rules", "check", "bad.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 2
    assert result.stderr == "mistwatch: bad.yaml:4 above: expected number, got string\n"
    assert result.stdout == ""


def test_rules_test_and_schema_know_the_kinds_of_a_plugin_in_the_config_plugins_dir(tmp_path, monkeypatch, capsys):
    import textwrap

    from mistwatch.hookspecs import RuleKind

    monkeypatch.chdir(tmp_path)
    block = (RuleKind.__doc__ or "").split("exactly zero::", 1)[1].split("\n\n    The built-in kinds", 1)[0]
    Path("plugins").mkdir()
    Path("plugins/zero_kind.py").write_text(textwrap.dedent(block), encoding="utf-8")
    Path("config.yaml").write_text("plugins_dir: plugins\nrules: [z.yaml]\n", encoding="utf-8")
    Path("z.yaml").write_text("id: z\nkind: zero\nmetric: site.clients\nscope: site\n", encoding="utf-8")
    Path("t.yaml").write_text(
        "rule_files: [z.yaml]\ntests:\n  - name: zero clients\n    entities:\n      - kind: site\n"
        "        labels: {org_id: o1, site_id: s1, site_name: Dublin}\n        series: {site.clients: '0'}\n"
        "    expect:\n      - at: 0m\n        alerts: [{rule: z, state: firing}]\n", encoding="utf-8")
    code, out, err = run_cli(["rules", "test", "t.yaml"], capsys)
    assert code == 0, out + err
    assert "1 passed, 0 failed" in out
    code, out, err = run_cli(["rules", "schema"], capsys)
    assert code == 0 and '"zero"' in out


def test_rules_test_of_a_rule_folder_runs_its_tests_folder(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["rules", "test", "rules/"], capsys)
    assert code == 0, err
    assert re.search(r"^\d+ passed, 0 failed$", out, re.MULTILINE)


def test_rules_test_of_a_folder_without_tests_exits_2(tmp_path, capsys):
    code, _, err = run_cli(["rules", "test", str(tmp_path)], capsys)
    assert code == 2 and "no rule test files" in err
