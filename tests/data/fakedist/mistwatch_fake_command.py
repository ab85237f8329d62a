"""A third-party plugin that adds a CLI command: the example of the ``mistwatch_commands`` hook spec."""

import click

from mistwatch import hookimpl


@click.command("outbox-size", help="Print how many notifications wait in the outbox.")
@click.option("--state-dir", default="var", show_default=True)
def outbox_size(state_dir):
    import sqlite3
    from pathlib import Path

    db = sqlite3.connect(Path(state_dir) / "mistwatch.db")
    click.echo(db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0])


@hookimpl
def mistwatch_commands():
    yield outbox_size
