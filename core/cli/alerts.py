"""`mistwatch alerts`: query the alerts in the store, like ``amtool alert query``.

It reads the state directory directly: it works while the daemon runs, needs neither the HTTP
token nor the Mist token, and never takes the daemon's lock.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import click

from mistwatch.model import SEVERITIES
from mistwatch.service.status import ALERT_STATES


@click.command(help="List alerts from the store: open ones (firing, pending) unless --state says otherwise. "
                    "Filters may repeat; alerts matching any value of every given filter are shown.")
@click.option("--config", "config_path", default="config.yaml", envvar="MISTWATCH_CONFIG", show_default=True,
              type=click.Path(dir_okay=False), help="The configuration file (or $MISTWATCH_CONFIG).")
@click.option("--state", "states", multiple=True, type=click.Choice(ALERT_STATES), help="Alert state.")
@click.option("--severity", "severities", multiple=True, type=click.Choice(SEVERITIES), help="Severity.")
@click.option("--site", "sites", multiple=True, metavar="NAME", help="Site name or id (case-insensitive).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def alerts(config_path: str, states: tuple[str, ...], severities: tuple[str, ...], sites: tuple[str, ...],
           as_json: bool) -> None:
    from mistwatch.config import host_for_config, load_config
    from mistwatch.service.status import alert_json, query_alerts
    from mistwatch.store.database import Store

    config = load_config(config_path, host_for_config(config_path), require_env=False)
    with Store.open(config.store_target) as store:
        found = query_alerts(store.load_alerts().values(), states=states, severities=severities, sites=sites)
    if as_json:
        click.echo(json.dumps({"alerts": [alert_json(a) for a in found], "count": len(found)}, indent=2))
        return
    _print(found, datetime.now(timezone.utc))


def _print(found: list[Any], now: datetime) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mistwatch.durations import format_duration

    console = Console()
    if not found:
        console.print("No alerts match.")
        return
    table = Table(title=f"{len(found)} alert(s)", title_justify="left")
    for col in ("state", "severity", "rule", "site", "summary", "since"):
        table.add_column(col, overflow="fold" if col == "summary" else "ellipsis")
    colours = {"critical": "bold red", "major": "red", "minor": "yellow", "info": "cyan"}
    for a in found:
        since = a.resolved_at if a.state == "resolved" else a.firing_since or a.pending_since
        ago = f"{format_duration(max(0.0, (now - since).total_seconds()))} ago" if since else ""
        # names come from Mist: printed as text, never as markup, on one line
        state = a.state
        if a.state == "firing" and a.annotations.get("inhibited_by_rule"):  # muted by the config's inhibit:
            state += f"\n[dim](inhibited by {escape(str(a.annotations['inhibited_by_rule']))})[/dim]"
        table.add_row(state, f"[{colours.get(a.severity, 'white')}]{a.severity}[/]", escape(a.rule_id),
                      escape(a.site_name.replace("\n", " ")[:60]), escape(a.summary.replace("\n", " ")[:200]), ago)
    console.print(table)
