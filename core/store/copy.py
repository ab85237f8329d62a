"""Copy a whole state database to another (SQLite -> PostgreSQL, or back): `mistwatch store copy`.

Both stores are opened (so both are migrated to this version's schema) and every table is copied
row for row, ids included, in batches: history, runs, entities, alert states and transitions,
key-value state, the outbox (pending messages stay pending), the notification log and silences.
Tables added by later migrations are copied too (every table but ``schema_migrations``), after the
known ones so foreign keys find their rows. The destination must be empty: a copy never merges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mistwatch.errors import MistwatchError

#: Tables referenced by foreign keys come before the tables referring to them.
_ORDER = ("runs", "entities", "metrics", "samples", "alerts", "transitions", "kv", "outbox", "notify_log",
          "silences")
_BATCH = 500


def tables(store: Any) -> list[str]:
    """The store's tables in copy order."""
    if store.dialect.shared:
        rows = store.db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    else:
        rows = store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                "AND name NOT LIKE 'sqlite_%'").fetchall()
    names = {r[0] for r in rows} - {"schema_migrations"}
    return [t for t in _ORDER if t in names] + sorted(names - set(_ORDER))


def row_counts(store: Any) -> dict[str, int]:
    return {t: int(store.db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables(store)}


def copy_store(source: Any, dest: Any, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``dest`` in one transaction; returns rows per table.
    Both must be at the same schema version (open both with this mistwatch: that migrates them)."""
    if source.schema_version != dest.schema_version:
        raise MistwatchError(f"{source.where} is at schema version {source.schema_version} but {dest.where} "
                             f"at {dest.schema_version}: open both with the same mistwatch first")
    names = tables(source)
    missing = [t for t in names if t not in set(tables(dest))]
    if missing:
        raise MistwatchError(f"{dest.where} has no table {missing[0]} (another schema?)")
    busy = {t: n for t, n in row_counts(dest).items() if n}
    if busy:
        table, n = next(iter(busy.items()))
        raise MistwatchError(f"{dest.where} is not empty ({n} rows in {table}); copy only into a new store")
    copied: dict[str, int] = {}
    with source._errors("reading the source store"), dest.transaction() as db:
        for table in names:
            cur = source.db.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cur.description]
            insert = (f'INSERT INTO "{table}" ({", ".join(columns)}) '
                      f'VALUES ({", ".join("?" * len(columns))})')
            count = 0
            while True:
                rows = cur.fetchmany(_BATCH)
                if not rows:
                    break
                db.executemany(insert, [tuple(_value(v) for v in row) for row in rows])
                count += len(rows)
                if progress:
                    progress(table, count)
            copied[table] = count
            if "id" in columns:
                _after_explicit_ids(dest, db, table)
    dest._forget_caches()
    return copied


def _value(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def _after_explicit_ids(dest: Any, db: Any, table: str) -> None:
    """Rows were inserted with their ids: move PostgreSQL's identity sequence past them, so the next
    row gets a new id (SQLite's AUTOINCREMENT counter follows explicit ids by itself)."""
    if not dest.dialect.shared:
        return
    seq = db.execute("SELECT pg_get_serial_sequence(?, 'id')", (table,)).fetchone()[0]
    if seq:
        db.execute(f'SELECT setval(?, coalesce((SELECT max(id) FROM "{table}"), 0) + 1, false)', (seq,))
