"""Metric history: snapshots written column-oriented (one row per timestamp and metric holding the
entity ids and values as two packed arrays), read back per metric near a time or over a window."""


from __future__ import annotations

import json
import sqlite3
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from mistwatch.errors import MistwatchError
from mistwatch.model import Snapshot
from mistwatch.store.records import (
    _BIG_ENDIAN,
    EntityRecord,
    _digest_code,
    _dt,
    _dt_or_none,
    _epoch,
    _is_number,
    _labels_digest,
    _labels_json,
    _pack,
    _sample_ts,
    _unpack,
)

#: last_seen never moves backwards (portable: SQLite's two-argument max() is GREATEST in PostgreSQL).
_LATER_SEEN = ("CASE WHEN excluded.last_seen > entities.last_seen THEN excluded.last_seen "
               "ELSE entities.last_seen END")

_ENTITY_UPSERT = (
    "INSERT INTO entities (key, kind, labels, first_seen, last_seen, labels_digest) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, labels = excluded.labels, "
    "labels_digest = excluded.labels_digest, last_seen = " + _LATER_SEEN)


class HistoryMixin:
    """The history half of :class:`mistwatch.store.Store` (it supplies ``db``, the id caches and
    ``transaction``)."""

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
        if self.dialect.shared and any("\x00" in e.key for e in snapshot.entities):
            # PostgreSQL text holds no NUL: the key is stored with U+FFFD (dialect._text_safe), so the
            # id cache must know it by that key too. Only hostile data gets here.
            snapshot = replace(snapshot, entities=[
                replace(e, key=e.key.replace("\x00", "\ufffd")) if "\x00" in e.key else e for e in snapshot.entities])

        with self._errors("reading entities"):
            ids = self._load_entity_ids()
        digests = self._digests
        found = self._split_entities(((e.key, e.kind, e.labels) for e in snapshot.entities), ids, digests)
        unique = found is not None
        if found is None:  # a key twice (two collectors): labels merged (a later value wins), kind the first's
            merged: dict[str, tuple[str, Mapping[str, str]]] = {}
            for entity in snapshot.entities:
                before = merged.get(entity.key)
                merged[entity.key] = ((entity.kind, entity.labels) if before is None
                                      else (before[0], {**before[1], **entity.labels}))
            found = self._split_entities(((key, kind, lab) for key, (kind, lab) in merged.items()), ids, digests)
            assert found is not None  # every key once now
        unchanged, to_write = found
        new_digests = {key: _labels_digest(kind, lab) for key, (kind, lab) in to_write.items()}
        # A generator, so the JSON of 70,000 entities (first run) is never all in memory at once.
        changed = ((key, to_write[key][0], _labels_json(key, to_write[key][1]), seen, seen, digest)
                   for key, digest in new_digests.items())

        with self.transaction() as db:
            db.executemany(_ENTITY_UPSERT, changed)
            self._touch_entities(unchanged, seen)
            self._refresh_entity_ids()
            groups = self._group_values(snapshot, ids, unique=unique)
            self._write_samples(run_id, ts, groups)
            for key, digest in new_digests.items():
                digests[ids[key]] = _digest_code(digest)

    @staticmethod
    def _split_entities(entities: Iterable[tuple[str, str, Mapping[str, str]]], ids: Mapping[str, int],
                        digests: array) -> tuple[array, dict[str, tuple[str, Mapping[str, str]]]] | None:
        """For ``(key, kind, labels)`` items: the ids of the entities the store knows with the same
        labels, and ``{key: (kind, labels)}`` of the others; None when a key comes twice. Known
        entities are checked off by id, a byte each: at 10,000 sites a dict or set of every key
        would be ~5 MB more at the cycle's peak."""
        checked = bytearray(len(digests))
        unchanged = array("q")
        to_write: dict[str, tuple[str, Mapping[str, str]]] = {}
        for key, kind, labels in entities:
            entity_id = ids.get(key)
            if entity_id is None:
                if key in to_write:
                    return None
                to_write[key] = (kind, labels)
                continue
            if checked[entity_id]:
                return None
            checked[entity_id] = 1
            known = digests[entity_id]
            if known != 0 and known == _digest_code(_labels_digest(kind, labels)):
                unchanged.append(entity_id)
            else:
                to_write[key] = (kind, labels)
        return unchanged, to_write

    def _touch_entities(self, entity_ids: array, seen: float) -> None:
        """Set last_seen of many entities in one statement (a JSON array of ids), not one per row."""
        if not entity_ids:
            return
        entity_ids = sorted(entity_ids)  # walks the table in rowid order
        in_ids, ids_param = self.dialect.id_in("id", entity_ids)
        try:
            self.db.execute(f"UPDATE entities SET last_seen = ? WHERE last_seen < ? AND {in_ids}",
                            (seen, seen, ids_param))
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
        if self.dialect.shared:  # as in write_snapshot: a NUL in a key is stored as U+FFFD
            metric_values = {metric: {k.replace("\x00", "\ufffd"): v for k, v in values.items()}
                             for metric, values in metric_values.items()}
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
                "ON CONFLICT (key) DO UPDATE SET last_seen = " + _LATER_SEEN, rows)
            ids = self._load_entity_ids()
            self._refresh_entity_ids()
            groups = {metric: self._columns(metric, ((ids[k], v) for k, v in values.items() if _is_number(v)))
                      for metric, values in metric_values.items()}
            self._write_samples(None, _sample_ts(at), groups)

    def _decode(self, ids_blob: bytes, vals_blob: bytes) -> tuple[array, array]:
        try:
            ids, vals = _unpack("i", ids_blob), _unpack("d", vals_blob)
        except (ValueError, TypeError):  # a blob of the wrong length or type
            raise MistwatchError(f"{self.where} is damaged: a history row cannot be decoded") from None
        if len(ids) != len(vals):
            raise MistwatchError(f"{self.where} is damaged: a history row holds {len(ids)} entities "
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
        sql = "SELECT key, kind, labels, first_seen, last_seen FROM entities WHERE 1 = 1"
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

