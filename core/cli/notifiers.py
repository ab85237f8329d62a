"""`mistwatch notifiers test NAME`: send a test message through the outbox and report the result."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from mistwatch.errors import MistwatchError


@click.group("notifiers")
def notifiers() -> None:
    """Test configured notifiers."""


@notifiers.command("test")
@click.argument("name")
@click.option("--config", "config_path", default="config.yaml",
                             envvar="MISTWATCH_CONFIG", show_default=True, metavar="FILE",
              help="The configuration file.")
def test(name: str, config_path: str) -> None:
    """Send a test message to the notifier NAME (from notifiers: in the config).

    The message goes through the outbox like any other, so what it proves is what alerts will do.
    Exit 0 when it was delivered, 1 when it failed (the reason is printed)."""
    from rich.console import Console
    from rich.markup import escape

    from mistwatch.config import host_for_config, load_config
    from mistwatch.notify import outbox
    from mistwatch.notify.pipeline import send_outbox, test_notification
    from mistwatch.notify.settings import load_settings
    from mistwatch.store.database import Store

    host = host_for_config(config_path)
    config = load_config(config_path, host)
    settings = load_settings(config)
    if name not in settings.notifiers:
        known = ", ".join(sorted(settings.notifiers)) or "none configured"
        raise click.BadParameter(f"no notifier named {name!r} (configured: {known})", param_hint="NAME")
    now = datetime.now(timezone.utc)
    message = test_notification(name, now)
    with Store.open(config.store_target) as store:
        outbox.enqueue(store, [message], now)
        # only this message: the next cycle (or a running daemon) delivers the rest of the outbox
        result = send_outbox(config, host, store, now, ids=[message.id], settings=settings)
    console = Console(highlight=False)
    if result.sent:
        console.print(f"[green]sent[/] test message to {escape(name)} "
                      f"({escape(settings.notifiers[name]['type'])}): {escape(message.title)}")
        return
    failed = (result.permanent_failures or result.failed)
    error = failed[0].last_error if failed else "not sent"
    raise MistwatchError(f"test message to {name} failed: {error}")
