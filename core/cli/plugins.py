"""`mistwatch plugins`: every plugin with its source, version, status and hooks."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--check", is_flag=True,
              help="Exit 1 if a plugin implements an unknown hook (a typo) or failed to load.")
@click.option("--config", "config_path", default="config.yaml",
                             envvar="MISTWATCH_CONFIG", show_default=True, metavar="FILE",
              help="Config file whose plugins_dir to include (skipped if it cannot be read).")
def plugins(as_json: bool, check: bool, config_path: str) -> None:
    """List plugins with source, version, status and hooks."""
    import pluggy

    from mistwatch.config import host_for_config
    from mistwatch.secrets import redact

    host = host_for_config(config_path)
    infos = host.plugins()
    if as_json:
        click.echo(json.dumps([asdict(info) for info in infos], indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="mistwatch plugins", title_justify="left")
        for column in ("Name", "Source", "Version", "Status", "Hooks"):
            table.add_column(column, overflow="fold")
        for info in infos:
            style = "green" if info.status == "ok" else "red" if info.status.startswith("failed") else "dim"
            table.add_row(escape(info.name), escape(info.source), escape(info.version),
                          f"[{style}]{escape(redact(info.status))}[/{style}]", escape(", ".join(info.hooks)))
        Console(highlight=False).print(table)
    if not check:
        return
    problems: list[str] = []
    try:
        host.pm.check_pending()
    except pluggy.PluginValidationError:
        problems += [f"plugin {plugin!r}: unknown hook {hook!r}" for plugin, hook in host.unknown_hooks()]
    problems += [f"plugin {i.name!r}: {redact(i.status)}" for i in infos if i.status.startswith("failed")]
    for problem in problems:
        click.echo(f"mistwatch: {problem}", err=True)
    if problems:
        sys.exit(1)
