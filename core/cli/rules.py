"""`mistwatch rules check|test|schema`: validate rule files, unit-test them, print their schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mistwatch.errors import ConfigError
from mistwatch.sanitize import strip_controls


def _host(plugins_dir: Path | None = None) -> Any:
    from mistwatch.host import make_host

    return make_host(plugins_dir=plugins_dir)


def _config_rule_paths(config: Path) -> tuple[list[Path], Path | None]:
    """The ``rules:`` and ``plugins_dir:`` of a config file, resolved like the engine does, without
    loading the rest (no token needed to check rules)."""
    from mistwatch.yamlfile import load_yaml

    data, lines = load_yaml(config)
    if not isinstance(data, dict):
        raise ConfigError("the config is not a mapping of settings", file=str(config), line=lines.line(()))
    base = config.expanduser().resolve().parent
    raw = data.get("rules", ["rules"])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError("must be a list of rule files or folders", file=str(config),
                          line=lines.line(("rules",)), key="rules")

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else base / path

    plugins_dir = data.get("plugins_dir")
    return [resolve(p) for p in raw], resolve(plugins_dir) if isinstance(plugins_dir, str) else None


@click.group("rules")
def rules() -> None:
    """Check, test and describe rule files."""


@rules.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              envvar="MISTWATCH_CONFIG",
              help="Take the rule paths from this config (default: ./config.yaml if present, else ./rules/, "
                   "else the default rule pack shipped with mistwatch).")
def check(paths: tuple[Path, ...], config_path: Path | None) -> None:
    """Validate rule files: schema, compilation, metrics, references, templates.

    Exits 2 listing every problem (file, line and key, one a line); prints a table of the rules otherwise.
    """
    from rich.console import Console
    from rich.table import Table

    from mistwatch.rules.loader import load_rules

    plugins_dir = None
    if not paths:
        config = config_path or Path("config.yaml")
        if config_path is not None or config.exists():
            paths_list, plugins_dir = _config_rule_paths(config)
            paths = tuple(paths_list)
        else:
            from mistwatch.rules.loader import package_rules_dir

            paths = (Path("rules"),) if Path("rules").exists() else (package_rules_dir(),)
    for path in paths:
        if not path.exists():
            raise ConfigError("no such file or folder", file=str(path))
    host = _host(plugins_dir)
    known = {m for c in host.collectors().values() for m in c.metrics}
    problems: list[ConfigError] = []
    ruleset = load_rules(list(paths), host.rule_kinds(), known_metrics=known or None, errors=problems)
    if problems:  # every problem of every file, one line each, then exit 2
        for problem in problems:
            click.echo(f"mistwatch: {strip_controls(str(problem))}", err=True)  # may quote a hostile key
        if len(problems) > 1:  # one problem stays one line
            click.echo(f"mistwatch: {len(problems)} problems in the rule files", err=True)
        sys.exit(2)
    console = Console()
    table = Table(title=f"{len(ruleset.rules)} rule(s) in {len(ruleset.files)} file(s): OK")
    table.add_column("id", no_wrap=True)
    for column in ("kind", "scope", "severity", "for"):
        table.add_column(column)
    table.add_column("condition", ratio=1)
    for rule in ruleset.rules:
        name = rule.id if rule.enabled else f"{rule.id} [dim](disabled)[/dim]"
        table.add_row(name, rule.kind, rule.scope, "/".join(rule.severities), _for(rule), _condition(rule.spec))
    console.print(table)


def _for(rule: Any) -> str:
    from mistwatch.durations import format_duration

    if rule.for_cycles:
        return f"{rule.for_cycles} cycles"
    return format_duration(rule.for_duration) if rule.for_duration else "-"


def _condition(spec: Any) -> str:
    parts = []
    if spec.get("metric"):
        parts.append(str(spec["metric"]))
    for tier in spec.get("tiers", []):
        cond = ", ".join(f"{k} {v}" for k, v in tier.items() if k not in ("severity", "_index"))
        if cond:
            parts.append(f"{tier['severity']}: {cond}")
    for key in ("offset", "absent_for", "source", "all_of", "any_of", "unless", "when"):
        if key in spec:
            value = spec[key]
            parts.append(f"{key} {', '.join(value) if isinstance(value, list) else value}")
    return "; ".join(parts)


def _config_plugins_dir(config_path: Path | None) -> Path | None:
    """The ``plugins_dir:`` of ``--config`` (or of ./config.yaml when present), so rule kinds a local
    plugin adds are known."""
    config = config_path or Path("config.yaml")
    if config_path is None and not config.exists():
        return None
    return _config_rule_paths(config)[1]


_CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                              envvar="MISTWATCH_CONFIG",
                              help="Load the plugins_dir of this config, for rule kinds a plugin adds "
                                   "(default: ./config.yaml if present).")


def _test_files(paths: tuple[Path, ...]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        folder = path / "tests" if (path / "tests").is_dir() else path
        found.extend(sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml")))
    return found


@rules.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@_CONFIG_OPTION
@click.pass_context
def test(ctx: click.Context, files: tuple[Path, ...], config_path: Path | None) -> None:
    """Run rule unit tests (YAML, like promtool test rules). Exit 1 if a test fails, 2 if a file is malformed.

    A folder stands for its test files: FOLDER/tests/*.yaml when it has a tests/ folder (a rule pack,
    as `mistwatch init` writes it), else FOLDER/*.yaml."""
    from mistwatch.rules.ruletest import run_rule_tests

    host = _host(_config_plugins_dir(config_path))
    outcomes = run_rule_tests(_test_files(files), host.rule_kinds())
    failed = [o for o in outcomes if not o.ok]
    for outcome in outcomes:
        if outcome.ok:
            click.echo(f"  PASS  {outcome.file}: {outcome.name}")
        else:
            click.echo(f"  FAIL  {outcome.file}: {outcome.name}")
            for failure in outcome.failures:
                click.echo("        " + failure.replace("\n", "\n        "))
    click.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    if failed:
        ctx.exit(1)


@rules.command("schema")
@_CONFIG_OPTION
def schema(config_path: Path | None) -> None:
    """Print the JSON Schema of rule files (for editors), with every registered kind."""
    from mistwatch.rules.schema import file_schema

    click.echo(json.dumps(file_schema(_host(_config_plugins_dir(config_path)).rule_kinds()), indent=2))
