"""The SQLite store under ``state_dir``: metric history, alert states, runs, key-value state.

Notification tables (outbox, notification log, silences) are added by ``mistwatch.outbox`` through
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

import hashlib
import importlib
import json
import sqlite3
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mistwatch.errors import MistwatchError
from mistwatch.model import Alert, Snapshot

DB_FILENAME = "mistwatch.db"

#: How long a statement waits for another process's write lock before failing, in seconds.
DEFAULT_BUSY_TIMEOUT = 10.0

#: Modules that append their own entries to ``MIGRATIONS``. They are imported before migrating so
#: that every command, whatever it imported, knows the whole schema (and does not take a database
#: migrated by another command for one written by a newer mistwatch).
MIGRATION_MODULES: tuple[str, ...] = ("mistwatch.outbox",)

_SCHEMA_V1 = """
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    mode        TEXT NOT NULL,
    status      TEXT NOT NULL,
    api_calls   INTEGER NOT NULL DEFAULT 0,
    errors      TEXT NOT NULL DEFAULT '[]',
    summary     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_started_at ON runs (started_at);

-- AUTOINCREMENT: ids are never reused, so a cached id -> key mapping can never point at the wrong
-- entity, even after pruning.
-- labels_digest fingerprints (kind, labels) so a write can skip re-encoding and rewriting the
-- labels of the (many) entities whose labels did not change; only last_seen is updated for them.
-- No index on last_seen: it changes on every row every run, and only prune filters on it.
CREATE TABLE entities (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL,
    labels        TEXT NOT NULL DEFAULT '{}',
    first_seen    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    labels_digest BLOB
);

CREATE TABLE metrics (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE
);

CREATE TABLE samples (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    ts          INTEGER NOT NULL,
    metric_id   INTEGER NOT NULL REFERENCES metrics (id),
    entity_ids  BLOB NOT NULL,
    vals        BLOB NOT NULL
);
CREATE UNIQUE INDEX samples_metric_ts ON samples (metric_id, ts);
CREATE INDEX samples_ts ON samples (ts);
CREATE INDEX samples_run ON samples (run_id);

CREATE TABLE alerts (
    key             TEXT PRIMARY KEY,
    rule_id         TEXT NOT NULL,
    state           TEXT NOT NULL,
    severity        TEXT NOT NULL,
    labels          TEXT NOT NULL DEFAULT '{}',
    value           REAL,
    threshold       REAL,
    baseline        REAL,
    summary         TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    recommendation  TEXT NOT NULL DEFAULT '',
    pending_since   REAL,
    firing_since    REAL,
    resolved_at     REAL,
    last_true_at    REAL,
    last_eval_at    REAL,
    true_count      INTEGER NOT NULL DEFAULT 0,
    causes          TEXT NOT NULL DEFAULT '[]',
    annotations     TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY,
    alert_key   TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    at          REAL NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    severity    TEXT NOT NULL,
    value       REAL
);
CREATE INDEX transitions_at ON transitions (at);
CREATE INDEX transitions_alert_key ON transitions (alert_key, at);

CREATE TABLE kv (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"""

#: Ordered schema migrations: (version, SQL script). Append only; never edit a released one.
#: Versions 1..9 belong to this module, 10 and up to ``mistwatch.outbox``. A script runs inside
#: one transaction together with its version bump, so it must not contain BEGIN/COMMIT itself.
MIGRATIONS: list[tuple[int, str]] = [(1, _SCHEMA_V1)]

_UTC = timezone.utc
_BIG_ENDIAN = sys.byteorder == "big"
_DAY = 86400
_HOUR = 3600


@dataclass
class RunRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    mode: str
    status: str  # running | ok | partial | failed
    api_calls: int = 0
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class EntityRecord:
    key: str
    kind: str
    labels: dict[str, str]
    first_seen: datetime
    last_seen: datetime


@dataclass
class Transition:
    alert_key: str
    rule_id: str
    at: datetime
    from_state: str
    to_state: str
    severity: str
    value: float | None


# conversions -----------------------------------------------------------------------------------
def _epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    return dt.timestamp()


def _epoch_or_none(dt: datetime | None) -> float | None:
    return None if dt is None else _epoch(dt)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=_UTC)


def _dt_or_none(epoch: float | None) -> datetime | None:
    return None if epoch is None else _dt(epoch)


def _sample_ts(dt: datetime) -> int:
    """Sample rows are keyed by whole seconds."""
    return round(_epoch(dt))


def _pack(typecode: str, values: Iterable[Any]) -> bytes:
    arr = array(typecode, values)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def _unpack(typecode: str, blob: bytes) -> array:
    arr = array(typecode)
    arr.frombytes(blob)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MistwatchError(f"cannot store {what}: not JSON-serialisable ({exc})") from None


_JSON_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _labels_json(key: str, labels: Mapping[str, str]) -> str:
    try:
        return _JSON_ENCODE(labels if isinstance(labels, dict) else dict(labels))
    except (TypeError, ValueError) as exc:
        raise MistwatchError(f"cannot store labels of {key}: not JSON-serialisable ({exc})") from None


def _labels_digest(kind: str, labels: Mapping[str, str]) -> bytes:
    """A 64-bit fingerprint of (kind, labels), stable across processes. Joining the strings is
    several times cheaper than JSON-encoding them, which matters at 70,000 entities per run."""
    try:
        text = "\x00".join(labels) + "\x01" + "\x00".join(labels.values()) + "\x01" + kind
    except TypeError:  # a non-string label value
        text = _JSON_ENCODE(sorted((str(k), str(v)) for k, v in labels.items())) + "\x01" + kind
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _digest_code(digest: bytes | None) -> int:
    """A stored labels_digest as the int kept in the id cache; 0 for none (and for the one digest
    that reads as 0, which then only costs rewriting its labels)."""
    if not isinstance(digest, bytes) or len(digest) != 8:
        return 0
    return int.from_bytes(digest, "little", signed=True)


def _is_number(value: Any) -> bool:
    """Values that can go into history: numbers, not NaN (NaN means "no value")."""
    return value is not None and value == value


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


class Store:
    """One SQLite file (WAL). Open with ``Store.open(state_dir)``; use as a context manager.

    ``store.db`` is the sqlite3 connection, in autocommit mode: other modules (the outbox) run
    their SQL on it, inside ``store.transaction()`` when they write. ``store.path`` is the file.
    """

    path: Path
    db: sqlite3.Connection

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.db = db
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

    # opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Store:
        """Create ``state_dir`` if needed, open ``state_dir/mistwatch.db`` and apply migrations.

        ``busy_timeout`` (seconds) is how long a write waits for another process's lock."""
        state_dir = Path(state_dir)
        path = state_dir / DB_FILENAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MistwatchError(f"cannot create state directory {state_dir}: {exc.strerror or exc}"
                                 ) from None
        try:
            db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate(exc, path, "opening") from None
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
            store.migrate()
        except BaseException:
            db.close()
            raise
        return store

    def _check_is_ours(self) -> None:
        """A SQLite file with tables but no schema version belongs to something else."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = self.db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
            if tables:
                raise MistwatchError(f"{self.path} is not a mistwatch state database")

    def migrate(self) -> list[int]:
        """Apply every migration in ``MIGRATIONS`` not applied yet, in version order, each in its own
        transaction. Called by ``open``; call again after appending migrations at run time.
        Returns the versions applied."""
        for name in MIGRATION_MODULES:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:  # the module exists but something it imports is missing
                    raise
        versions = [v for v, _ in MIGRATIONS]
        if len(set(versions)) != len(versions):
            dupes = sorted({v for v in versions if versions.count(v) > 1})
            raise MistwatchError(f"internal error: duplicate schema migration versions {dupes}")
        known = dict(MIGRATIONS)
        applied_now: list[int] = []
        with self._errors("migrating"):
            self._refuse_newer(known)
            # Only pending versions take the write lock, so opening an up-to-date database never
            # waits for a busy writer.
            for version in sorted(known.keys() - self._applied_versions()):
                with self.transaction() as db:
                    # Re-read inside the write lock: another process may have just migrated.
                    if version in self._applied_versions():
                        continue
                    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                               "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
                    for statement in _split_sql(known[version]):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                               (version, datetime.now(_UTC).timestamp()))
                    top = db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
                    db.execute(f"PRAGMA user_version = {int(top)}")
                    applied_now.append(version)
        return applied_now

    def _applied_versions(self) -> set[int]:
        if self.db.execute("PRAGMA user_version").fetchone()[0] == 0:
            return set()
        has_table = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
        if not has_table:
            raise MistwatchError(f"{self.path} is not a mistwatch state database")
        return {row[0] for row in self.db.execute("SELECT version FROM schema_migrations")}

    def _refuse_newer(self, known: dict[int, str]) -> None:
        user_version = self.db.execute("PRAGMA user_version").fetchone()[0]
        unknown = sorted(self._applied_versions() - known.keys())
        if unknown or user_version > max(known, default=0):
            newest = max([user_version, *unknown])
            raise MistwatchError(
                f"{self.path}: state was written by a newer mistwatch (schema version {newest}, this "
                f"version knows up to {max(known, default=0)}); upgrade mistwatch or use another state_dir")

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version``: the highest migration applied."""
        with self._errors("reading the schema version"):
            return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent). Using the store afterwards raises MistwatchError."""
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
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, doing, self._busy_timeout) from None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield the sqlite3 connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error).

        Nested use becomes a SAVEPOINT, so a caller can wrap several store calls (say
        ``save_alerts`` and an outbox write) in one transaction. sqlite3 errors come out as
        ``MistwatchError``; any other exception is re-raised unchanged after the rollback."""
        if self._closed:
            raise MistwatchError(f"{self.path}: the state database is closed")
        db = self.db
        self._depth += 1
        savepoint = f"mw_{self._depth}"
        try:
            with self._errors("starting a transaction"):
                db.execute("BEGIN IMMEDIATE" if self._depth == 1 else f"SAVEPOINT {savepoint}")
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
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                else:
                    db.execute(f"ROLLBACK TO {savepoint}")
                    db.execute(f"RELEASE {savepoint}")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting
            raise
        finally:
            self._depth -= 1

    # runs ------------------------------------------------------------------------------------
    def start_run(self, started_at: datetime, mode: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO runs (started_at, mode, status) VALUES (?, ?, 'running')",
                             (_epoch(started_at), mode))
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, *, finished_at: datetime, status: str, api_calls: int = 0,
                   errors: Iterable[str] = (), summary: dict[str, Any] | None = None) -> None:
        errors_json = _json([str(e) for e in errors], f"errors of run {run_id}")
        summary_json = _json(summary or {}, f"summary of run {run_id}")
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, api_calls = ?, errors = ?, summary = ? "
                "WHERE id = ?", (_epoch(finished_at), status, api_calls, errors_json, summary_json, run_id))
            if cur.rowcount == 0:
                raise MistwatchError(f"{self.path}: no run {run_id} to finish")

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
                self.db.execute("INSERT OR IGNORE INTO metrics (name) VALUES (?)", (name,))
            row = self.db.execute("SELECT id FROM metrics WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            metric_id = self._metric_ids[name] = row[0]
        return metric_id

    # snapshots and history -------------------------------------------------------------------
    def write_snapshot(self, run_id: int, snapshot: Snapshot) -> None:
        """In one transaction: upsert entities (labels, last_seen = snapshot time) and write every
        metric of every entity as history at ``snapshot.taken_at``. Unknown metrics are not written.

        Samples are keyed by whole seconds. If the same entity appears twice in the snapshot (two
        collectors), labels are merged and a later metric value wins. NaN and None values are not
        written (no value). A second write at the same second and metric merges into that row.
        ``last_seen`` never moves backwards (replaying an older snapshot keeps the newer time)."""
        seen = _epoch(snapshot.taken_at)
        ts = _sample_ts(snapshot.taken_at)

        # Merge duplicate keys first so each entity is upserted once.
        kinds: dict[str, str] = {}
        labels: dict[str, Mapping[str, str]] = {}
        for entity in snapshot.entities:
            if entity.key in labels:
                labels[entity.key] = {**labels[entity.key], **entity.labels}
            else:
                kinds[entity.key] = entity.kind
                labels[entity.key] = entity.labels

        with self._errors("reading entities"):
            ids = self._load_entity_ids()
        digests = self._digests
        unchanged: list[int] = []
        new_digests: dict[str, bytes] = {}
        for key, lab in labels.items():
            digest = _labels_digest(kinds[key], lab)
            entity_id = ids.get(key)
            if entity_id is not None and digests[entity_id] == _digest_code(digest) != 0:
                unchanged.append(entity_id)
            else:
                new_digests[key] = digest
        # A generator, so the JSON of 70,000 entities (first run) is never all in memory at once.
        changed = ((key, kinds[key], _labels_json(key, labels[key]), seen, seen, digest)
                   for key, digest in new_digests.items())

        with self.transaction() as db:
            db.executemany(_ENTITY_UPSERT, changed)
            self._touch_entities(unchanged, seen)
            self._refresh_entity_ids()
            groups = self._group_values(snapshot, ids, unique=len(labels) == len(snapshot.entities))
            self._write_samples(run_id, ts, groups)
            for key, digest in new_digests.items():
                digests[ids[key]] = _digest_code(digest)

    def _touch_entities(self, entity_ids: list[int], seen: float) -> None:
        """Set last_seen of many entities in one statement (a JSON array of ids), not one per row."""
        if not entity_ids:
            return
        entity_ids.sort()  # walks the table in rowid order
        try:
            self.db.execute("UPDATE entities SET last_seen = ? WHERE last_seen < ? AND id IN "
                            "(SELECT value FROM json_each(?))", (seen, seen, json.dumps(entity_ids)))
        except sqlite3.OperationalError as exc:
            if "json_each" not in str(exc):
                raise
            # A SQLite built without JSON functions: slower, same result.
            self.db.executemany("UPDATE entities SET last_seen = ? WHERE id = ? AND last_seen < ?",
                                [(seen, i, seen) for i in entity_ids])

    def _group_values(self, snapshot: Snapshot, ids: dict[str, int], *, unique: bool = True
                      ) -> dict[str, tuple[array, array]]:
        """{metric: (entity ids, values)} for every known, non-NaN metric of the snapshot, in entity order.

        With every entity key ``unique`` the columns are filled directly: 12 bytes a value, where a
        dict per metric costs about 50 (550,000 values at 10,000 sites). Otherwise per-metric dicts
        merge the duplicates (a later value wins) and are turned into columns at the end."""
        groups: dict[str, Any] = {}
        # is_unknown() depends only on (kind, the entity's unknown patterns, metric): calling it
        # (fnmatch) for each of ~550k values would dominate the write, so each (kind, patterns)
        # group keeps metric -> target, or None when the metric is unknown for the group.
        targets_by_group: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}
        for entity in snapshot.entities:
            group_key = (entity.kind, entity.unknown)
            targets = targets_by_group.get(group_key)
            if targets is None:
                targets = targets_by_group[group_key] = {}
            eid = ids[entity.key]
            for metric, value in entity.metrics.items():
                if value != value:  # NaN: no value
                    continue
                target = targets.get(metric)
                if target is None:
                    if metric in targets:  # unknown this cycle
                        continue
                    if snapshot.is_unknown(entity, metric):
                        targets[metric] = None
                        continue
                    target = groups.get(metric)
                    if target is None:
                        target = groups[metric] = (array("i"), array("d")) if unique else {}
                    targets[metric] = target
                if unique:
                    try:
                        target[1].append(value)
                    except TypeError:
                        self._not_a_number(metric, eid, value)
                        continue
                    target[0].append(eid)
                else:
                    target[eid] = value
        if not unique:
            groups = {metric: self._columns(metric, values.items()) for metric, values in groups.items()}
        return groups

    def _not_a_number(self, metric: str, entity_id: int, value: Any) -> None:
        """None is no value (skipped); anything else that is not a number is an error."""
        if value is not None:
            raise MistwatchError(f"metric {metric} of {self._key_or_id(entity_id)} is not "
                                 f"a number: {value!r}")

    def _columns(self, metric: str, items: Iterable[tuple[int, Any]]) -> tuple[array, array]:
        """(entity ids, values) columns of ``(entity id, value)`` pairs; None values left out."""
        ids, vals = array("i"), array("d")
        for entity_id, value in items:
            try:
                vals.append(value)
            except TypeError:
                self._not_a_number(metric, entity_id, value)
                continue
            ids.append(entity_id)
        return ids, vals

    def _write_samples(self, run_id: int | None, ts: int, groups: dict[str, tuple[array, array]]) -> None:
        """One row per metric at ``ts`` from (entity ids, values) columns; merges into an existing row
        for the same (metric, ts)."""
        db = self.db
        for metric, (ids, vals) in groups.items():
            if not ids:
                continue
            metric_id = self._metric_id(metric, create=True)
            cur = db.execute(
                "INSERT INTO samples (run_id, ts, metric_id, entity_ids, vals) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (metric_id, ts) DO NOTHING",
                (run_id, ts, metric_id, _pack("i", ids) if _BIG_ENDIAN else ids.tobytes(),
                 _pack("d", vals) if _BIG_ENDIAN else vals.tobytes()))
            if cur.rowcount == 0:
                row_id, ids_blob, old_blob, old_run = db.execute(
                    "SELECT id, entity_ids, vals, run_id FROM samples WHERE metric_id = ? AND ts = ?",
                    (metric_id, ts)).fetchone()
                merged = dict(zip(*self._decode(ids_blob, old_blob), strict=True))
                merged.update(zip(ids, vals, strict=True))
                db.execute("UPDATE samples SET entity_ids = ?, vals = ?, run_id = ? WHERE id = ?",
                           (_pack("i", merged.keys()), _pack("d", merged.values()),
                            old_run if old_run is not None else run_id, row_id))

    def write_metrics(self, at: datetime, metric_values: dict[str, dict[str, float]]) -> None:
        """Write derived history (e.g. health scores): {metric: {entity_key: value}} at time ``at``.

        Entities not stored yet are created, their kind taken from the key prefix (``site:...`` ->
        ``site``) and with no labels; stored ones get ``last_seen`` moved up to ``at`` if older.
        NaN and None values are not written."""
        seen = _epoch(at)
        keys = {key for values in metric_values.values() for key in values}
        rows = []
        for key in sorted(keys):
            kind, sep, rest = key.partition(":")
            if not sep or not kind or not rest:
                raise MistwatchError(f"cannot store derived metrics for {key!r}: an entity key is "
                                     f"'<kind>:<id>' (e.g. site:<site_id>)")
            rows.append((key, kind, seen, seen))
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO entities (key, kind, labels, first_seen, last_seen) VALUES (?, ?, '{}', ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)", rows)
            ids = self._load_entity_ids()
            self._refresh_entity_ids()
            groups = {metric: self._columns(metric, ((ids[k], v) for k, v in values.items() if _is_number(v)))
                      for metric, values in metric_values.items()}
            self._write_samples(None, _sample_ts(at), groups)

    def _decode(self, ids_blob: bytes, vals_blob: bytes) -> tuple[array, array]:
        try:
            ids, vals = _unpack("i", ids_blob), _unpack("d", vals_blob)
        except (ValueError, TypeError):  # a blob of the wrong length or type
            raise MistwatchError(f"{self.path} is damaged: a history row cannot be decoded") from None
        if len(ids) != len(vals):
            raise MistwatchError(f"{self.path} is damaged: a history row holds {len(ids)} entities "
                                 f"but {len(vals)} values")
        return ids, vals

    def values_at(self, metric: str, at: datetime, *, tolerance: timedelta = timedelta(minutes=90),
                  keys: Iterable[str] | None = None) -> dict[str, float]:
        """For each entity, the sample of ``metric`` nearest to ``at`` within ``tolerance``
        (one batch query, not one per entity). Entities with no such sample are absent.

        Reads two sample rows: the nearest at or before ``at`` and the nearest after it, both within
        ``tolerance``. Each entity takes its value from the nearer row (the earlier one on a tie);
        an entity missing from that row (unknown in that cycle) takes the other row's value. An
        entity missing from both is absent, even if an older row within the tolerance has it: a
        value from further away than the two cycles around ``at`` is not "at" that time."""
        t = _epoch(at)
        tol = tolerance.total_seconds()
        with self._errors(f"reading {metric}"):
            metric_id = self._metric_id(metric, create=False)
            if metric_id is None:
                return {}
            before = self.db.execute(
                "SELECT ts, entity_ids, vals FROM samples WHERE metric_id = ? AND ts <= ? AND ts >= ? "
                "ORDER BY ts DESC LIMIT 1", (metric_id, t, t - tol)).fetchone()
            after = self.db.execute(
                "SELECT ts, entity_ids, vals FROM samples WHERE metric_id = ? AND ts > ? AND ts <= ? "
                "ORDER BY ts ASC LIMIT 1", (metric_id, t, t + tol)).fetchone()
            rows = [r for r in (before, after) if r is not None]
            rows.sort(key=lambda r: abs(r[0] - t))  # stable: the earlier row wins a tie
            merged: dict[int, float] = {}
            for _ts, ids_blob, vals_blob in reversed(rows):  # farther first, nearer overwrites
                merged.update(zip(*self._decode(ids_blob, vals_blob), strict=True))
            if keys is not None:
                wanted = self._ids_of(keys)
                merged = {i: v for i, v in merged.items() if i in wanted}
            names = self._keys_of(merged)
        return {name: value for name, value in zip(names, merged.values(), strict=True) if name is not None}

    def _window_rows(self, metric: str, start: datetime, end: datetime) -> list[tuple[int, bytes, bytes]]:
        metric_id = self._metric_id(metric, create=False)
        if metric_id is None:
            return []
        return self.db.execute(
            "SELECT ts, entity_ids, vals FROM samples WHERE metric_id = ? AND ts >= ? AND ts <= ? "
            "ORDER BY ts", (metric_id, _epoch(start), _epoch(end))).fetchall()

    def window(self, metric: str, start: datetime, end: datetime,
               keys: Iterable[str] | None = None) -> dict[str, list[tuple[datetime, float]]]:
        """Every sample of ``metric`` in [start, end], per entity, oldest first."""
        with self._errors(f"reading {metric}"):
            rows = self._window_rows(metric, start, end)
            wanted = None if keys is None else self._ids_of(keys)
            series: dict[int, list[tuple[datetime, float]]] = {}
            for ts, ids_blob, vals_blob in rows:
                when = _dt(ts)
                for entity_id, value in zip(*self._decode(ids_blob, vals_blob), strict=True):
                    if wanted is None or entity_id in wanted:
                        points = series.get(entity_id)
                        if points is None:
                            points = series[entity_id] = []
                        points.append((when, value))
            names = self._keys_of(series)
        return {name: points for name, points in zip(names, series.values(), strict=True) if name is not None}

    def window_mean(self, metric: str, start: datetime, end: datetime,
                    keys: Iterable[str] | None = None) -> dict[str, tuple[float, int]]:
        """Mean and sample count of ``metric`` per entity over [start, end]."""
        with self._errors(f"reading {metric}"):
            rows = self._window_rows(metric, start, end)
            wanted = None if keys is None else self._ids_of(keys)
            sums: dict[int, float] = {}
            counts: dict[int, int] = {}
            for _ts, ids_blob, vals_blob in rows:
                for entity_id, value in zip(*self._decode(ids_blob, vals_blob), strict=True):
                    if wanted is None or entity_id in wanted:
                        sums[entity_id] = sums.get(entity_id, 0.0) + value
                        counts[entity_id] = counts.get(entity_id, 0) + 1
            names = self._keys_of(sums)
        return {name: (sums[i] / counts[i], counts[i])
                for name, i in zip(names, sums, strict=True) if name is not None}

    def history_start(self, metric: str | None = None) -> datetime | None:
        """Time of the oldest stored sample (of ``metric``, or of anything)."""
        with self._errors("reading history"):
            if metric is None:
                row = self.db.execute("SELECT min(ts) FROM samples").fetchone()
            else:
                metric_id = self._metric_id(metric, create=False)
                if metric_id is None:
                    return None
                row = self.db.execute("SELECT min(ts) FROM samples WHERE metric_id = ?",
                                      (metric_id,)).fetchone()
        return _dt_or_none(row[0])

    def entities(self, kind: str | None = None, *, seen_before: datetime | None = None) -> list[EntityRecord]:
        """Stored entities (of ``kind``), by key. ``seen_before``: only those whose last_seen is
        earlier (absence rules ask for the few missing ones, not all 60,000 with their labels)."""
        sql = "SELECT key, kind, labels, first_seen, last_seen FROM entities WHERE 1"
        params: list[Any] = []
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if seen_before is not None:
            sql += " AND last_seen < ?"
            params.append(_epoch(seen_before))
        with self._errors("reading entities"):
            rows = self.db.execute(sql + " ORDER BY key", params).fetchall()
        return [EntityRecord(key, kind_, json.loads(labels), _dt(first), _dt(last))
                for key, kind_, labels, first, last in rows]

    # alerts -----------------------------------------------------------------------------------
    def load_alerts(self) -> dict[str, Alert]:
        """Every alert not inactive, by key."""
        with self._errors("reading alerts"):
            rows = self.db.execute(f"SELECT {', '.join(_ALERT_COLUMNS)} FROM alerts "
                                   "WHERE state != 'inactive' ORDER BY key").fetchall()
        return {row[0]: _alert_from_row(row) for row in rows}

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
              retention_days: float = 35) -> dict[str, int]:
        """Thin history: keep every run's samples for ``raw_hours``, then one run per hour until
        ``hourly_days``, then one per day until ``retention_days``, then nothing. Old runs and
        transitions go too. Returns counts of what was deleted.

        "One per hour/day" is the earliest sample row of each metric in each UTC hour/day bucket
        (epoch seconds // 3600 or // 86400), so repeated prunes keep the same rows. Entities not
        seen for ``retention_days`` are deleted. Counts: ``samples`` (total) split into
        ``samples_hourly``, ``samples_daily`` (thinned) and ``samples_expired``; ``runs``,
        ``transitions``, ``entities``. Does not VACUUM: freed pages are reused."""
        t = _epoch(now)
        raw_cut = t - raw_hours * _HOUR
        hourly_cut = min(t - hourly_days * _DAY, raw_cut)
        retention_cut = min(t - retention_days * _DAY, hourly_cut)
        thin = ("DELETE FROM samples WHERE ts >= :lo AND ts < :hi AND id NOT IN ("
                " SELECT s.id FROM samples s JOIN ("
                "  SELECT metric_id, min(ts) AS ts FROM samples WHERE ts >= :lo AND ts < :hi"
                "  GROUP BY metric_id, ts / :bucket) first USING (metric_id, ts))")
        with self.transaction() as db:
            expired = db.execute("DELETE FROM samples WHERE ts < ?", (retention_cut,)).rowcount
            daily = db.execute(thin, {"lo": retention_cut, "hi": hourly_cut, "bucket": _DAY}).rowcount
            hourly = db.execute(thin, {"lo": hourly_cut, "hi": raw_cut, "bucket": _HOUR}).rowcount
            # A "running" run that old crashed long ago: it goes too.
            runs = db.execute("DELETE FROM runs WHERE started_at < ?", (retention_cut,)).rowcount
            transitions = db.execute("DELETE FROM transitions WHERE at < ?", (retention_cut,)).rowcount
            entities = db.execute("DELETE FROM entities WHERE last_seen < ?", (retention_cut,)).rowcount
        if entities:
            self._entity_ids = None  # reload lazily rather than track the deleted ids
        return {"samples": expired + daily + hourly, "samples_expired": expired, "samples_daily": daily,
                "samples_hourly": hourly, "runs": runs, "transitions": transitions, "entities": entities}


# row helpers -----------------------------------------------------------------------------------
_RUN_SELECT = "SELECT id, started_at, finished_at, mode, status, api_calls, errors, summary FROM runs"

_ENTITY_UPSERT = (
    "INSERT INTO entities (key, kind, labels, first_seen, last_seen, labels_digest) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, labels = excluded.labels, "
    "labels_digest = excluded.labels_digest, last_seen = max(last_seen, excluded.last_seen)")

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


def _translate(exc: sqlite3.Error, path: Path, doing: str,
               busy_timeout: float | None = None) -> MistwatchError:
    """One clear line for what SQLite reports; the cases a user can act on are named."""
    text = str(exc)
    low = text.lower()
    if "file is not a database" in low or "file is encrypted" in low:
        return MistwatchError(f"{path} is not a mistwatch state database")
    if "database is locked" in low or "database is busy" in low or "database table is locked" in low:
        waited = f", waited {busy_timeout:g} s" if busy_timeout is not None else ""
        return MistwatchError(f"{path} is locked by another process ({doing}{waited})")
    if "disk is full" in low or "database or disk is full" in low:
        return MistwatchError(f"{path}: disk full while {doing}")
    if "readonly" in low or "read-only" in low:
        return MistwatchError(f"{path} is read-only (cannot write while {doing})")
    if "unable to open" in low:
        return MistwatchError(f"cannot open {path}: {text}")
    if "malformed" in low or "corrupt" in low:
        return MistwatchError(f"{path} is damaged ({text}); restore it or move it away to start afresh")
    return MistwatchError(f"{path}: {text} (while {doing})")

