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
    unknown: dict[str, list[str]] = {}
    for plugin, hook in host.unknown_hooks():
        unknown.setdefault(plugin, []).append(hook)
    if as_json:
        click.echo(json.dumps([{**asdict(info), "unknown_hooks": unknown.get(info.name, [])} for info in infos],
                              indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="mistwatch plugins", title_justify="left")
        for column in ("Name", "Source", "Version", "Status", "Hooks"):
            table.add_column(column, overflow="fold")
        for info in infos:
            status = info.status
            if unknown.get(info.name) and status == "ok":  # loads, but a hook name matches no spec: a typo
                status = "unknown hook: " + ", ".join(hook_hint(h) for h in unknown[info.name])
            style = "green" if status == "ok" else "dim" if status == "disabled" else "red"
            table.add_row(escape(info.name), escape(info.source), escape(info.version),
                          f"[{style}]{escape(redact(status))}[/{style}]", escape(", ".join(info.hooks)))
        Console(highlight=False).print(table)
    if not check:
        return
    problems: list[str] = []
    try:
        host.pm.check_pending()
    except pluggy.PluginValidationError:
        problems += [f"plugin {plugin!r}: unknown hook {hook_hint(hook)}" for plugin, hook in host.unknown_hooks()]
    problems += [f"plugin {i.name!r}: {redact(i.status)}" for i in infos if i.status.startswith("failed")]
    for problem in problems:
        click.echo(f"mistwatch: {problem}", err=True)
    if problems:
        sys.exit(1)


def hook_hint(hook: str) -> str:
    """``'mistwatch_collector' (did you mean mistwatch_collectors?)`` for a misspelt hook name."""
    import difflib

    from mistwatch.host import HOOKS

    close = difflib.get_close_matches(hook, HOOKS, n=1)
    return f"{hook!r}" + (f" (did you mean {close[0]}?)" if close else "")
