"""Command-line fixes: status with plugin notifiers, a refused token among working collectors,
misspelt plugin hooks, every rule problem at once, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mistwatch.cli import main

REPO = Path(__file__).resolve().parents[1]

LAB_COLLECTOR = """
from mistwatch import hookimpl, Collector, Entity, Snapshot

def collect(ctx):
    snap = Snapshot(taken_at=ctx.now)
    snap.entities.append(Entity(key="site:lab", kind="site", labels={"site_id": "lab", "site_name": "Lab"},
                                metrics={"lab.temperature": 21.5}))
    return snap

@hookimpl
def mistwatch_collectors():
    yield Collector(name="lab", collect=collect, metrics={"lab.temperature": "degC"})
"""

PAGER_NOTIFIER = """
from mistwatch import hookimpl, Notifier, Delivery

@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="pager", send=lambda settings, batch: [Delivery(n.id, ok=True) for n in batch])
"""

TYPO_PLUGIN = """
from mistwatch import hookimpl

@hookimpl
def mistwatch_collector():   # misspelt: the hook is mistwatch_collectors
    return []
"""


def write_plugin(folder: Path, name: str, text: str) -> None:
    (folder / "plugins").mkdir(exist_ok=True)
    (folder / "plugins" / f"{name}.py").write_text(textwrap.dedent(text), encoding="utf-8")


def write_config(folder: Path, **data) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"state_dir": "var", "rules": [str(REPO / "rules")], **data}), encoding="utf-8")
    return path


def test_status_works_with_a_notifier_type_from_plugins_dir(tmp_path, capsys):
    write_plugin(tmp_path, "pager", PAGER_NOTIFIER)
    config = write_config(tmp_path, plugins_dir="plugins", collectors=[],
                          notifiers=[{"name": "oncall", "type": "pager"}])
    main(["status", "--config", str(config), "--json"])
    assert json.loads(capsys.readouterr().out)["last_successful_run"] is None


def test_a_refused_mist_token_exits_1_even_when_another_collector_worked(tmp_path, simulator):
    write_plugin(tmp_path, "lab", LAB_COLLECTOR)
    config = write_config(tmp_path, plugins_dir="plugins", collectors=["mist", "lab"],
                          mist={"base_url": simulator.url, "token": "wrong-token-0123", "org_id": simulator.org.org_id},
                          notifiers=[{"name": "console", "type": "console"}])
    done = subprocess.run([sys.executable, "-m", "mistwatch", "run", "--config", str(config), "--mode", "monitor"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Mist refused the API token" in done.stdout
    assert "? clients" in done.stdout and "0 clients" not in done.stdout  # unknown, not zero
    assert "Lab" in done.stdout  # the other collector's data is still shown


def test_plugins_flags_a_misspelt_hook_and_config_check_fails_on_it(tmp_path, capsys, monkeypatch):
    write_plugin(tmp_path, "typo", TYPO_PLUGIN)
    config = write_config(tmp_path, plugins_dir="plugins", collectors=[], notifiers=[])
    monkeypatch.setenv("COLUMNS", "250")
    main(["plugins", "--config", str(config)])
    out = capsys.readouterr().out
    assert "unknown hook: 'mistwatch_collector' (did you mean mistwatch_collectors?)" in out
    with pytest.raises(SystemExit) as failed:
        main(["config", "check", "--config", str(config)])
    assert failed.value.code == 2
    err = capsys.readouterr().err
    assert "plugin 'typo'" in err and "unknown hook 'mistwatch_collector'" in err
    assert err.count("\n") == 1


def test_rules_check_reports_every_problem_in_every_file(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(textwrap.dedent("""\
        rules:
          - {id: one, kind: threshold, scope: site, metric: site.clients, below: 1, severity: major}
          - {id: two, kind: threshhold, scope: site}
          - {id: three, kind: threshold, scope: site, metric: site.clients, below: 1, severity: urgent}
        """), encoding="utf-8")
    (tmp_path / "b.yaml").write_text("rules: [\n", encoding="utf-8")
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""\
        rules:
          - {id: one, kind: threshold, scope: site, metric: site.clients, below: 1, severity: major}
        """), encoding="utf-8")
    with pytest.raises(SystemExit) as failed:
        main(["rules", "check", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), str(tmp_path / "c.yaml")])
    assert failed.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert any("a.yaml:3" in line and "threshhold" in line for line in lines)
    assert any("a.yaml:4" in line and "urgent" in line for line in lines)
    assert any("b.yaml" in line for line in lines)
    assert any("c.yaml:2" in line and "duplicate rule id 'one'" in line for line in lines)
    assert lines[-1] == "mistwatch: 4 problems in the rule files"


def test_json_log_lines_are_one_object_each_and_redacted():
    from mistwatch.secrets import register
    from mistwatch.service.logsetup import setup_logging

    token = register("tok-json-log-0123456789")
    stream = io.StringIO()
    setup_logging({}, stream=stream, json_lines=True)
    try:
        logging.getLogger("mistwatch.test").warning("cycle partial\nwith %s", token)
    finally:
        setup_logging({})
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "mistwatch.test"
    assert entry["message"] == "cycle partial\nwith ***"
    assert entry["time"].endswith("+00:00")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_the_daemon_logs_json_lines_with_log_format_json(tmp_path, simulator):
    from test_daemon import finished_runs, start_daemon, stop, wait_for
    from test_daemon import write_config as write_daemon_config

    write_daemon_config(tmp_path, simulator)
    proc, log = start_daemon(tmp_path, simulator, "--interval", "1h", "--log-format", "json")
    try:
        wait_for(lambda: finished_runs(tmp_path) >= 1, timeout=60, what="the first cycle")
    finally:
        code = stop(proc)
    assert code == 0
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert any(e["message"].startswith("daemon started") for e in entries)
    assert any(e["message"].startswith("cycle ok") for e in entries)
