"""The plugin host: load order, isolation of broken plugins, blocking, plugins_dir, name clashes,
typo'd hooks, and ``mistwatch plugins`` end to end."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
from fixtures_host import FAKEDIST, make_module

from mistwatch import Collector, Notifier, Snapshot, hookimpl
from mistwatch import host as host_module
from mistwatch.cli import main
from mistwatch.host import make_host

GOOD_FILE = '''
from mistwatch import Collector, Snapshot, hookimpl

@hookimpl
def mistwatch_collectors():
    yield Collector(name="local", collect=lambda ctx: Snapshot(taken_at=ctx.now))
'''


def _collector_plugin(name: str):
    @hookimpl
    def mistwatch_collectors():
        yield Collector(name=name, collect=lambda ctx: Snapshot(taken_at=ctx.now))

    return mistwatch_collectors


def _by_name(host) -> dict:
    return {info.name: info for info in host.plugins()}


def _run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_builtins_load_first_in_their_fixed_order(known_builtins, fake_dist, tmp_path, monkeypatch):
    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)  # known_builtins blocks entry points; allow them here
    (tmp_path / "local.py").write_text(GOOD_FILE, encoding="utf-8")
    extra = make_module("inline_mod", mistwatch_collectors=_collector_plugin("inline"))
    host = make_host(plugins_dir=tmp_path, extra=[("inline", extra)])
    names = [info.name for info in host.plugins()]
    sources = [info.source.split(" ")[0] for info in host.plugins()]
    assert names[:2] == ["mwtest_builtin_collect", "mwtest_builtin_notify"]
    assert sources[:2] == ["builtin", "builtin"]
    assert sources[2:6] == ["entry", "entry", "entry", "entry"]
    assert names[6:] == ["local", "inline"]
    assert sources[6:] == ["plugins_dir", "inline"]


def test_the_same_builtins_give_the_same_order_every_time(known_builtins):
    orders = {tuple(i.name for i in make_host(entry_points=False).plugins()) for _ in range(3)}
    assert orders == {known_builtins}


def test_entry_point_plugin_is_discovered_from_an_installed_distribution(known_builtins, fake_dist,
                                                                        monkeypatch):
    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    host = make_host()
    good = _by_name(host)["fake_good"]
    assert (good.status, good.source, good.version) == ("ok", "entry point mistwatch-fake", "0.1")
    assert good.hooks == ["mistwatch_notifiers"]
    assert "fake-good" in host.notifiers()


def test_plugin_that_fails_to_import_is_reported_and_isolated(known_builtins, fake_dist, monkeypatch):
    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    host = make_host()
    broken = _by_name(host)["fake_broken"]
    assert broken.status == "failed: RuntimeError: fake_broken cannot be imported"
    assert set(host.notifiers()) == {"console", "testmail", "fake-good"}
    assert "testmist" in host.collectors()


def test_plugin_that_raises_inside_its_hook_is_reported_and_contributes_nothing(known_builtins, fake_dist,
                                                                                monkeypatch):
    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    host = make_host()
    raises = _by_name(host)["fake_raises"]
    assert raises.status == "failed: mistwatch_notifiers: ValueError: boom inside the hook"
    assert _by_name(host)["fake_good"].status == "ok"
    assert "fake-good" in host.notifiers()


def test_disable_plugins_blocks_by_name_before_import(known_builtins, fake_dist, monkeypatch):
    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("MISTWATCH_DISABLE_PLUGINS", "fake_broken, mwtest_builtin_notify")
    host = make_host()
    infos = _by_name(host)
    assert infos["fake_broken"].status == "disabled"
    assert infos["mwtest_builtin_notify"].status == "disabled"
    assert "mistwatch_fake_broken" not in sys.modules  # never imported
    assert host.pm.is_blocked("fake_broken")
    assert "testmail" not in host.notifiers()


def test_empty_load_plugins_loads_no_entry_points(known_builtins, fake_dist, monkeypatch):
    monkeypatch.setenv("MISTWATCH_LOAD_PLUGINS", "")
    host = make_host()
    infos = _by_name(host)
    assert {infos[n].status for n in ("fake_good", "fake_broken", "fake_raises")} == {"disabled"}
    assert not any(name in sys.modules for name in ("mistwatch_fake_good", "mistwatch_fake_broken"))
    assert infos["mwtest_builtin_collect"].status == "ok"  # built-ins still load


def test_load_plugins_names_the_only_entry_points_to_load(known_builtins, fake_dist, monkeypatch):
    monkeypatch.setenv("MISTWATCH_LOAD_PLUGINS", "fake_good")
    infos = _by_name(make_host())
    assert infos["fake_good"].status == "ok"
    assert infos["fake_broken"].status == infos["fake_raises"].status == "disabled"


def test_plugins_dir_file_is_loaded(known_builtins, tmp_path):
    (tmp_path / "local.py").write_text(GOOD_FILE, encoding="utf-8")
    host = make_host(plugins_dir=tmp_path)
    info = _by_name(host)["local"]
    assert info.status == "ok"
    assert info.source == f"plugins_dir {tmp_path / 'local.py'}"
    assert "local" in host.collectors()


def test_plugins_dir_file_with_a_syntax_error_is_reported_not_fatal(known_builtins, tmp_path):
    (tmp_path / "bad.py").write_text("def broken(:\n", encoding="utf-8")
    (tmp_path / "local.py").write_text(GOOD_FILE, encoding="utf-8")
    host = make_host(plugins_dir=tmp_path)
    assert _by_name(host)["bad"].status.startswith("failed: SyntaxError")
    assert "mistwatch_local_bad" not in sys.modules
    assert "local" in host.collectors()


def test_duplicate_collector_names_are_rejected_naming_both_providers(known_builtins):
    first = make_module("first", mistwatch_collectors=_collector_plugin("dup"))
    second = make_module("second", mistwatch_collectors=_collector_plugin("dup"))
    host = make_host(entry_points=False, extra=[("first", first), ("second", second)])
    collectors = host.collectors()
    infos = _by_name(host)
    assert infos["first"].status == "ok"
    assert infos["second"].status == "failed: collector 'dup' is provided by both 'first' and 'second'"
    assert collectors["dup"] is not None and "second" not in str(collectors)


def test_a_rejected_plugin_contributes_none_of_its_other_descriptors(known_builtins):
    @hookimpl
    def clashing():
        yield Collector(name="testmist", collect=lambda ctx: None)

    @hookimpl
    def notifiers():
        yield Notifier(type="extra-type", send=lambda s, n: [])

    plugin = make_module("clash", mistwatch_collectors=clashing, mistwatch_notifiers=notifiers)
    host = make_host(entry_points=False, extra=[("clash", plugin)])
    assert "extra-type" not in host.notifiers()
    assert "'mwtest_builtin_collect' and 'clash'" in _by_name(host)["clash"].status


def test_status_does_not_depend_on_which_descriptors_are_asked_for_first(known_builtins):
    @hookimpl
    def bad_notifiers():
        raise OSError("no")

    def build():
        plugin = make_module("p", mistwatch_collectors=_collector_plugin("c"),
                             mistwatch_notifiers=bad_notifiers)
        return make_host(entry_points=False, extra=[("p", plugin)])

    a, b = build(), build()
    a.collectors()
    b.notifiers()
    assert _by_name(a)["p"].status == _by_name(b)["p"].status == "failed: mistwatch_notifiers: OSError: no"
    assert "c" not in a.collectors() and "c" not in b.collectors()


def test_a_hook_yielding_the_wrong_type_fails_that_plugin(known_builtins):
    @hookimpl
    def mistwatch_collectors():
        yield "not a Collector"

    host = make_host(entry_points=False, extra=[("wrong", make_module("wrong", mistwatch_collectors=
                                                                       mistwatch_collectors))])
    assert _by_name(host)["wrong"].status == (
        "failed: mistwatch_collectors: TypeError: mistwatch_collectors yielded str, expected Collector")


def test_a_function_without_hookimpl_is_not_called(known_builtins):
    def mistwatch_collectors():  # forgot @hookimpl
        raise AssertionError("called")

    host = make_host(entry_points=False, extra=[("unmarked", make_module("u", mistwatch_collectors=
                                                                          mistwatch_collectors))])
    assert _by_name(host)["unmarked"].status == "ok"
    assert _by_name(host)["unmarked"].hooks == []


def test_check_pending_catches_a_typod_hook_name(known_builtins):
    @hookimpl
    def mistwatch_colectors():
        yield Collector(name="x", collect=lambda ctx: None)

    host = make_host(entry_points=False, extra=[("typo", make_module("typo", mistwatch_colectors=
                                                                      mistwatch_colectors))])
    with pytest.raises(pluggy.PluginValidationError, match="mistwatch_colectors"):
        host.pm.check_pending()
    assert host.unknown_hooks() == [("typo", "mistwatch_colectors")]
    assert _by_name(host)["typo"].hooks == ["mistwatch_colectors"]


def test_plugins_check_exits_1_naming_the_typod_hook(known_builtins, tmp_path, monkeypatch, capsys):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "typo.py").write_text("from mistwatch import hookimpl\n\n@hookimpl\n"
                                     "def mistwatch_notifyers():\n    return []\n", encoding="utf-8")
    (tmp_path / "config.yaml").write_text("plugins_dir: plugins\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(["plugins", "--check"], capsys)
    assert code == 1
    assert "mistwatch: plugin 'typo': unknown hook 'mistwatch_notifyers'" in err
    assert "typo" in out


def test_plugins_check_passes_when_every_plugin_is_fine(known_builtins, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _out, err = _run_cli(["plugins", "--check"], capsys)
    assert (code, err) == (0, "")


def test_plugins_lists_a_failed_plugin_and_still_exits_0(known_builtins, fake_dist, monkeypatch, tmp_path,
                                                         capsys):
    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, _err = _run_cli(["plugins", "--json"], capsys)
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0
    assert rows["fake_broken"]["status"].startswith("failed: RuntimeError")
    assert rows["mwtest_builtin_collect"] == {"name": "mwtest_builtin_collect", "source": "builtin",
                                              "version": "0.1.0", "status": "ok",
                                              "hooks": ["mistwatch_collectors"], "unknown_hooks": []}


def test_plugins_json_end_to_end_in_a_fresh_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISTWATCH_")}
    env["PYTHONPATH"] = str(FAKEDIST)
    proc = subprocess.run([sys.executable, "-m", "mistwatch", "plugins", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert [r["name"] for r in json.loads(proc.stdout)][: len(host_module.BUILTINS)] == [
        m.rsplit(".", 1)[-1] for m in host_module.BUILTINS]
    assert rows["fake_good"]["status"] == "ok"
    assert rows["fake_good"]["source"] == "entry point mistwatch-fake"
    assert rows["fake_broken"]["status"] == "failed: RuntimeError: fake_broken cannot be imported"
    assert rows["fake_raises"]["status"].startswith("failed: mistwatch_notifiers: ValueError")


def test_pm_host_fixture_has_builtins_only(pm_host):
    assert {info.source for info in pm_host.plugins()} == {"builtin"}
    assert [info.name for info in pm_host.plugins()] == [m.rsplit(".", 1)[-1] for m in host_module.BUILTINS]


# This one checks the real built-ins, written by several people at once: it fails until every module
# listed in host.BUILTINS exists and loads cleanly. Do not skip it: a failure means a missing built-in.
def test_every_real_builtin_imports_and_loads_ok(pm_host):
    for module_name in host_module.BUILTINS:
        importlib.import_module(module_name)
    problems = {i.name: i.status for i in pm_host.plugins() if i.status != "ok"}
    assert problems == {}
    assert pm_host.unknown_hooks() == []


def test_fake_dist_is_not_on_the_session_path():
    # other tests build hosts with entry points; the fake plugins must not leak into them
    assert str(FAKEDIST) not in sys.path
    assert not Path(FAKEDIST).samefile(Path(__file__).parent / "data")


# --- commands from plugins ----------------------------------------------------------------------

def test_installed_plugin_adds_a_cli_command(fake_dist, tmp_path, monkeypatch, capsys):
    from mistwatch.cli import main
    from mistwatch.store.database import Store

    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    Store.open(tmp_path).close()  # an empty state database: nothing waits
    main(["outbox-size", "--state-dir", str(tmp_path)])
    assert capsys.readouterr().out == "0\n"


def test_plugin_commands_are_listed_in_top_level_help(fake_dist, monkeypatch, capsys):
    from mistwatch.cli import main

    monkeypatch.delenv("MISTWATCH_LOAD_PLUGINS", raising=False)
    main(["--help"])
    out = capsys.readouterr().out
    assert "outbox-size  Print how many notifications wait in the outbox." in out
    assert "demo " in out and "simulate " in out  # the Mist plugin's own commands


def test_plugin_command_cannot_take_a_built_in_name(tmp_path, monkeypatch):
    import click

    from mistwatch.cli import cli

    @click.command("run")
    def fake_run() -> None:
        raise AssertionError("the built-in run must win")

    plugin = make_module("takes_run", mistwatch_commands=hookimpl(lambda: [fake_run]))
    monkeypatch.setattr("mistwatch.host.make_host", lambda **kw: make_host(entry_points=False,
                                                                            extra=[("takes_run", plugin)]))
    monkeypatch.setattr(cli, "_plugin_commands", None)
    assert "run" not in cli.plugin_commands()
    assert cli.get_command(click.Context(cli), "run") is not fake_run
