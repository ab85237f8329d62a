"""`mistwatch config check` and `mistwatch config schema`."""

from __future__ import annotations

import json
from typing import Any

import click

CONFIG_OPTION = click.option("--config", "config_path", default="config.yaml",
                             envvar="MISTWATCH_CONFIG", show_default=True,
                             metavar="FILE", help="The configuration file.")


@click.group("config")
def config() -> None:
    """Check the configuration file, or print its JSON Schema."""


def _collector_lines(config: Any, host: Any) -> list[tuple[str, str]]:
    """What each enabled collector says about its settings (the Mist one: API host, org id, token)."""
    lines: list[tuple[str, str]] = []
    enabled = config.data.get("collectors")
    for name, collector in sorted(host.collectors().items()):
        settings = config.data.get(collector.config_key) if collector.config_key else None
        if collector.describe is None or not isinstance(settings, dict) or (enabled and name not in enabled):
            continue
        lines.extend(collector.describe(settings))
    return lines


@config.command("check")
@CONFIG_OPTION
def check(config_path: str) -> None:
    """Validate the config file; exit 0 with a summary, or 2 with the first problem in one line."""
    from rich.console import Console
    from rich.table import Table

    from mistwatch.cli.plugins import hook_hint
    from mistwatch.config import host_for_config, load_config
    from mistwatch.errors import ConfigError
    from mistwatch.secrets import redact

    host = host_for_config(config_path)
    loaded = load_config(config_path, host)  # ConfigError -> "mistwatch: file:line key: message", exit 2
    for plugin, hook in host.unknown_hooks():  # a misspelt hook: the plugin silently does nothing
        source = next((i.source for i in host.plugins() if i.name == plugin), plugin)
        raise ConfigError(f"plugin {plugin!r} ({source}) implements unknown hook {hook_hint(hook)}",
                          file=str(loaded.path), key="plugins_dir" if loaded.plugins_dir else None)
    collectors = loaded.data.get("collectors") or sorted(host.collectors())
    rows: list[tuple[str, str]] = [("File", str(loaded.path)), *_collector_lines(loaded, host)]
    rows += [
        ("State dir", str(loaded.state_dir)),
        ("Store", _store_line(loaded.store_target)),
        ("Reports", f"{loaded.reports_dir} (kept {loaded.data['reports'].get('retention_days')} days)"),
        ("Rules", ", ".join(str(p) for p in loaded.rule_paths)),
        ("Notifiers", ", ".join(f"{n['name']} ({n['type']})" for n in loaded.notifiers) or "none"),
        ("Collectors", ", ".join(collectors) or "none loaded"),
    ]
    if loaded.plugins_dir:
        rows.append(("Plugins dir", str(loaded.plugins_dir)))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, redact(value))  # belt and braces: nothing printed carries a secret
    console = Console(highlight=False, soft_wrap=True)
    console.print("[green]config OK[/green]")
    console.print(table)
    failed = [p for p in host.plugins() if p.status.startswith("failed")]
    for info in failed:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"[yellow]warning:[/yellow] plugin {info.name}: {redact(info.status)}", markup=True)


@config.command("schema")
@CONFIG_OPTION
def schema(config_path: str) -> None:
    """Print the JSON Schema of the config file (core keys and every loaded plugin's settings)."""
    from mistwatch.config import config_schema, host_for_config

    click.echo(json.dumps(config_schema(host_for_config(config_path)), indent=2, sort_keys=False))


def _store_line(target: object) -> str:
    """Where the state database is; a URL without its password."""
    from mistwatch.store.dialect import display_url, is_postgres_url

    if is_postgres_url(target):
        return f"PostgreSQL {display_url(str(target))} (active/standby)"
    return f"SQLite {target}"
