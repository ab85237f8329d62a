"""`mistwatch store migrate` and `mistwatch store copy`: bring a store to this version's schema, and
move an installation from SQLite to a shared PostgreSQL store (or back) without losing anything."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

STORE_HELP = """Manage the state database.

\b
Move an installation from SQLite to PostgreSQL (docs/store.md):
  1. stop the daemon;
  2. mistwatch store copy --from sqlite:./var --to postgresql://mistwatch@db/mistwatch
  3. set store.url in the config, e.g.
     store: {url: "postgresql://mistwatch:${PGPASSWORD}@db/mistwatch"}
  4. start the daemon(s): one is active, the others stand by.
"""

TARGET_HELP = "sqlite:FOLDER (or the FOLDER holding mistwatch.db), or a postgresql:// URL."


@click.group("store", help=STORE_HELP)
def store() -> None:
    pass


def _target(text: str, option: str, *, must_exist: bool) -> str | Path:
    """What ``Store.open`` takes, from a --from/--to value; a SQLite source must already exist."""
    from mistwatch.errors import ConfigError
    from mistwatch.store.database import DB_FILENAME
    from mistwatch.store.dialect import is_postgres_url

    if is_postgres_url(text):
        return text
    folder = Path(text[len("sqlite:"):] if text.startswith("sqlite:") else text).expanduser()
    if folder.name == DB_FILENAME:
        folder = folder.parent
    if not str(folder) or "://" in text:
        raise ConfigError(f"{text!r} is neither sqlite:FOLDER nor a postgresql:// URL", key=option)
    if must_exist and not (folder / DB_FILENAME).is_file():
        raise ConfigError(f"no state database {DB_FILENAME} in {folder}", key=option)
    return folder


def _hold(stack: ExitStack, target: str | Path, opened: Any, purpose: str) -> None:
    """No daemon may write while we copy: hold the state-directory lock (SQLite) or the store's
    active lock (PostgreSQL) for the whole copy."""
    from mistwatch.errors import LockHeld
    from mistwatch.service.lock import StateLock

    if opened.dialect.shared:
        if not opened.try_become_active():
            raise LockHeld(f"a mistwatch daemon is active on {opened.where}; stop it before the copy")
    else:
        stack.enter_context(StateLock(target, purpose=purpose))


@store.command("copy")
@click.option("--from", "source_text", required=True, metavar="STORE", help="The store to copy. " + TARGET_HELP)
@click.option("--to", "dest_text", required=True, metavar="STORE", help="The new, empty store. " + TARGET_HELP)
def copy(source_text: str, dest_text: str) -> None:
    """Copy a whole store (history, runs, alert states, silences, the outbox) into a new empty one.

    Both are migrated to this version's schema first. Nothing is written to the source."""
    from mistwatch.store.copy import copy_store, row_counts
    from mistwatch.store.database import Store

    source_target = _target(source_text, "--from", must_exist=True)
    dest_target = _target(dest_text, "--to", must_exist=False)
    with ExitStack() as stack:
        source = stack.enter_context(Store.open(source_target))
        _hold(stack, source_target, source, "store copy")
        dest = stack.enter_context(Store.open(dest_target))
        _hold(stack, dest_target, dest, "store copy")
        copied = copy_store(source, dest)
        check = row_counts(dest)
        for table, n in copied.items():
            if check.get(table) != n:  # never expected; a copy that lost rows must not pass silently
                raise click.ClickException(f"{table}: copied {n} rows but {dest.where} holds {check.get(table)}")
        click.echo(f"copied {source.where} -> {dest.where} (schema version {dest.schema_version})")
        for table, n in copied.items():
            click.echo(f"  {table:<12} {n:>9} rows")


@store.command("migrate")
@click.option("--config", "config_path", default="config.yaml", show_default=True, metavar="FILE",
              type=click.Path(dir_okay=False), help="The configuration file (its store.url or state_dir).")
@click.option("--store", "store_text", metavar="STORE", help="Migrate this store instead. " + TARGET_HELP)
def migrate(config_path: str, store_text: str | None) -> None:
    """Apply the schema migrations this version has and the store lacks, then print its version."""
    from mistwatch.store.database import Store

    if store_text:
        target = _target(store_text, "--store", must_exist=False)
    else:
        from mistwatch.config import load_config
        from mistwatch.host import make_host

        target = load_config(config_path, make_host(), require_env=False).store_target
    with Store.open(target) as opened:  # opening migrates
        applied = ", ".join(map(str, opened.applied_on_open)) or "none (up to date)"
        click.echo(f"{opened.where}: schema version {opened.schema_version}; applied now: {applied}")
