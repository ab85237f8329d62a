"""The SQLite store under ``state_dir``: metric history, alert states, runs, key-value state.

Notification tables (outbox, notification log, silences) are added by ``mistwatch.notify.outbox`` through
``MIGRATIONS`` below, on the same connection (``store.db``).

Storage layout of metric history: column-oriented, one row per (timestamp, metric) holding two blobs,
the entity ids (``array('i')``) and the values (``array('d')``), little-endian, so a run of 10,000
sites and 60,000 devices is a few dozen rows, and "metric M for every entity near time T" is one
indexed lookup.

Schema versions: ``PRAGMA user_version`` holds the highest applied migration and the table
``schema_migrations`` every applied one, so a migration added later with a lower number (versions
1..9 belong to this module, 10 and up to the notification tables) is still applied on upgrade.
A database holding a migration this code does not know was written by a newer mistwatch: refused.

Threads: the connection is opened with ``check_same_thread=False`` so a daemon may hand the store
from one thread to another, but a ``Store`` must be used by one thread at a time (it keeps
in-memory caches and one connection; there is no locking here). Readers in other processes are
fine (WAL); writes assume one writing process per state_dir (the state-directory lock), since the
entity caches are only refreshed for rows added elsewhere, not for rows changed or pruned elsewhere.

Times are stored as UTC epoch seconds (REAL; samples use INTEGER seconds) and returned as
timezone-aware UTC datetimes. Naive datetimes passed in are taken as UTC.
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mistwatch.errors import MistwatchError
from mistwatch.files import open_private, private_dir, touch_private
from mistwatch.model import Alert
from mistwatch.store.dialect import (
    PostgresDialect,
    SqliteDialect,
    connect_postgres,
    display_url,
    is_postgres_url,
    translate_postgres,
    translate_sqlite,
)
from mistwatch.store.history import HistoryMixin
from mistwatch.store.records import (
    _DAY,
    _HOUR,
    _UTC,
    RunRecord,
    Transition,
    _digest_code,
    _dt,
    _dt_or_none,
    _epoch,
    _epoch_or_none,
    _json,
)
from mistwatch.store.rollups import DEFAULT_ROLLUP_DAYS, RollupMixin
from mistwatch.store.schema import MIGRATIONS

DB_FILENAME = "mistwatch.db"
#: Written beside the database once it holds a schema: a database that then goes missing or is
#: emptied (a restore gone wrong, a full disk, a careless rm) is reported, not silently replaced by
#: a new one, which would notify every open alert again.
MARKER_FILENAME = "mistwatch.db.created"

#: How long a statement waits for another process's write lock before failing, in seconds.
DEFAULT_BUSY_TIMEOUT = 10.0



class Store(HistoryMixin, RollupMixin):
    """The state database. Open with ``Store.open(state_dir)`` (SQLite, one file under the state
    directory, WAL) or ``Store.open("postgresql://...")`` (a shared PostgreSQL database); use as a
    context manager. Both backends have the same schema versions, behaviour and API.

    ``store.db`` is the connection, in autocommit mode: other modules (the outbox) run their SQL
    on it, written for both backends (see ``mistwatch.store.dialect``), inside
    ``store.transaction()`` when they write. ``store.dialect`` says which backend it is;
    ``store.where`` names it in messages (the file, or the URL without its password);
    ``store.path`` is the SQLite file (None for PostgreSQL).
    """

    path: Path | None
    db: Any  # sqlite3.Connection, or dialect.PgConnection

    def __init__(self, path: Path | None, db: Any, dialect: SqliteDialect | PostgresDialect | None = None,
                 where: str | None = None) -> None:
        self.path = path
        self.db = db
        self.dialect = dialect or SqliteDialect()
        self.where = where or str(path)
        self._depth = 0  # transaction nesting: 0 none, 1 BEGIN, >1 savepoints
        self._entity_ids: dict[str, int] | None = None  # key -> id, loaded on first use
        # Indexed by id (ids are dense, AUTOINCREMENT from 1): a list and an array cost 8 bytes an
        # entity where dicts and digest bytes objects cost about 100 (70,000 entities at 10,000 sites).
        self._entity_keys: list[str | None] = [None]  # id -> key; None: no such id known
        self._digests = array("q", [0])  # id -> labels_digest as stored, as an int; 0: none
        self._max_entity_id = 0
        self._metric_ids: dict[str, int] = {}
        self._busy_timeout: float | None = None
        self._closed = False
        self.applied_on_open: list[int] = []  # migrations applied by open()

    # opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, target: str | Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
             application_name: str = "mistwatch") -> Store:
        """Open the store and apply migrations. ``target`` is a state directory (created if
        needed; the store is ``state_dir/mistwatch.db``), ``sqlite:PATH`` (the same) or a
        ``postgresql://`` URL.

        ``busy_timeout`` (seconds) is how long a write waits for another process's lock (SQLite),
        or how long connecting may take (PostgreSQL)."""
        if is_postgres_url(target):
            return cls._open_postgres(str(target), busy_timeout, application_name)
        if isinstance(target, str) and target.startswith("sqlite:"):
            target = target[len("sqlite:"):]
        state_dir = Path(target)
        path = state_dir / DB_FILENAME
        try:
            private_dir(state_dir)
        except OSError as exc:
            raise MistwatchError(f"cannot create state directory {state_dir}: {exc.strerror or exc}"
                                 ) from None
        marker = state_dir / MARKER_FILENAME
        _refuse_vanished(path, marker)
        try:
            touch_private(path)  # owner-only whatever the umask; SQLite gives its WAL the same mode
        except OSError as exc:
            raise MistwatchError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise translate_sqlite(exc, str(path), "opening") from None
        store = cls(path, db)
        store._busy_timeout = busy_timeout
        try:
            with store._errors("opening"):
                db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                store._check_is_ours()
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise MistwatchError(f"{path}: cannot switch the state database to WAL mode ({mode})")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("PRAGMA foreign_keys = ON")
                # Keep the WAL file from staying large after a big write; checkpoints are automatic.
                db.execute("PRAGMA journal_size_limit = 67108864")
            store.applied_on_open = store.migrate()
            if not marker.exists():
                _write_marker(marker)
        except BaseException:
            db.close()
            raise
        return store

    @classmethod
    def _open_postgres(cls, url: str, connect_timeout: float, application_name: str) -> Store:
        where = display_url(url)
        try:
            dialect = PostgresDialect()
        except ImportError:
            raise MistwatchError(f"store {where} needs psycopg: pip install 'mistwatch[postgres]'") from None
        try:
            db = connect_postgres(url, connect_timeout=connect_timeout, application_name=application_name)
        except dialect.errors as exc:
            raise translate_postgres(exc, where, "connecting") from None
        store = cls(None, db, dialect, where)
        try:
            with store._errors("opening"):
                store._check_is_ours()
            store.applied_on_open = store.migrate()
        except BaseException:
            db.close()
            raise
        return store

    def _check_is_ours(self) -> None:
        """A database with tables but no schema version belongs to something else."""
        if self.dialect.user_version(self.db) == 0 and self.dialect.table_count(self.db):
            raise MistwatchError(f"{self.where} is not a mistwatch state database")

    def migrate(self) -> list[int]:
        """Apply every migration in ``MIGRATIONS`` not applied yet, in version order, each in its own
        transaction. Called by ``open``; call again after appending migrations at run time.
        Returns the versions applied."""
        versions = [v for v, _ in MIGRATIONS]
        if len(set(versions)) != len(versions):
            dupes = sorted({v for v in versions if versions.count(v) > 1})
            raise MistwatchError(f"internal error: duplicate schema migration versions {dupes}")
        known = dict(MIGRATIONS)
        applied_now: list[int] = []
        dialect = self.dialect
        with self._errors("migrating"):
            self._refuse_newer(known)
            # Only pending versions take the write lock, so opening an up-to-date database never
            # waits for a busy writer.
            for version in sorted(known.keys() - self._applied_versions()):
                with self.transaction() as db:
                    dialect.lock_for_migration(db)
                    # Re-read inside the write lock: another process may have just migrated.
                    if version in self._applied_versions():
                        continue
                    for statement in dialect.statements(
                            "CREATE TABLE IF NOT EXISTS schema_migrations "
                            "(version INTEGER NOT NULL PRIMARY KEY, applied_at REAL NOT NULL)"):
                        db.execute(statement)
                    for statement in dialect.statements(known[version]):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                               (version, datetime.now(_UTC).timestamp()))
                    top = db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
                    dialect.set_user_version(db, int(top))
                    applied_now.append(version)
        return applied_now

    def _applied_versions(self) -> set[int]:
        if self.dialect.user_version(self.db) == 0:
            return set()
        if not self.dialect.has_table(self.db, "schema_migrations"):
            raise MistwatchError(f"{self.where} is not a mistwatch state database")
        return {row[0] for row in self.db.execute("SELECT version FROM schema_migrations")}

    def _refuse_newer(self, known: dict[int, str]) -> None:
        user_version = self.dialect.user_version(self.db)
        unknown = sorted(self._applied_versions() - known.keys())
        if unknown or user_version > max(known, default=0):
            newest = max([user_version, *unknown])
            raise MistwatchError(
                f"{self.where}: state was written by a newer mistwatch (schema version {newest}, this "
                f"version knows up to {max(known, default=0)}); upgrade mistwatch or use another state_dir")

    @property
    def schema_version(self) -> int:
        """The highest migration applied (SQLite: ``PRAGMA user_version``)."""
        with self._errors("reading the schema version"):
            return self.dialect.user_version(self.db)

    def close(self) -> None:
        """Close the connection (idempotent). Using the store afterwards raises MistwatchError.
        With PostgreSQL this also ends the session, releasing the active lock if held."""
        if self._closed:
            return
        self._closed = True
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # errors and transactions --------------------------------------------------------------------
    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self.dialect.errors as exc:
            if self.dialect.shared:
                raise translate_postgres(exc, self.where, doing) from None
            raise translate_sqlite(exc, self.where, doing, self._busy_timeout) from None

    def reading(self) -> Any:
        """A context in which SQLite errors of reads become the same one-line MistwatchError as
        everywhere else (``status`` on a damaged file says what ``run`` says)."""
        return self._errors("reading")

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield the connection inside BEGIN ... COMMIT (ROLLBACK on error); SQLite takes the write
        lock at BEGIN (IMMEDIATE).

        Nested use becomes a SAVEPOINT, so a caller can wrap several store calls (say
        ``save_alerts`` and an outbox write) in one transaction. Driver errors come out as
        ``MistwatchError``; any other exception is re-raised unchanged after the rollback."""
        if self._closed:
            raise MistwatchError(f"{self.where}: the state database is closed")
        db = self.db
        self._depth += 1
        savepoint = f"mw_{self._depth}"
        try:
            with self._errors("starting a transaction"):
                db.execute(self.dialect.begin if self._depth == 1 else f"SAVEPOINT {savepoint}")
        except BaseException:
            self._depth -= 1
            raise
        try:
            with self._errors("writing"):
                yield db
            with self._errors("committing"):
                db.execute("COMMIT" if self._depth == 1 else f"RELEASE {savepoint}")
        except BaseException:
            self._forget_caches()
            try:
                if self._depth == 1:
                    if self.dialect.in_transaction(db):
                        db.execute("ROLLBACK")
                else:
                    db.execute(f"ROLLBACK TO {savepoint}")
                    db.execute(f"RELEASE {savepoint}")
            except self.dialect.errors:
                pass  # the original error is the one worth reporting
            raise
        finally:
            self._depth -= 1

    # active/standby (PostgreSQL) ----------------------------------------------------------------------
    def try_become_active(self) -> bool:
        """Take the store's active lock if free: a PostgreSQL session advisory lock on this store's
        own connection, so it is released when the connection ends (process killed, network lost)
        and every write of the holder goes through the session that holds it. True if held now.
        SQLite has one writer per state directory (the state-directory lock): always True."""
        if not self.dialect.shared:
            return True
        from mistwatch.store.dialect import ACTIVE_LOCK_KEY

        with self._errors("taking the active lock"):
            # keyed by the schema too: installations in different schemas of one database are independent
            return bool(self.db.execute("SELECT pg_try_advisory_lock(?, hashtext(current_schema()))",
                                        (ACTIVE_LOCK_KEY,)).fetchone()[0])

    def still_active(self) -> bool:
        """True while this store's session still holds the active lock (a round trip to the server;
        False if the connection is gone)."""
        if not self.dialect.shared:
            return True
        from mistwatch.store.dialect import ACTIVE_LOCK_KEY

        try:
            row = self.db.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND " + _HOLDS_ACTIVE_LOCK,
                (ACTIVE_LOCK_KEY,)).fetchone()
        except self.dialect.errors:
            return False
        return bool(row[0])

    def describe_session(self, name: str) -> None:
        """PostgreSQL: name this session (``application_name``) as ``status`` shows it. SQLite: nothing."""
        if self.dialect.shared:
            with self._errors("naming the session"):
                self.db.execute("SELECT set_config('application_name', ?, false)", (name,))

    def abandon_running_runs(self, reason: str) -> int:
        """Mark every run still ``running`` as failed with ``reason`` (its process is gone); how many."""
        with self.transaction() as db:
            return db.execute("UPDATE runs SET status = 'failed', errors = ? WHERE status = 'running'",
                              (_json([reason], "reason"),)).rowcount

    def active_sessions(self) -> list[dict[str, Any]]:
        """PostgreSQL: the sessions on this store, the holder of the active lock first, as
        ``{"application_name", "active", "since"}``. SQLite: empty (see the state-directory lock)."""
        if not self.dialect.shared:
            return []
        from mistwatch.store.dialect import ACTIVE_LOCK_KEY

        with self._errors("reading sessions"):
            rows = self.db.execute(
                "SELECT a.application_name, EXISTS (SELECT 1 FROM pg_locks WHERE pid = a.pid AND "
                + _HOLDS_ACTIVE_LOCK + "), "
                "a.backend_start FROM pg_stat_activity a WHERE a.datname = current_database() "
                "AND a.application_name LIKE 'mistwatch daemon%' ORDER BY 2 DESC, 3",
                (ACTIVE_LOCK_KEY,)).fetchall()
        return [{"application_name": name, "active": bool(active),
                 "since": since.isoformat(timespec="seconds") if since else None} for name, active, since in rows]

    # runs ------------------------------------------------------------------------------------
    def start_run(self, started_at: datetime, mode: str) -> int:
        with self.transaction() as db:
            row = db.execute("INSERT INTO runs (started_at, mode, status) VALUES (?, ?, 'running') RETURNING id",
                             (_epoch(started_at), mode)).fetchone()
            return int(row[0])

    def finish_run(self, run_id: int, *, finished_at: datetime, status: str, api_calls: int = 0,
                   errors: Iterable[str] = (), summary: dict[str, Any] | None = None) -> None:
        errors_json = _json([str(e) for e in errors], f"errors of run {run_id}")
        summary_json = _json(summary or {}, f"summary of run {run_id}")
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, api_calls = ?, errors = ?, summary = ? "
                "WHERE id = ?", (_epoch(finished_at), status, api_calls, errors_json, summary_json, run_id))
            if cur.rowcount == 0:
                raise MistwatchError(f"{self.where}: no run {run_id} to finish")

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """Newest first."""
        with self._errors("reading runs"):
            rows = self.db.execute(_RUN_SELECT + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_run_record(row) for row in rows]

    def last_successful_run(self) -> RunRecord | None:
        """The newest run whose status is ``ok`` or ``partial`` (it stored a snapshot)."""
        with self._errors("reading runs"):
            row = self.db.execute(
                _RUN_SELECT + " WHERE status IN ('ok', 'partial') ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else _run_record(row)

    # entity and metric id caches ----------------------------------------------------------------
    def _load_entity_ids(self) -> dict[str, int]:
        if self._entity_ids is None:
            self._entity_ids = {}
            self._entity_keys = [None]
            self._digests = array("q", [0])
            self._max_entity_id = 0
            self._refresh_entity_ids()
        return self._entity_ids

    def _refresh_entity_ids(self) -> None:
        """Pick up entities inserted since the cache was filled (ids only grow: AUTOINCREMENT)."""
        assert self._entity_ids is not None
        rows = self.db.execute("SELECT id, key, labels_digest FROM entities WHERE id > ?",
                               (self._max_entity_id,)).fetchall()
        if not rows:
            return
        self._max_entity_id = max(self._max_entity_id, max(row[0] for row in rows))
        grow = self._max_entity_id + 1 - len(self._entity_keys)
        if grow > 0:
            self._entity_keys.extend([None] * grow)
            self._digests.extend(array("q", bytes(8 * grow)))
        for entity_id, key, digest in rows:
            self._entity_ids[key] = entity_id
            self._entity_keys[entity_id] = key
            self._digests[entity_id] = _digest_code(digest)

    def _forget_caches(self) -> None:
        """After a rollback the caches may name rows (and AUTOINCREMENT ids) that no longer exist."""
        self._entity_ids = None
        self._metric_ids = {}

    def _keys_of(self, entity_ids: Iterable[int]) -> list[str | None]:
        self._load_entity_ids()
        ids = list(entity_ids)
        keys = self._entity_keys
        try:
            found = list(map(keys.__getitem__, ids))
            if None not in found and (not ids or min(ids) > 0):
                return found
        except (IndexError, TypeError):
            pass
        self._refresh_entity_ids()  # written by another process since we loaded
        keys = self._entity_keys
        return [keys[i] if type(i) is int and 0 < i < len(keys) else None for i in ids]

    def _key_or_id(self, entity_id: int) -> str | int:
        keys = self._entity_keys
        return keys[entity_id] or entity_id if 0 < entity_id < len(keys) else entity_id

    def _ids_of(self, keys: Iterable[str]) -> set[int]:
        ids = self._load_entity_ids()
        return {ids[k] for k in keys if k in ids}

    def _metric_id(self, name: str, *, create: bool) -> int | None:
        metric_id = self._metric_ids.get(name)
        if metric_id is None:
            if create:
                self.db.execute("INSERT INTO metrics (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
            row = self.db.execute("SELECT id FROM metrics WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            metric_id = self._metric_ids[name] = row[0]
        return metric_id

    # alerts -----------------------------------------------------------------------------------
    def load_alerts(self) -> dict[str, Alert]:
        """Every alert not inactive, by key."""
        with self._errors("reading alerts"):
            rows = self.db.execute(f"SELECT {', '.join(_ALERT_COLUMNS)} FROM alerts "
                                   "WHERE state != 'inactive' ORDER BY key").fetchall()
        return {row[0]: _alert_from_row(row) for row in rows}

    def alert_counts(self) -> dict[tuple[str, str], int]:
        """{(state, severity): number of alerts}, without loading them (a /metrics scrape)."""
        with self._errors("reading alerts"):
            rows = self.db.execute("SELECT state, severity, COUNT(*) FROM alerts GROUP BY state, severity").fetchall()
        return {(state, severity): n for state, severity, n in rows}

    def save_alerts(self, alerts: Iterable[Alert], transitions: Iterable[Transition] = ()) -> None:
        """Upsert alert states and append transitions, in one transaction. An alert saved with
        state ``inactive`` is deleted."""
        upserts, deletes = [], []
        for alert in alerts:
            if alert.state == "inactive":
                deletes.append((alert.key,))
            else:
                upserts.append(_alert_to_row(alert))
        transition_rows = [(t.alert_key, t.rule_id, _epoch(t.at), t.from_state, t.to_state, t.severity,
                            t.value) for t in transitions]
        placeholders = ", ".join("?" * len(_ALERT_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ALERT_COLUMNS[1:])
        with self.transaction() as db:
            db.executemany("DELETE FROM alerts WHERE key = ?", deletes)
            db.executemany(f"INSERT INTO alerts ({', '.join(_ALERT_COLUMNS)}) VALUES ({placeholders}) "
                           f"ON CONFLICT (key) DO UPDATE SET {updates}", upserts)
            db.executemany("INSERT INTO transitions (alert_key, rule_id, at, from_state, to_state, "
                           "severity, value) VALUES (?, ?, ?, ?, ?, ?, ?)", transition_rows)

    def transitions(self, alert_key: str | None = None, since: datetime | None = None) -> list[Transition]:
        """Recorded transitions (of ``alert_key``, at or after ``since``), oldest first."""
        where, params = [], []
        if alert_key is not None:
            where.append("alert_key = ?")
            params.append(alert_key)
        if since is not None:
            where.append("at >= ?")
            params.append(_epoch(since))
        sql = "SELECT alert_key, rule_id, at, from_state, to_state, severity, value FROM transitions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._errors("reading transitions"):
            rows = self.db.execute(sql + " ORDER BY at, id", params).fetchall()
        return [Transition(key, rule, _dt(at), frm, to, sev, value)
                for key, rule, at, frm, to, sev, value in rows]

    # small persistent values (collector cursors, digest dates) ----------------------------------
    def kv_get(self, key: str, default: Any = None) -> Any:
        with self._errors(f"reading {key}"):
            row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def kv_set(self, key: str, value: Any) -> None:
        """``value`` must be JSON-serialisable."""
        text = _json(value, f"state value {key!r}")
        with self.transaction() as db:
            db.execute("INSERT INTO kv (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, text))

    # retention --------------------------------------------------------------------------------
    def prune(self, now: datetime, *, raw_hours: float = 48, hourly_days: float = 8,
              retention_days: float = 35, rollup_days: float = DEFAULT_ROLLUP_DAYS) -> dict[str, int]:
        """Thin history: keep every run's samples for ``raw_hours``, then one run per hour until
        ``hourly_days``, then one per day until ``retention_days``, then nothing. Old runs and
        transitions go too. Returns counts of what was deleted.

        "One per hour/day" is the earliest sample row of each metric in each UTC hour/day bucket
        (epoch seconds // 3600 or // 86400), so repeated prunes keep the same rows. Entities not
        seen for ``retention_days`` are deleted. Counts: ``samples`` (total) split into
        ``samples_hourly``, ``samples_daily`` (thinned) and ``samples_expired``; ``runs``,
        ``transitions``, ``entities``, ``rollups`` (hourly roll-ups of hours older than ``rollup_days``;
        those of deleted entities have no key and are ignored until they expire). Does not VACUUM:
        freed pages are reused."""
        t = _epoch(now)
        raw_cut = t - raw_hours * _HOUR
        hourly_cut = min(t - hourly_days * _DAY, raw_cut)
        retention_cut = min(t - retention_days * _DAY, hourly_cut)
        thin = ("DELETE FROM samples WHERE ts >= ? AND ts < ? AND id NOT IN ("
                " SELECT s.id FROM samples s JOIN ("
                "  SELECT metric_id, min(ts) AS ts FROM samples WHERE ts >= ? AND ts < ?"
                "  GROUP BY metric_id, ts / ?) keep USING (metric_id, ts))")
        with self.transaction() as db:
            expired = db.execute("DELETE FROM samples WHERE ts < ?", (retention_cut,)).rowcount
            daily = db.execute(thin, (retention_cut, hourly_cut, retention_cut, hourly_cut, _DAY)).rowcount
            hourly = db.execute(thin, (hourly_cut, raw_cut, hourly_cut, raw_cut, _HOUR)).rowcount
            # A "running" run that old crashed long ago: it goes too.
            runs = db.execute("DELETE FROM runs WHERE started_at < ?", (retention_cut,)).rowcount
            transitions = db.execute("DELETE FROM transitions WHERE at < ?", (retention_cut,)).rowcount
            rollups = db.execute("DELETE FROM rollups WHERE hour < ?", (t - rollup_days * _DAY,)).rowcount
            entities = db.execute("DELETE FROM entities WHERE last_seen < ?", (retention_cut,)).rowcount
        if entities:
            self._entity_ids = None  # reload lazily rather than track the deleted ids
        return {"samples": expired + daily + hourly, "samples_expired": expired, "samples_daily": daily,
                "samples_hourly": hourly, "runs": runs, "transitions": transitions, "entities": entities,
                "rollups": rollups}


#: A pg_locks row that is the active lock of this store's schema (two-key advisory lock: objsubid 2).
_HOLDS_ACTIVE_LOCK = ("locktype = 'advisory' AND granted AND classid = CAST(? AS oid) "
                      "AND objid = CAST(hashtext(current_schema()) AS oid) AND objsubid = 2")


# row helpers -----------------------------------------------------------------------------------
_RUN_SELECT = "SELECT id, started_at, finished_at, mode, status, api_calls, errors, summary FROM runs"

_ALERT_COLUMNS = ("key", "rule_id", "state", "severity", "labels", "value", "threshold", "baseline",
                  "summary", "description", "recommendation", "pending_since", "firing_since",
                  "resolved_at", "last_true_at", "last_eval_at", "true_count", "causes", "annotations")


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    run_id, started, finished, mode, status, api_calls, errors, summary = row
    return RunRecord(run_id, _dt(started), _dt_or_none(finished), mode, status, api_calls,
                     json.loads(errors), json.loads(summary))


def _alert_to_row(a: Alert) -> tuple[Any, ...]:
    return (a.key, a.rule_id, a.state, a.severity, _json(dict(a.labels), f"labels of alert {a.key}"),
            a.value, a.threshold, a.baseline, a.summary, a.description, a.recommendation,
            _epoch_or_none(a.pending_since), _epoch_or_none(a.firing_since), _epoch_or_none(a.resolved_at),
            _epoch_or_none(a.last_true_at), _epoch_or_none(a.last_eval_at), a.true_count,
            _json(list(a.causes), f"causes of alert {a.key}"),
            _json(a.annotations, f"annotations of alert {a.key}"))


def _alert_from_row(row: tuple[Any, ...]) -> Alert:
    (key, rule_id, state, severity, labels, value, threshold, baseline, summary, description,
     recommendation, pending_since, firing_since, resolved_at, last_true_at, last_eval_at, true_count,
     causes, annotations) = row
    return Alert(key=key, rule_id=rule_id, labels=json.loads(labels), state=state, severity=severity,
                 value=value, threshold=threshold, baseline=baseline, summary=summary,
                 description=description, recommendation=recommendation,
                 pending_since=_dt_or_none(pending_since), firing_since=_dt_or_none(firing_since),
                 resolved_at=_dt_or_none(resolved_at), last_true_at=_dt_or_none(last_true_at),
                 last_eval_at=_dt_or_none(last_eval_at), true_count=true_count,
                 causes=tuple(json.loads(causes)), annotations=json.loads(annotations))


def _refuse_vanished(path: Path, marker: Path) -> None:
    """Refuse a database that is missing or empty where one was created (see MARKER_FILENAME)."""
    if not marker.exists():
        return
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    if size:
        return
    created = marker.read_text(encoding="utf-8", errors="replace").strip()[:40] or "earlier"
    state = "is missing" if size is None else "is empty (0 bytes)"
    raise MistwatchError(
        f"{path} {state}, but a state database was created here ({created}): it was deleted or truncated. "
        f"Restore it from a backup; or, to start afresh (every open alert will be notified again), "
        f"delete {marker.name} in the same folder")


def _write_marker(marker: Path) -> None:
    try:
        with open_private(marker, "x", encoding="utf-8") as fh:
            fh.write(datetime.now(timezone.utc).isoformat(timespec="seconds") + "\n")
    except FileExistsError:
        pass
    except OSError:  # a read-only state dir: the store still works, only this safeguard is missing
        pass
