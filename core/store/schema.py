"""The store's schema: every table of the state database, as ordered migrations.

Versions 1..9 are the core tables (runs, entities, metric history, alert states, key-value state),
10 and up the notification tables (outbox, notification log, silences), which ``mistwatch.notify.outbox``
reads and writes. All of them live here so any command, whatever it imported, knows the whole schema
and never takes a database migrated by another command for one written by a newer mistwatch.
"""

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
#: Versions 1..9 belong to this module, 10 and up to ``mistwatch.notify.outbox``. A script runs inside
#: one transaction together with its version bump, so it must not contain BEGIN/COMMIT itself.

_SCHEMA_V10_NOTIFICATIONS = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    notifier TEXT NOT NULL,
    kind TEXT NOT NULL,
    group_key TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    next_attempt_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    permanent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS notify_log (
    group_key TEXT NOT NULL,
    notifier TEXT NOT NULL,
    last_sent_at TEXT,
    firing_hash TEXT NOT NULL DEFAULT '',
    thread_id TEXT,
    firing TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (group_key, notifier)
);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    author TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    expired_at TEXT
);
"""

# Hourly roll-ups of metric history (``mistwatch.store.rollups``), kept longer than the raw samples
# (which are thinned after two days) so seasonal baselines and trends have an hour-by-hour history.
# Column-oriented like samples: one row per (metric, UTC hour) holding the entity ids and each
# statistic as packed arrays in the same order.
_SCHEMA_V11_ROLLUPS = """
CREATE TABLE IF NOT EXISTS rollups (
    metric_id   INTEGER NOT NULL REFERENCES metrics (id),
    hour        INTEGER NOT NULL,
    entity_ids  BLOB NOT NULL,
    mins        BLOB NOT NULL,
    maxs        BLOB NOT NULL,
    means       BLOB NOT NULL,
    counts      BLOB NOT NULL,
    PRIMARY KEY (metric_id, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_hour ON rollups (hour);
"""

# Claims (who is sending a row, until when) so two processes never send the same row and a row
# claimed by a killed process is retried once the claim lapses; attempted_at (the last attempt) so
# a backward step of the wall clock makes a retry due now instead of an hour late.
_SCHEMA_V13_OUTBOX_CLAIMS = """
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_at TEXT;
ALTER TABLE outbox ADD COLUMN claim_until TEXT;
ALTER TABLE outbox ADD COLUMN attempted_at TEXT;
"""

# Attachments (the HTML report of attach_report, the digest's reports) are stored once, by the SHA-256
# of their content, and referenced from outbox payloads: a copy per outbox row grew the store by
# megabytes per notification. Rows nobody references are deleted by ``outbox.prune``.
_SCHEMA_V12_ATTACHMENTS = """
CREATE TABLE IF NOT EXISTS attachments (
    digest TEXT PRIMARY KEY,
    content BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
"""

#: Ordered schema migrations: (version, SQL script). Append only; never edit a released one.
#: A script runs inside one transaction together with its version bump, so it must not contain
#: BEGIN/COMMIT itself.
MIGRATIONS: list[tuple[int, str]] = [(1, _SCHEMA_V1), (10, _SCHEMA_V10_NOTIFICATIONS), (11, _SCHEMA_V11_ROLLUPS),
                                     (12, _SCHEMA_V12_ATTACHMENTS), (13, _SCHEMA_V13_OUTBOX_CLAIMS)]
