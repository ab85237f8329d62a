"""The SQLite store under ``state_dir``: metric history, alert states, runs, key-value state.

CONTRACT STUB: the signatures and docstrings below are the agreed interface; bodies are being written.
Notification tables (outbox, notification log, silences) are added by ``mistwatch.outbox`` through
``MIGRATIONS`` below, on the same connection.

Storage layout of metric history: column-oriented, one row per (run, metric) holding two blobs, the
entity ids and the values (``array`` module, little-endian), so a run of 10,000 sites and 60,000
devices is a few dozen rows, and "metric M for every entity near time T" is one indexed lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mistwatch.model import Alert, Snapshot

DB_FILENAME = "mistwatch.db"

#: Ordered schema migrations: (version, SQL script). Append only; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = []


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


class Store:
    """One SQLite file (WAL). Open with ``Store.open(state_dir)``; use as a context manager."""

    path: Path

    @classmethod
    def open(cls, state_dir: str | Path) -> Store:
        """Create ``state_dir`` if needed, open ``state_dir/mistwatch.db`` and apply migrations."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield the sqlite3 connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        raise NotImplementedError
        yield

    # runs ------------------------------------------------------------------------------------
    def start_run(self, started_at: datetime, mode: str) -> int:
        raise NotImplementedError

    def finish_run(self, run_id: int, *, finished_at: datetime, status: str, api_calls: int = 0,
                   errors: Iterable[str] = (), summary: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """Newest first."""
        raise NotImplementedError

    def last_successful_run(self) -> RunRecord | None:
        raise NotImplementedError

    # snapshots and history -------------------------------------------------------------------
    def write_snapshot(self, run_id: int, snapshot: Snapshot) -> None:
        """In one transaction: upsert entities (labels, last_seen = snapshot time) and write every
        metric of every entity as history at ``snapshot.taken_at``. Unknown metrics are not written."""
        raise NotImplementedError

    def write_metrics(self, at: datetime, metric_values: dict[str, dict[str, float]]) -> None:
        """Write derived history (e.g. health scores): {metric: {entity_key: value}} at time ``at``."""
        raise NotImplementedError

    def values_at(self, metric: str, at: datetime, *, tolerance: timedelta = timedelta(minutes=90),
                  keys: Iterable[str] | None = None) -> dict[str, float]:
        """For each entity, the sample of ``metric`` nearest to ``at`` within ``tolerance``
        (one batch query, not one per entity). Entities with no such sample are absent."""
        raise NotImplementedError

    def window(self, metric: str, start: datetime, end: datetime,
               keys: Iterable[str] | None = None) -> dict[str, list[tuple[datetime, float]]]:
        """Every sample of ``metric`` in [start, end], per entity, oldest first."""
        raise NotImplementedError

    def window_mean(self, metric: str, start: datetime, end: datetime,
                    keys: Iterable[str] | None = None) -> dict[str, tuple[float, int]]:
        """Mean and sample count of ``metric`` per entity over [start, end]."""
        raise NotImplementedError

    def history_start(self, metric: str | None = None) -> datetime | None:
        """Time of the oldest stored sample (of ``metric``, or of anything)."""
        raise NotImplementedError

    def entities(self, kind: str | None = None) -> list[EntityRecord]:
        raise NotImplementedError

    # alerts -----------------------------------------------------------------------------------
    def load_alerts(self) -> dict[str, Alert]:
        """Every alert not inactive, by key."""
        raise NotImplementedError

    def save_alerts(self, alerts: Iterable[Alert], transitions: Iterable[Transition] = ()) -> None:
        """Upsert alert states and append transitions, in one transaction. An alert saved with
        state ``inactive`` is deleted."""
        raise NotImplementedError

    def transitions(self, alert_key: str | None = None, since: datetime | None = None) -> list[Transition]:
        raise NotImplementedError

    # small persistent values (collector cursors, digest dates) ----------------------------------
    def kv_get(self, key: str, default: Any = None) -> Any:
        raise NotImplementedError

    def kv_set(self, key: str, value: Any) -> None:
        """``value`` must be JSON-serialisable."""
        raise NotImplementedError

    # retention --------------------------------------------------------------------------------
    def prune(self, now: datetime, *, raw_hours: float = 48, hourly_days: float = 8,
              retention_days: float = 35) -> dict[str, int]:
        """Thin history: keep every run's samples for ``raw_hours``, then one run per hour until
        ``hourly_days``, then one per day until ``retention_days``, then nothing. Old runs and
        transitions go too. Returns counts of what was deleted."""
        raise NotImplementedError
