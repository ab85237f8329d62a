"""`mistwatch silence add/list/expire`: silences with matchers, a mandatory expiry, a reason and an author."""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime, timezone
from typing import Any

import click

CONFIG_OPTION = click.option("--config", "config_path", default="config.yaml",
                             envvar="MISTWATCH_CONFIG", show_default=True,
                             metavar="FILE", help="The configuration file.")


def _open(config_path: str) -> tuple[Any, Any]:
    from mistwatch.config import host_for_config, load_config
    from mistwatch.store.database import Store

    config = load_config(config_path, host_for_config(config_path), require_env=False)  # no Mist token needed
    return config, Store.open(config.store_target)


def _author() -> str:
    for name in ("USER", "USERNAME", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        return getpass.getuser()
    except Exception:  # no user name available (some containers): still record something
        return "unknown"


def _when(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@click.group("silence")
def silence() -> None:
    """Add, list and expire silences: alerts matching a silence send nothing until it ends.

    \b
    mistwatch silence add --match site_name="Dublin HQ" --for 2h --reason "fibre work"
    mistwatch silence list
    mistwatch silence expire 3fa2b1c0
    """


@silence.command("add")
@click.option("--match", "-m", "matchers", multiple=True, required=True, metavar="KEY=VALUE",
              help="A matcher on alert labels, severity or rule_id: KEY=VALUE, KEY!=VALUE, KEY=~REGEX, "
                   "KEY!~REGEX. Repeat to require several.")
@click.option("--for", "duration", metavar="DURATION", help="How long, e.g. 30m, 2h, 1d.")
@click.option("--until", "until", metavar="ISO8601", help="When it ends, e.g. 2026-12-03T06:00Z.")
@click.option("--start", "start", metavar="ISO8601", help="When it starts (default now).")
@click.option("--reason", "-r", required=True, help="Why (shown with every muted alert).")
@click.option("--author", default=None, help="Who (default: $USER).")
@CONFIG_OPTION
def add(matchers: tuple[str, ...], duration: str | None, until: str | None, start: str | None, reason: str,
        author: str | None, config_path: str) -> None:
    """Add a silence. An expiry is required: --for or --until."""
    from mistwatch.durations import parse_duration, parse_time
    from mistwatch.notify import outbox
    from mistwatch.notify.settings import parse_matcher

    if bool(duration) == bool(until):
        raise click.UsageError("give exactly one of --for DURATION or --until TIME: a silence must expire")
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    for text in matchers:
        try:
            parse_matcher(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--match") from None
    now = datetime.now(timezone.utc)
    try:
        starts = parse_time(start) if start else now
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {start!r}", param_hint="--start") from None
    try:
        ends = starts + parse_duration(duration) if duration else parse_time(str(until))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for" if duration else "--until") from None
    if ends <= max(starts, now):
        raise click.BadParameter("the silence would already be over", param_hint="--for" if duration else "--until")
    _config, store = _open(config_path)
    with store:
        made = outbox.add_silence(store, list(matchers), starts_at=starts, ends_at=ends, reason=reason.strip(),
                                  author=author or _author(), now=now)
    click.echo(f"silence {made.id} added: {', '.join(made.matchers)} from {_when(made.starts_at)} "
               f"until {_when(made.ends_at)}, by {made.author}: {made.reason}")


@silence.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also show expired and ended silences.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@CONFIG_OPTION
def list_(show_all: bool, as_json: bool, config_path: str) -> None:
    """List silences that have not ended (active or scheduled)."""
    from mistwatch.notify import outbox
    now = datetime.now(timezone.utc)
    _config, store = _open(config_path)
    with store:
        found = outbox.silences(store, now, include_ended=show_all)

    def status(s: outbox.Silence) -> str:
        if s.expired_at is not None:
            return "expired"
        if s.ends_at <= now:
            return "ended"
        return "active" if s.starts_at <= now else "scheduled"

    if as_json:
        click.echo(json.dumps([{"id": s.id, "matchers": s.matchers, "starts_at": outbox.ts(s.starts_at),
                                "ends_at": outbox.ts(s.ends_at), "reason": s.reason, "author": s.author,
                                "status": status(s)} for s in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not found:
        console.print("no silences" + ("" if show_all else " in force (--all shows ended ones)"))
        return
    table = Table()
    for column in ("id", "status", "matchers", "from", "until", "author", "reason"):
        # matchers and reasons are what people read: wrap them, never cut them to "site_name…"
        table.add_column(column, overflow="fold", no_wrap=column in ("id", "status"))
    for s in found:
        table.add_row(s.id, status(s), "\n".join(s.matchers), _when(s.starts_at), _when(s.ends_at), s.author,
                      s.reason)
    console.print(table)


@silence.command("expire")
@click.argument("silence_id", metavar="ID")
@CONFIG_OPTION
def expire(silence_id: str, config_path: str) -> None:
    """End a silence now (the ID from `silence list`; a unique prefix is enough)."""
    from mistwatch.notify import outbox
    _config, store = _open(config_path)
    with store:
        ended = outbox.expire_silence(store, silence_id, datetime.now(timezone.utc))
    if ended is None:
        raise click.BadParameter(f"no silence with id {silence_id!r} (see `mistwatch silence list --all`)",
                                 param_hint="ID")
    click.echo(f"silence {ended.id} expired ({', '.join(ended.matchers)})")
