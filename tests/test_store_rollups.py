"""Hourly roll-ups of metric history (schema version 11) and the state-change count, on a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mistwatch.model import Entity, Snapshot
from mistwatch.rules.evaluator import MemoryHistory
from mistwatch.store.database import Store

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def snapshot(at: datetime, **per_site: float | None) -> Snapshot:
    """site.clients of sites s<n> (None: the site is absent from this snapshot)."""
    return Snapshot(taken_at=at, entities=[Entity(f"site:{name}", "site", {}, {"site.clients": v})
                                           for name, v in per_site.items() if v is not None])


def write(store: Store, snap: Snapshot) -> None:
    store.write_snapshot(store.start_run(snap.taken_at, "monitor"), snap)


def table(rollups) -> dict[tuple[str, int], tuple[float, float, float, int]]:
    """{(key, hours after T0): (min, max, mean, count)}."""
    out = {}
    for i, hour in enumerate(rollups.hours):
        for row, lo, hi, mean, count in zip(rollups.rows[i], rollups.mins[i], rollups.maxs[i],
                                            rollups.means[i], rollups.counts[i], strict=True):
            out[(rollups.keys[row], round((hour - T0.timestamp()) / 3600))] = (lo, hi, round(mean, 6), count)
    return out


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "state") as s:
        yield s


def test_opening_applies_schema_version_11_with_the_rollups_table(store):
    assert store.schema_version >= 11
    assert store.db.execute("SELECT count(*) FROM rollups").fetchone()[0] == 0


def test_roll_up_keeps_min_max_mean_and_count_of_each_complete_hour(store):
    for minute, (a, b) in zip((0, 20, 40), ((10, 1), (20, 2), (60, 3)), strict=True):
        write(store, snapshot(T0 + timedelta(minutes=minute), s1=a, s2=b))
    write(store, snapshot(T0 + HOUR, s1=5, s2=5))
    assert store.roll_up(T0 + HOUR + timedelta(minutes=10)) == 1
    got = table(store.hourly("site.clients", T0 - HOUR, T0 + 2 * HOUR))
    # the hour still running (T0 + 1h) is not rolled up: it would be counted half
    assert got == {("site:s1", 0): (10, 60, 30, 3), ("site:s2", 0): (1, 3, 2, 3)}


def test_roll_up_each_cycle_adds_only_the_hours_completed_since(store):
    write(store, snapshot(T0, s1=1))
    store.roll_up(T0 + HOUR)
    write(store, snapshot(T0 + HOUR, s1=2))
    write(store, snapshot(T0 + 2 * HOUR, s1=3))
    assert store.roll_up(T0 + 2 * HOUR + timedelta(minutes=5)) == 1
    assert store.roll_up(T0 + 2 * HOUR + timedelta(minutes=10)) == 0
    got = table(store.hourly("site.clients", T0, T0 + 3 * HOUR))
    assert got == {("site:s1", 0): (1, 1, 1, 1), ("site:s1", 1): (2, 2, 2, 1)}


def test_an_entity_missing_from_some_samples_counts_only_its_own(store):
    write(store, snapshot(T0, s1=4, s2=10))
    write(store, snapshot(T0 + timedelta(minutes=30), s1=None, s2=20))
    store.roll_up(T0 + HOUR)
    got = table(store.hourly("site.clients", T0, T0 + HOUR))
    assert got == {("site:s1", 0): (4, 4, 4, 1), ("site:s2", 0): (10, 20, 15, 2)}


def test_the_store_and_the_in_memory_history_roll_up_alike(store):
    memory = MemoryHistory()
    for step in range(30):
        at = T0 + timedelta(minutes=17 * step)
        snap = snapshot(at, s1=step % 7, s2=None if step % 5 == 0 else step * 1.5, s3=3)
        write(store, snap)
        memory.add_snapshot(snap)
    end = T0 + timedelta(hours=8)
    store.roll_up(end)
    assert table(store.hourly("site.clients", T0, end)) == table(memory.hourly("site.clients", T0, end))


def test_hourly_reads_the_hours_starting_in_the_window_only(store):
    for h in range(6):
        write(store, snapshot(T0 + h * HOUR, s1=h))
    store.roll_up(T0 + 6 * HOUR)
    rollups = store.hourly("site.clients", T0 + 2 * HOUR, T0 + 4 * HOUR)
    assert [round((h - T0.timestamp()) / 3600) for h in rollups.hours] == [2, 3]
    assert store.hourly("no.such.metric", T0, T0 + 6 * HOUR).hours == []


def test_hourly_reads_only_the_columns_asked_for(store):
    for minute, value in ((0, 10), (30, 30)):
        write(store, snapshot(T0 + timedelta(minutes=minute), s1=value))
    store.roll_up(T0 + HOUR)
    rollups = store.hourly("site.clients", T0, T0 + HOUR, stats=("means",))
    assert [list(column) for column in rollups.means] == [[20.0]]
    assert rollups.mins == rollups.maxs == rollups.counts == []


def test_memory_history_fills_the_same_columns_as_the_store(store):
    memory = MemoryHistory()
    for minute, value in ((0, 10), (30, 30)):
        write(store, snapshot(T0 + timedelta(minutes=minute), s1=value))
        memory.add_snapshot(snapshot(T0 + timedelta(minutes=minute), s1=value))
    store.roll_up(T0 + HOUR)
    for source in (store, memory):
        rollups = source.hourly("site.clients", T0, T0 + HOUR, stats=("maxs", "counts"))
        assert ([list(c) for c in rollups.maxs], [list(c) for c in rollups.counts]) == ([[30.0]], [[2]])
        assert rollups.mins == rollups.means == []


@pytest.mark.parametrize("source", ["store", "memory"])
def test_hourly_refuses_a_column_it_does_not_have(store, source):
    history = store if source == "store" else MemoryHistory()
    with pytest.raises(ValueError, match="unknown roll-up columns"):
        history.hourly("site.clients", T0, T0 + HOUR, stats=("medians",))


def test_roll_ups_outlive_the_thinning_of_raw_samples_and_expire_after_rollup_days(store):
    for h in range(0, 50 * 24, 6):
        write(store, snapshot(T0 + h * HOUR, s1=h))
    now = T0 + 50 * 24 * HOUR
    store.roll_up(now)
    counts = store.prune(now, raw_hours=48, hourly_days=8, retention_days=35, rollup_days=42)
    hours = store.hourly("site.clients", T0, now).hours
    assert counts["rollups"] == 8 * 4  # the 8 days before the 42
    assert min(hours) == (now - timedelta(days=42)).timestamp()
    assert len(hours) == 42 * 4  # every 6 h for 42 days, though raw samples are daily after 8 days


def test_state_changes_count_value_changes_between_consecutive_samples(store):
    for step, (a, b) in enumerate([(1, 1), (0, 1), (1, 1), (None, 1), (1, 1), (0, 1)]):
        write(store, snapshot(T0 + timedelta(minutes=5 * step), s1=a, s2=b))
    # s1: 1 0 1 _ 1 0 -> three changes (the gap is not one); s2 never changes
    assert store.state_changes("site.clients", T0, T0 + HOUR) == {"site:s1": 3}
    assert store.state_changes("site.clients", T0 + timedelta(minutes=10), T0 + HOUR) == {"site:s1": 1}


def test_each_cycle_rolls_up_the_hours_completed_since_the_last(tmp_path, simulator):
    """Through the engine: `mistwatch run` at 09:00 and 10:05 leaves the 09:00 hour rolled up."""
    import yaml

    from mistwatch.engine import close_app, open_app, run_cycle

    config = {"mist": {"base_url": simulator.url, "token": simulator.token, "org_id": simulator.org.org_id},
              "state_dir": str(tmp_path / "var"), "reports": {"dir": str(tmp_path / "reports")},
              "rules": [str(Path(__file__).resolve().parents[1] / "rules")], "notifiers": []}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    app = open_app(tmp_path / "config.yaml")
    try:
        for when in (T0 - 3 * HOUR, T0 - 2 * HOUR + timedelta(minutes=5)):
            simulator.org.now = when
            assert run_cycle(app, mode="monitor", now=when).status == "ok"
        rollups = app.store.hourly("site.clients", T0 - 4 * HOUR, T0)
    finally:
        close_app(app)
    assert [datetime.fromtimestamp(h, timezone.utc) for h in rollups.hours] == [T0 - 3 * HOUR]
    assert len(rollups.keys) == len(simulator.org.site_ids())
