"""Hourly roll-ups of metric history: min, max, mean and sample count per (metric, entity, UTC hour).

Raw samples are thinned after ``raw_hours`` (two days by default), which leaves too little for a
seasonal baseline ("a Tuesday at 10:00") or a two-week trend. So every cycle rolls up the complete
hours it has not rolled up yet (``roll_up``), from the raw samples of those hours, into the
``rollups`` table (schema version 11), kept for ``rollup_days`` (42 by default: five earlier weeks of
every weekday and hour, plus margin). Only complete hours are rolled up, so the current hour of a
running cycle is never half-counted; a sample written later for an hour already rolled up (replaying
old snapshots) is not added to it.

Readers: ``hourly`` (one batched read of a metric's roll-ups for every entity over a window, for
anomaly and forecast rules) and ``state_changes`` (how often each entity's value changed between
consecutive raw samples, for flapping rules).
"""

from __future__ import annotations

from array import array
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from mistwatch.errors import MistwatchError
from mistwatch.store.records import (
    _BIG_ENDIAN,
    _HOUR,
    HOURLY_STATS,
    HourlyRollups,
    _epoch,
    _pack,
    _unpack,
    hourly_columns,
)

#: Roll-ups older than this many days are pruned (``history.rollup_days`` in the config).
DEFAULT_ROLLUP_DAYS = 42.0


def _blob(typecode: str, values: array) -> bytes:
    return _pack(typecode, values) if _BIG_ENDIAN else values.tobytes()


def _aggregate(rows: list[tuple[bytes, bytes]], decode: Any) -> tuple[array, array, array, array, array]:
    """(ids, mins, maxs, means, counts) of the sample rows of one metric in one hour."""
    first_ids = rows[0][0]
    if all(ids == first_ids for ids, _ in rows):
        # the usual case: the same entities every cycle, so the columns line up position by position
        ids = decode(first_ids, rows[0][1])[0]
        columns = [decode(ids_blob, vals)[1] for ids_blob, vals in rows]
        n = len(columns)
        if n == 1:
            only = columns[0]
            return ids, only, only, only, array("i", [1]) * len(ids)
        return (ids, array("d", map(min, *columns)), array("d", map(max, *columns)),
                array("d", (s / n for s in map(sum, zip(*columns, strict=True)))), array("i", [n]) * len(ids))
    stats: dict[int, list[float]] = {}
    for ids_blob, vals in rows:
        for entity_id, value in zip(*decode(ids_blob, vals), strict=True):
            s = stats.get(entity_id)
            if s is None:
                stats[entity_id] = [value, value, value, 1]
            else:
                s[0] = min(s[0], value)
                s[1] = max(s[1], value)
                s[2] += value
                s[3] += 1
    order = sorted(stats)
    return (array("i", order), array("d", (stats[i][0] for i in order)),
            array("d", (stats[i][1] for i in order)), array("d", (stats[i][2] / stats[i][3] for i in order)),
            array("i", (int(stats[i][3]) for i in order)))


class RollupMixin:
    """The roll-up half of :class:`mistwatch.store.Store` (it supplies ``db``, ``transaction``,
    ``_errors``, ``_decode``, ``_metric_id`` and ``_keys_of``)."""

    db: Any
    transaction: Any
    _errors: Any
    _decode: Any
    _metric_id: Any
    _keys_of: Any
    where: str

    def roll_up(self, now: datetime) -> int:
        """Roll up every complete UTC hour before the hour of ``now`` that has raw samples and is newer
        than the last hour rolled up. Returns the number of hours written."""
        current = int(_epoch(now)) // _HOUR * _HOUR
        with self._errors("rolling up history"):
            last = self.db.execute("SELECT max(hour) FROM rollups").fetchone()[0]
            start = 0 if last is None else int(last) + _HOUR
            hours = [row[0] * _HOUR for row in self.db.execute(
                "SELECT DISTINCT ts / ? FROM samples WHERE ts >= ? AND ts < ? ORDER BY 1",
                (_HOUR, start, current))]
        for hour in hours:
            # metric by metric: an hour of samples at 10,000 sites is ~60 MB of blobs (four cycles),
            # and all of it at once, with the columns decoded from it, was a 100 MB peak once an hour
            with self.transaction() as db:
                metric_ids = [row[0] for row in db.execute(
                    "SELECT DISTINCT metric_id FROM samples WHERE ts >= ? AND ts < ?", (hour, hour + _HOUR))]
                for metric_id in metric_ids:
                    rows = db.execute("SELECT entity_ids, vals FROM samples WHERE metric_id = ? AND ts >= ? "
                                      "AND ts < ? ORDER BY ts", (metric_id, hour, hour + _HOUR)).fetchall()
                    ids, mins, maxs, means, counts = _aggregate(rows, self._decode)
                    del rows
                    db.execute("INSERT INTO rollups (metric_id, hour, entity_ids, mins, maxs, means, counts) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (metric_id, hour) DO UPDATE SET "
                               "entity_ids = excluded.entity_ids, mins = excluded.mins, maxs = excluded.maxs, "
                               "means = excluded.means, counts = excluded.counts",
                               (metric_id, hour, _blob("i", ids), _blob("d", mins), _blob("d", maxs),
                                _blob("d", means), _blob("i", counts)))
        return len(hours)

    def hourly(self, metric: str, start: datetime, end: datetime,
               stats: Collection[str] = HOURLY_STATS) -> HourlyRollups:
        """The roll-ups of ``metric`` for every entity, hours starting in [start, end), oldest first;
        only the columns named in ``stats`` are read (the others stay empty)."""
        wanted = hourly_columns(stats)
        with self._errors(f"reading roll-ups of {metric}"):
            metric_id = self._metric_id(metric, create=False)
            if metric_id is None:
                return HourlyRollups(metric, [])
            # the table's columns are named as HourlyRollups' (names from HOURLY_STATS, never the caller's)
            rows = self.db.execute(
                f"SELECT hour, entity_ids{''.join(', ' + name for name in wanted)} FROM rollups "
                "WHERE metric_id = ? AND hour >= ? AND hour < ? ORDER BY hour", (metric_id, _epoch(start), _epoch(end)))
            position: dict[int, int] = {}
            result = HourlyRollups(metric, [])
            targets = [getattr(result, name) for name in wanted]
            previous_blob, previous_rows = b"", array("i")
            # row by row from the cursor, not fetchall(): at 10,000 sites a week of hours is tens of
            # MB of blobs, which would otherwise be held alongside the arrays decoded from them
            for hour, ids_blob, *blobs in rows:
                if ids_blob != previous_blob:  # most hours hold the same entities as the one before
                    ids = self._unpack_rollup(metric, "i", ids_blob)
                    for entity_id in ids:
                        if entity_id not in position:
                            position[entity_id] = len(position)
                    previous_rows = array("i", map(position.__getitem__, ids))
                    previous_blob = ids_blob
                result.hours.append(hour)
                result.rows.append(previous_rows)
                for name, target, blob in zip(wanted, targets, blobs, strict=True):
                    column = self._unpack_rollup(metric, "i" if name == "counts" else "d", blob)
                    if len(column) != len(previous_rows):
                        raise MistwatchError(f"{self.where} is damaged: an hourly roll-up of {metric} holds "
                                             f"{len(previous_rows)} entities but {len(column)} values")
                    target.append(column)
        names = self._keys_of(position)
        result.keys.extend(name if name is not None else f"#{i}" for name, i in zip(names, position, strict=True))
        return result

    def _unpack_rollup(self, metric: str, typecode: str, blob: bytes) -> array:
        try:
            return _unpack(typecode, blob)
        except (ValueError, TypeError):  # a blob of the wrong length or type
            raise MistwatchError(f"{self.where} is damaged: an hourly roll-up of {metric} cannot be decoded") from None

    def state_changes(self, metric: str, start: datetime, end: datetime) -> dict[str, int]:
        """How many times each entity's ``metric`` changed value between consecutive raw samples in
        [start, end] (entities without a change are absent). A gap (an entity missing from some
        samples) is not a change."""
        with self._errors(f"reading {metric}"):
            metric_id = self._metric_id(metric, create=False)
            if metric_id is None:
                return {}
            rows = self.db.execute(
                "SELECT entity_ids, vals FROM samples WHERE metric_id = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                (metric_id, _epoch(start), _epoch(end))).fetchall()
        last: dict[int, float] = {}
        changes: dict[int, int] = {}
        for ids_blob, vals_blob in rows:
            for entity_id, value in zip(*self._decode(ids_blob, vals_blob), strict=True):
                before = last.get(entity_id)
                if before is not None and before != value:
                    changes[entity_id] = changes.get(entity_id, 0) + 1
                last[entity_id] = value
        names = self._keys_of(changes)
        return {name: count for name, count in zip(names, changes.values(), strict=True) if name is not None}

    def metric_names(self) -> list[str]:
        """Every metric the store has history of, by name."""
        with self._errors("reading metric names"):
            return [row[0] for row in self.db.execute("SELECT name FROM metrics ORDER BY name")]

    def sample_times(self, start: datetime, end: datetime) -> list[datetime]:
        """The distinct times of stored samples in [start, end], oldest first (the cycles that ran)."""
        with self._errors("reading history"):
            rows = self.db.execute("SELECT DISTINCT ts FROM samples WHERE ts >= ? AND ts <= ? ORDER BY ts",
                                   (_epoch(start), _epoch(end))).fetchall()
        return [datetime.fromtimestamp(row[0], tz=timezone.utc) for row in rows]
