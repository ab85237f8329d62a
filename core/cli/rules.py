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
    derived = f" and {len(ruleset.metrics)} derived metric(s)" if ruleset.metrics else ""
    table = Table(title=f"{len(ruleset.rules)} rule(s){derived} in {len(ruleset.files)} file(s): OK")
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
    for key in ("offset", "absent_for", "source", "all_of", "any_of", "unless", "when", "direction", "window",
                "horizon"):
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
    """Test files as given; for a folder, its ``tests/*.yaml`` (a rule folder such as ``rules/``) or,
    without a tests folder, its own ``*.yaml``."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            folder = path / "tests" if (path / "tests").is_dir() else path
            found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
            if not found:
                raise ConfigError("no rule test files (*.yaml) in this folder", file=str(folder))
            out.extend(found)
        else:
            out.append(path)
    return out


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


@rules.command("backtest")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--since", default="7d", show_default=True, help="How far back to replay (a duration).")
@click.option("--until", "until", default=None, help="End of the replay (ISO time; default: now).")
@click.option("--step", default="15m", show_default=True,
              help="Replay one stored cycle per step (longer: faster, coarser `for:` timing).")
@click.option("--rule", "rule_id", default=None, help="Report only this rule.")
@click.option("--compare", "compare_path", type=click.Path(path_type=Path), default=None,
              help="Another version of the rule file(s): show what differs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--state-dir", "state_dir", type=click.Path(path_type=Path), default=None,
              help="The state directory to read history from (default: the config's state_dir).")
@_CONFIG_OPTION
def backtest(files: tuple[Path, ...], since: str, until: str | None, step: str, rule_id: str | None,
             compare_path: Path | None, as_json: bool, state_dir: Path | None, config_path: Path | None) -> None:
    """Replay stored history through rule files: when each alert would have fired and resolved,
    notifications per day, which sites. Uses the same evaluator and lifecycle as a live cycle, with
    throwaway alert states: the live ones are not touched and nothing is sent."""
    from datetime import datetime, timezone

    from mistwatch.durations import parse_duration, parse_time
    from mistwatch.rules.backtest import compare, replay
    from mistwatch.rules.loader import load_rules
    from mistwatch.store.database import DB_FILENAME, Store

    def duration(value: str, option: str) -> Any:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None

    span, every = duration(since, "--since"), duration(step, "--step")
    try:
        end = parse_time(until) if until else datetime.now(timezone.utc)
    except ValueError:
        raise click.BadParameter("not an ISO 8601 time", param_hint="--until") from None
    for path in (*files, *([compare_path] if compare_path else [])):
        if not path.exists():
            raise ConfigError("no such file or folder", file=str(path))
    host = _host(_config_plugins_dir(config_path))
    if state_dir is None:
        from mistwatch.config import load_config

        config = config_path or Path("config.yaml")
        if not config.exists():
            raise ConfigError("no config to take state_dir from: give --config or --state-dir", file=str(config))
        state_dir = load_config(config, host, require_env=False).state_dir
    if not (state_dir / DB_FILENAME).exists():
        raise ConfigError(f"no mistwatch history in {state_dir}", file=str(state_dir))
    kinds = host.rule_kinds()
    rulesets = [load_rules(list(files), kinds)]
    if compare_path is not None:
        rulesets.append(load_rules([compare_path], kinds))
    if rule_id is not None and not any(rule_id in rs.ids for rs in rulesets):
        raise click.BadParameter(f"no rule '{rule_id}' in the rule files", param_hint="--rule")
    with Store.open(state_dir) as store:
        results = replay(store, rulesets, end - span, end, step=every, rule_id=rule_id)
    differences = compare(results[0], results[1]) if len(results) == 2 else None
    if as_json:
        data: dict[str, Any] = results[0].as_dict()
        if differences is not None:
            data["compare"] = {"file": str(compare_path), "replay": results[1].as_dict(),
                               "differences": [d.as_dict() for d in differences]}
        click.echo(json.dumps(data, indent=2))
        return
    _print_replay(results[0], str(" ".join(map(str, files))))
    if differences is not None:
        _print_replay(results[1], str(compare_path))
        click.echo(f"\nDifferences ({' '.join(map(str, files))} -> {compare_path}):")
        for diff in differences:
            if not diff.only_before and not diff.only_after:
                continue
            click.echo(f"  {diff.rule_id}: {diff.before} -> {diff.after} alert(s)")
            for episode in diff.only_before:
                click.echo(f"    - {_episode_line(episode)}")
            for episode in diff.only_after:
                click.echo(f"    + {_episode_line(episode)}")


def _clip(text: str, limit: int) -> str:
    """One line for the terminal: control characters (escape sequences, line breaks from Mist names)
    shown as '?', at most ``limit`` characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _episode_line(episode: Any) -> str:
    until = f"{episode.resolved_at:%m-%d %H:%M}" if episode.resolved_at else "still firing"
    return (f"{episode.fired_at:%Y-%m-%d %H:%M} -> {until}  {episode.severity:<8} "
            f"{_clip(episode.summary or episode.key, 160)}")


def _print_replay(result: Any, label: str) -> None:
    click.echo(f"{label}: {result.steps} cycle(s) replayed from {result.start:%Y-%m-%d %H:%M} to "
               f"{result.end:%Y-%m-%d %H:%M} UTC ({result.days} day(s))")
    for rule_id, replayed in result.rules.items():
        if not replayed.episodes:
            click.echo(f"  {rule_id} ({replayed.kind}): no alert")
            continue
        per_day = replayed.notifications / result.days
        sites = replayed.sites
        click.echo(f"  {rule_id} ({replayed.kind}): {len(replayed.episodes)} alert(s), "
                   f"{replayed.notifications} notification(s) ({per_day:.1f}/day), {len(sites)} site(s): "
                   + _clip(", ".join(sites), 200))
        for episode in replayed.episodes[:50]:
            click.echo(f"      {_episode_line(episode)}")
        if len(replayed.episodes) > 50:
            click.echo(f"      ... {len(replayed.episodes) - 50} more (--json for all)")
    for note in result.notes:
        click.echo(f"  note: {_clip(note, 300)}")
