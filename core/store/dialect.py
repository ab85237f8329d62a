"""The two SQL backends of the store: SQLite (embedded, the default) and PostgreSQL (shared).

The store, the outbox and every migration are written once, in SQL both engines run: ``?``
placeholders, ``INSERT ... ON CONFLICT``, ``RETURNING``, and SQLite's column types (INTEGER, REAL,
TEXT, BLOB). This module holds the few things that differ:

- placeholders: ``?`` becomes ``%s`` for psycopg (and a literal ``%`` becomes ``%%``);
- migrations (DDL): the PostgreSQL dialect maps the types (INTEGER -> BIGINT, REAL -> DOUBLE
  PRECISION, BLOB -> BYTEA, TEXT -> TEXT COLLATE "C" so text sorts bytewise as in SQLite, and
  ``INTEGER PRIMARY KEY [AUTOINCREMENT]`` -> an identity column). A new migration therefore is plain
  SQL in SQLite's type names, with no BEGIN/COMMIT, and runs on both;
- the schema version (``PRAGMA user_version`` in SQLite; ``max(version)`` of ``schema_migrations``
  in PostgreSQL), how a write transaction starts, "is this id in that list", row claiming
  (``FOR UPDATE SKIP LOCKED``), and how driver errors read as one line.

psycopg is imported only when a ``postgresql://`` store is opened.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mistwatch.errors import MistwatchError

#: Key of the advisory lock that serialises migrations between processes sharing a PostgreSQL store.
MIGRATION_LOCK_KEY = 0x6D77_0001
#: Key of the session advisory lock held by the one active daemon of a shared store.
ACTIVE_LOCK_KEY = 0x6D77_0002


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class SqliteDialect:
    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    begin = "BEGIN IMMEDIATE"  # take the write lock now: no deadlock upgrading a read lock later
    claim_suffix = ""  # BEGIN IMMEDIATE already excludes every other writer
    shared = False

    def statements(self, script: str) -> list[str]:
        return _split_sql(script)

    def in_transaction(self, db: sqlite3.Connection) -> bool:
        return db.in_transaction

    def user_version(self, db: Any) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def set_user_version(self, db: Any, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")

    def has_table(self, db: Any, name: str) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          (name,)).fetchone() is not None

    def table_count(self, db: Any) -> int:
        return int(db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                              "AND name NOT LIKE 'sqlite_%'").fetchone()[0])

    def lock_for_migration(self, db: Any) -> None:
        pass  # BEGIN IMMEDIATE holds the only write lock

    def id_in(self, column: str, ids: Sequence[int]) -> tuple[str, Any]:
        """``column IN (those ids)`` as one parameter (a JSON array), not one per id."""
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(list(ids))


class PostgresDialect:
    name = "postgresql"
    begin = "BEGIN"
    claim_suffix = " FOR UPDATE SKIP LOCKED"
    shared = True

    def __init__(self) -> None:
        import psycopg

        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)

    def statements(self, script: str) -> list[str]:
        return [_pg_ddl(s) for s in _split_sql(script)]

    def in_transaction(self, db: PgConnection) -> bool:
        return db.in_transaction

    def user_version(self, db: Any) -> int:
        if not self.has_table(db, "schema_migrations"):
            return 0
        return int(db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])

    def set_user_version(self, db: Any, version: int) -> None:
        pass  # the version is max(version) of schema_migrations

    def has_table(self, db: Any, name: str) -> bool:
        return db.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]

    def table_count(self, db: Any) -> int:
        return int(db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").fetchone()[0])

    def lock_for_migration(self, db: Any) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))

    def id_in(self, column: str, ids: Sequence[int]) -> tuple[str, Any]:
        return f"{column} = ANY(?)", list(ids)


Dialect = SqliteDialect | PostgresDialect


class PgConnection:
    """A psycopg connection (autocommit: the store issues BEGIN/COMMIT itself) with the small part of
    the sqlite3 connection interface the store and the outbox use: ``execute`` and ``executemany``
    with ``?`` placeholders, returning a cursor (``fetchone``, ``fetchall``, ``rowcount``, iteration)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] | None = ()) -> Any:
        cur = self.conn.cursor()
        # Always a parameter sequence (maybe empty): psycopg then reads %% as %, as _pg_sql wrote it.
        cur.execute(_pg_sql(sql), _text_safe(params or ()))
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = self.conn.cursor()
        cur.executemany(_pg_sql(sql), (_text_safe(row) for row in rows))
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.conn.info.transaction_status != TransactionStatus.IDLE

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        self.conn.close()


def connect_postgres(url: str, *, connect_timeout: float, application_name: str = "mistwatch") -> PgConnection:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(connect_timeout)),
                           application_name=application_name)
    return PgConnection(conn)


def _text_safe(params: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL text cannot hold NUL characters (SQLite's can), and data from Mist is hostile: a
    NUL in a name must not make a write fail, so it is stored as U+FFFD. Checked per parameter
    (``in`` on a str is C speed); a row without NUL is passed on as it is."""
    for p in params:
        if type(p) is str and "\x00" in p:
            return [q.replace("\x00", "\ufffd") if type(q) is str else q for q in params]
    return params


# SQL translation --------------------------------------------------------------------------------------
@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` -> ``%s``. The store's SQL has no ``?`` inside string literals (values are parameters)."""
    return sql.replace("%", "%%").replace("?", "%s")


_DDL_RULES = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\)\s*WITHOUT\s+ROWID\b", re.I), ")"),  # SQLite's clustered-table option: PostgreSQL has none
]


def _pg_ddl(statement: str) -> str:
    """A migration statement in SQLite's type names, for PostgreSQL. Only CREATE/ALTER TABLE carry
    types; comments are dropped first so a word in a comment is never rewritten."""
    text = re.sub(r"--[^\n]*", "", statement)
    if re.match(r"\s*(CREATE\s+TABLE|ALTER\s+TABLE)", text, re.I):
        for pattern, replacement in _DDL_RULES:
            text = pattern.sub(replacement, text)
    return text.strip()


def _split_sql(script: str) -> list[str]:
    """Split a script into complete statements (semicolons inside strings or triggers kept)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        statements.append(current.strip())
    return statements


# errors --------------------------------------------------------------------------------------------
def translate_sqlite(exc: BaseException, where: str, doing: str, busy_timeout: float | None = None
                     ) -> MistwatchError:
    """One clear line for what SQLite reports; the cases a user can act on are named."""
    text = str(exc)
    low = text.lower()
    if "file is not a database" in low or "file is encrypted" in low:
        return MistwatchError(f"{where} is not a mistwatch state database")
    if "database is locked" in low or "database is busy" in low or "database table is locked" in low:
        waited = f", waited {busy_timeout:g} s" if busy_timeout is not None else ""
        return MistwatchError(f"{where} is locked by another process ({doing}{waited})")
    if "disk is full" in low or "database or disk is full" in low:
        return MistwatchError(f"{where}: disk full while {doing}")
    if "readonly" in low or "read-only" in low:
        return MistwatchError(f"{where} is read-only (cannot write while {doing})")
    if "unable to open" in low:
        return MistwatchError(f"cannot open {where}: {text}")
    if "malformed" in low or "corrupt" in low:
        return MistwatchError(f"{where} is damaged ({text}); restore it or move it away to start afresh")
    return MistwatchError(f"{where}: {text} (while {doing})")


def translate_postgres(exc: BaseException, where: str, doing: str) -> MistwatchError:
    """One line for a psycopg error. The server's message never holds the password; the URL in
    ``where`` has it removed."""
    import psycopg

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled):
        return MistwatchError(f"PostgreSQL store {where} unreachable or connection lost while {doing}: {first}")
    return MistwatchError(f"PostgreSQL store {where}: {first} (while {doing})")
