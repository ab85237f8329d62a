"""`mistwatch config check` and `mistwatch config schema`."""

from __future__ import annotations

import json
from typing import Any

import click

CONFIG_OPTION = click.option("--config", "config_path", default="config.yaml", show_default=True,
                             metavar="FILE", help="The configuration file.")


@click.group("config")
def config() -> None:
    """Check the configuration file, or print its JSON Schema."""


def _mist_lines(config: Any) -> list[tuple[str, str]]:
    from mistwatch.errors import ConfigError

    mist = config.data.get("mist")
    if not isinstance(mist, dict):
        return []
    cloud = mist.get("cloud")
    try:
        from mistwatch.plugins.mist.client import resolve_base_url

        url = resolve_base_url(cloud, mist.get("base_url"))
    except ConfigError:
        url = mist.get("base_url") or "?"
    where = f"{url} (cloud {cloud})" if cloud and not mist.get("base_url") else url
    return [("Mist API", where), ("Org id", str(mist.get("org_id") or "-")),
            ("Token", "***" if mist.get("token") else "(not set)")]


@config.command("check")
@CONFIG_OPTION
def check(config_path: str) -> None:
    """Validate the config file; exit 0 with a summary, or 2 with the first problem in one line."""
    from rich.console import Console
    from rich.table import Table

    from mistwatch.config import host_for_config, load_config
    from mistwatch.secrets import redact

    host = host_for_config(config_path)
    loaded = load_config(config_path, host)  # ConfigError -> "mistwatch: file:line key: message", exit 2
    collectors = loaded.data.get("collectors") or sorted(host.collectors())
    rows: list[tuple[str, str]] = [("File", str(loaded.path)), *_mist_lines(loaded)]
    rows += [
        ("State dir", str(loaded.state_dir)),
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
