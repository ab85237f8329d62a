"""The SQLite store: schema and migrations, history, alerts, key-value state, retention, failures."""

from __future__ import annotations

import math
import random
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from mistwatch.errors import MistwatchError
from mistwatch.model import Alert, CollectorError, Entity, Snapshot
from mistwatch.store import database as store_module
from mistwatch.store.database import DB_FILENAME, Store
from mistwatch.store.records import EntityRecord, Transition

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def site(n: int, **metrics: float) -> Entity:
    return Entity(f"site:s{n}", "site", {"site_id": f"s{n}", "site_name": f"Site {n}"}, metrics)


def device(n: int, unknown: frozenset[str] = frozenset(), **metrics: float) -> Entity:
    return Entity(f"device:d{n}", "device", {"device_id": f"d{n}", "site_id": "s1"}, metrics, unknown)


def write(store: Store, at: datetime, *entities: Entity, errors: list[CollectorError] | None = None) -> int:
    run_id = store.start_run(at, "monitor")
    store.write_snapshot(run_id, Snapshot(taken_at=at, entities=list(entities), errors=errors or []))
    return run_id


def write_clients(store: Store, at: datetime, **per_site: float) -> None:
    """site.clients for sites named s<n>, e.g. write_clients(store, t, s1=5, s2=7)."""
    write(store, at, *(Entity(f"site:{name}", "site", {}, {"site.clients": v}) for name, v in per_site.items()))


@pytest.fixture
def store(store_target):
    """On SQLite and on PostgreSQL (``store_target`` is parametrized): the same behaviour on both."""
    with Store.open(store_target) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path):
    """For what only SQLite has (pragmas, page limits)."""
    with Store.open(tmp_path / "state") as s:
        yield s


# schema ------------------------------------------------------------------------------------------
def test_open_creates_the_state_dir_and_applies_every_migration(tmp_path):
    with Store.open(tmp_path / "new" / "state") as s:
        assert s.path == tmp_path / "new" / "state" / DB_FILENAME
        assert s.schema_version == max(v for v, _ in store_module.MIGRATIONS)
        tables = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "entities", "metrics", "samples", "alerts", "transitions", "kv"} <= tables


def test_connection_uses_wal_normal_sync_and_foreign_keys(sqlite_store):
    store = sqlite_store
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_reopening_keeps_data(store_target):
    with Store.open(store_target) as s:
        write(s, T0, site(1, **{"site.clients": 3}))
        s.kv_set("cursor", {"since": 5})
    with Store.open(store_target) as s:
        assert s.values_at("site.clients", T0) == {"site:s1": 3}
        assert s.kv_get("cursor") == {"since": 5}
        assert [e.key for e in s.entities()] == ["site:s1"]


def test_migrations_appended_later_are_applied_in_order_on_open(store_target, monkeypatch):
    with Store.open(store_target):
        pass
    monkeypatch.setattr(store_module, "MIGRATIONS", [
        *store_module.MIGRATIONS,
        (91, "ALTER TABLE extra ADD COLUMN note TEXT"),
        (90, "CREATE TABLE extra (id INTEGER PRIMARY KEY)"),
    ])
    with Store.open(store_target) as s:
        assert s.schema_version == 91
        s.db.execute("INSERT INTO extra (note) VALUES ('n')")  # the id is assigned, as an INTEGER PRIMARY KEY
        assert s.db.execute("SELECT id, note FROM extra").fetchall() == [(1, "n")]


def test_a_lower_numbered_migration_added_after_a_higher_one_is_still_applied(store_target, monkeypatch):
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        [*store_module.MIGRATIONS, (90, "CREATE TABLE outbox_like (id INTEGER)")])
    with Store.open(store_target):
        pass
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        [*store_module.MIGRATIONS, (2, "CREATE TABLE later_store_table (id INTEGER)")])
    with Store.open(store_target) as s:
        assert s.schema_version == 90
        assert s.db.execute("SELECT count(*) FROM later_store_table").fetchone()[0] == 0


def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path, monkeypatch):
    with Store.open(tmp_path) as s:
        version = s.schema_version
    monkeypatch.setattr(store_module, "MIGRATIONS", [
        *store_module.MIGRATIONS, (90, "CREATE TABLE half (id INTEGER); INSERT INTO nowhere VALUES (1)")])
    with pytest.raises(MistwatchError, match="no such table: nowhere"):
        Store.open(tmp_path)
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == version
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    db.close()


def test_a_database_from_a_newer_mistwatch_is_refused(tmp_path):
    with Store.open(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(MistwatchError, match="state was written by a newer mistwatch"):
        Store.open(tmp_path)


def test_a_failing_migration_on_postgresql_leaves_the_previous_version_intact(pg_url, monkeypatch):
    with Store.open(pg_url) as s:
        version = s.schema_version
    monkeypatch.setattr(store_module, "MIGRATIONS", [
        *store_module.MIGRATIONS, (90, "CREATE TABLE half (id INTEGER); INSERT INTO nowhere VALUES (1)")])
    with pytest.raises(MistwatchError, match='"nowhere" does not exist'):
        Store.open(pg_url)
    monkeypatch.undo()
    with Store.open(pg_url) as s:
        assert s.schema_version == version
        assert not s.dialect.has_table(s.db, "half")


def test_a_postgresql_database_from_a_newer_mistwatch_is_refused(pg_url):
    with Store.open(pg_url) as s:
        s.db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)")
    with pytest.raises(MistwatchError, match=r"newer mistwatch .*schema version 99"):
        Store.open(pg_url)


def test_another_programs_postgresql_database_is_refused(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int)")
    with pytest.raises(MistwatchError, match="is not a mistwatch state database"):
        Store.open(pg_url)


def test_an_unreachable_postgresql_store_is_one_line_without_the_password(pg_server):
    url = f"postgresql://mistwatch:hunter2secret@127.0.0.1:{_closed_port()}/nowhere"
    with pytest.raises(MistwatchError) as info:
        Store.open(url, busy_timeout=2)
    message = str(info.value)
    assert "unreachable" in message and "127.0.0.1" in message
    assert "hunter2secret" not in message and "\n" not in message


def test_a_lost_postgresql_connection_is_a_clear_error(pg_url):
    import psycopg

    with Store.open(pg_url) as s:
        pid = s.db.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(MistwatchError, match="connection lost"):
            s.kv_set("after", 1)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_file_that_is_not_a_database_is_named_clearly(tmp_path):
    (tmp_path / DB_FILENAME).write_bytes(b"this is a text file, not SQLite" * 200)
    with pytest.raises(MistwatchError, match="is not a mistwatch state database"):
        Store.open(tmp_path)


def test_another_programs_sqlite_database_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("CREATE TABLE something_else (x)")
    db.commit()
    db.close()
    with pytest.raises(MistwatchError, match="is not a mistwatch state database"):
        Store.open(tmp_path)


def test_a_write_lock_held_beyond_the_busy_timeout_is_reported(tmp_path):
    with Store.open(tmp_path, busy_timeout=0.2) as s:
        other = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(MistwatchError, match="is locked by another process"):
                s.kv_set("k", 1)
        finally:
            other.execute("ROLLBACK")
            other.close()
        s.kv_set("k", 2)  # usable again once the lock is gone
        assert s.kv_get("k") == 2


def test_a_full_disk_is_reported_and_the_write_rolled_back(sqlite_store):
    store = sqlite_store
    write_clients(store, T0, s1=1)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full"
    big = [Entity(f"site:x{n}", "site", {"site_name": "x" * 200}, {"site.clients": n}) for n in range(2000)]
    with pytest.raises(MistwatchError, match="disk full"):
        write(store, T0 + timedelta(minutes=5), *big)
    assert [e.key for e in store.entities()] == ["site:s1"]


def test_using_a_closed_store_is_a_clear_error(tmp_path):
    s = Store.open(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(MistwatchError, match="closed"):
        s.kv_get("k")
    with pytest.raises(MistwatchError, match="closed"):
        s.kv_set("k", 1)


def test_a_damaged_history_row_is_reported(store):
    write_clients(store, T0, s1=1, s2=2)
    store.db.execute("UPDATE samples SET vals = ?", (b"\x01\x02",))
    with pytest.raises(MistwatchError, match="is damaged"):
        store.values_at("site.clients", T0)


def test_opening_an_up_to_date_database_does_not_wait_for_a_writer(tmp_path):
    with Store.open(tmp_path):
        pass
    writer = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with Store.open(tmp_path, busy_timeout=0.2) as reader:
            assert reader.kv_get("anything") is None
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# transactions --------------------------------------------------------------------------------------
def test_an_exception_inside_a_transaction_leaves_nothing_written(store):
    store.kv_set("kept", 1)
    with pytest.raises(RuntimeError, match="crash"), store.transaction() as db:
        db.execute("INSERT INTO kv (key, value) VALUES ('half', '1')")
        store.write_metrics(T0, {"site.health": {"site:s1": 50}})
        raise RuntimeError("crash")
    assert store.kv_get("half") is None
    assert store.kv_get("kept") == 1
    assert store.entities() == []
    assert store.values_at("site.health", T0) == {}


def test_a_snapshot_that_fails_half_way_is_rolled_back_entirely(store):
    bad = Entity("device:d9", "device", {}, {"device.cpu": "high"})  # type: ignore[dict-item]
    with pytest.raises(MistwatchError, match=r"device\.cpu of device:d9 is not a number"):
        write(store, T0, site(1, **{"site.clients": 3}), bad)
    assert store.entities() == []
    assert store.values_at("site.clients", T0) == {}
    write(store, T0, site(1, **{"site.clients": 4}))  # caches were reset with the rollback
    assert store.values_at("site.clients", T0) == {"site:s1": 4}


def test_labels_that_cannot_be_stored_are_named_and_nothing_is_written(store):
    bad = Entity("site:s9", "site", {"site_name": object()}, {"site.clients": 1})  # type: ignore[dict-item]
    with pytest.raises(MistwatchError, match="cannot store labels of site:s9"):
        write(store, T0, site(1, **{"site.clients": 3}), bad)
    assert store.entities() == []


def test_nested_transactions_roll_back_only_the_inner_part(store):
    with store.transaction():
        store.kv_set("outer", 1)
        with pytest.raises(ValueError), store.transaction():
            store.kv_set("inner", 2)
            raise ValueError
    assert store.kv_get("outer") == 1
    assert store.kv_get("inner") is None


def test_sql_errors_inside_a_transaction_come_out_as_mistwatch_errors(store):
    with pytest.raises(MistwatchError, match=r"no such table|does not exist"), store.transaction() as db:
        db.execute("INSERT INTO missing_table VALUES (1)")


# runs --------------------------------------------------------------------------------------------
def test_runs_are_recorded_and_listed_newest_first(store):
    first = store.start_run(T0, "monitor")
    store.finish_run(first, finished_at=T0 + timedelta(seconds=3), status="ok", api_calls=7,
                     errors=["x failed"], summary={"alerts": 2})
    second = store.start_run(T0 + timedelta(minutes=15), "report")
    store.finish_run(second, finished_at=T0 + timedelta(minutes=16), status="failed")
    runs = store.runs()
    assert [r.id for r in runs] == [second, first]
    assert runs[1].api_calls == 7 and runs[1].errors == ["x failed"] and runs[1].summary == {"alerts": 2}
    assert runs[1].started_at == T0 and runs[1].finished_at == T0 + timedelta(seconds=3)
    assert store.last_successful_run().id == first


def test_finishing_an_unknown_run_is_an_error(store):
    with pytest.raises(MistwatchError, match="no run 42"):
        store.finish_run(42, finished_at=T0, status="ok")


# snapshots and history -----------------------------------------------------------------------------
def test_snapshot_round_trip_entities_and_values(store):
    write(store, T0, site(1, **{"site.clients": 12, "site.ap_connected_ratio": 0.5}),
          device(1, **{"device.connected": 1.0}))
    assert store.values_at("site.clients", T0) == {"site:s1": 12.0}
    assert store.values_at("site.ap_connected_ratio", T0) == {"site:s1": 0.5}
    assert store.values_at("device.connected", T0) == {"device:d1": 1.0}
    assert store.entities("device") == [EntityRecord("device:d1", "device",
                                                     {"device_id": "d1", "site_id": "s1"}, T0, T0)]


def test_entities_get_new_labels_and_last_seen_but_keep_first_seen(store):
    write(store, T0, site(1, **{"site.clients": 1}))
    renamed = Entity("site:s1", "site", {"site_id": "s1", "site_name": "Renamed"}, {"site.clients": 2})
    later = T0 + timedelta(minutes=15)
    write(store, later, renamed)
    write(store, later + timedelta(minutes=15), renamed)
    (record,) = store.entities("site")
    assert record.labels == {"site_id": "s1", "site_name": "Renamed"}
    assert (record.first_seen, record.last_seen) == (T0, later + timedelta(minutes=15))


def test_a_fresh_store_sees_label_changes_made_through_another(store_target):
    with Store.open(store_target) as a:
        write(a, T0, site(1, **{"site.clients": 1}))
    with Store.open(store_target) as b:
        write(b, T0 + timedelta(minutes=5), Entity("site:s1", "site", {"site_name": "B"}, {}))
    with Store.open(store_target) as c:
        assert c.entities()[0].labels == {"site_name": "B"}
        assert c.entities()[0].last_seen == T0 + timedelta(minutes=5)


def test_unknown_metrics_are_not_written(store):
    write(store, T0,
          site(1, **{"site.clients": 4, "sle.wifi.coverage": 0.9}),
          device(1, unknown=frozenset({"device.*"}), **{"device.connected": 0.0}),
          device(2, **{"device.connected": 1.0}),
          errors=[CollectorError("mist", "/sle", "timeout", kinds=frozenset({"site"}),
                                 metrics=frozenset({"sle.*"}))])
    assert store.values_at("sle.wifi.coverage", T0) == {}
    assert store.values_at("site.clients", T0) == {"site:s1": 4}
    assert store.values_at("device.connected", T0) == {"device:d2": 1.0}
    assert {e.key for e in store.entities()} == {"site:s1", "device:d1", "device:d2"}


def test_nan_and_none_values_are_not_written(store):
    write(store, T0, site(1, **{"site.clients": math.nan}), site(2, **{"site.clients": 5}),
          site(3, **{"site.clients": None}))  # type: ignore[arg-type]
    assert store.values_at("site.clients", T0) == {"site:s2": 5}


def test_history_is_one_row_per_metric_per_snapshot(store):
    write(store, T0, *(site(n, **{"site.clients": n, "site.aps": 2 * n}) for n in range(50)))
    assert store.db.execute("SELECT count(*) FROM samples").fetchone()[0] == 2


def test_the_same_entity_twice_in_a_snapshot_merges_labels_and_the_later_value_wins(store):
    a = Entity("site:s1", "site", {"site_id": "s1"}, {"site.clients": 1})
    b = Entity("site:s1", "site", {"site_name": "One"}, {"site.clients": 2, "site.aps": 3})
    write(store, T0, a, b)
    assert store.values_at("site.clients", T0) == {"site:s1": 2}
    assert store.values_at("site.aps", T0) == {"site:s1": 3}
    assert store.entities()[0].labels == {"site_id": "s1", "site_name": "One"}


def test_values_at_takes_the_nearest_sample_within_tolerance(store):
    write_clients(store, T0, s1=1)
    write_clients(store, T0 + timedelta(minutes=30), s1=2)
    assert store.values_at("site.clients", T0 + timedelta(minutes=10)) == {"site:s1": 1}
    assert store.values_at("site.clients", T0 + timedelta(minutes=20)) == {"site:s1": 2}
    assert store.values_at("site.clients", T0 + timedelta(minutes=15)) == {"site:s1": 1}  # tie: earlier


def test_values_at_returns_nothing_outside_the_tolerance(store):
    write_clients(store, T0, s1=1)
    assert store.values_at("site.clients", T0 + timedelta(minutes=91)) == {}
    assert store.values_at("site.clients", T0 - timedelta(minutes=31), tolerance=timedelta(minutes=30)) == {}
    assert store.values_at("site.clients", T0 - timedelta(minutes=29), tolerance=timedelta(minutes=30)) == {
        "site:s1": 1}
    assert store.values_at("no.such.metric", T0) == {}


def test_values_at_filters_by_keys(store):
    write_clients(store, T0, s1=1, s2=2, s3=3)
    assert store.values_at("site.clients", T0, keys=["site:s1", "site:s3", "site:nope"]) == {
        "site:s1": 1, "site:s3": 3}


def test_values_at_fills_entities_missing_from_the_nearest_row_from_the_other_side(store):
    write_clients(store, T0, s1=1, s2=10)
    write_clients(store, T0 + timedelta(minutes=15), s1=2)  # s2 unknown in this cycle
    write_clients(store, T0 + timedelta(minutes=30), s1=3, s2=30)
    # Nearest row is T0+15 (s1); s2 comes from the other side's row, T0+30 here and T0 below.
    assert store.values_at("site.clients", T0 + timedelta(minutes=16)) == {"site:s1": 2, "site:s2": 30}
    assert store.values_at("site.clients", T0 + timedelta(minutes=14)) == {"site:s1": 2, "site:s2": 10}


def test_window_lists_every_sample_per_entity_oldest_first(store):
    for i in range(4):
        write_clients(store, T0 + timedelta(minutes=15 * i), s1=i, s2=10 * i)
    got = store.window("site.clients", T0 + timedelta(minutes=15), T0 + timedelta(minutes=45))
    assert got["site:s1"] == [(T0 + timedelta(minutes=15), 1), (T0 + timedelta(minutes=30), 2),
                              (T0 + timedelta(minutes=45), 3)]
    assert store.window("site.clients", T0, T0, keys=["site:s2"]) == {"site:s2": [(T0, 0)]}


def test_window_mean_gives_mean_and_count_per_entity(store):
    write_clients(store, T0, s1=1, s2=4)
    write_clients(store, T0 + timedelta(minutes=15), s1=3)
    write_clients(store, T0 + timedelta(hours=5), s1=100)  # outside the window
    got = store.window_mean("site.clients", T0, T0 + timedelta(hours=1))
    assert got == {"site:s1": (2.0, 2), "site:s2": (4.0, 1)}
    assert store.window_mean("site.clients", T0, T0 + timedelta(hours=1), keys=["site:s2"]) == {
        "site:s2": (4.0, 1)}


def test_history_start_is_the_oldest_sample_overall_or_per_metric(store):
    assert store.history_start() is None
    write(store, T0, site(1, **{"site.aps": 1}))
    write(store, T0 + timedelta(hours=1), site(1, **{"site.clients": 1}))
    assert store.history_start() == T0
    assert store.history_start("site.clients") == T0 + timedelta(hours=1)
    assert store.history_start("nothing") is None


def test_write_metrics_creates_missing_entities_with_the_kind_from_the_key(store):
    store.write_metrics(T0, {"site.health": {"site:new": 80.0}, "device.health": {"device:d7": 10.0}})
    assert store.values_at("site.health", T0) == {"site:new": 80.0}
    assert store.values_at("device.health", T0) == {"device:d7": 10.0}
    assert {(e.key, e.kind, tuple(e.labels)) for e in store.entities()} == {
        ("site:new", "site", ()), ("device:d7", "device", ())}


def test_write_metrics_keeps_the_labels_of_known_entities(store):
    write(store, T0, site(1, **{"site.clients": 1}))
    store.write_metrics(T0, {"site.health": {"site:s1": 90.0}})
    assert store.entities()[0].labels == {"site_id": "s1", "site_name": "Site 1"}
    assert store.values_at("site.health", T0) == {"site:s1": 90.0}


def test_write_metrics_at_the_same_time_as_a_snapshot_merges_into_its_row(store):
    write_clients(store, T0, s1=1, s2=2)
    store.write_metrics(T0, {"site.clients": {"site:s2": 20, "site:s3": 3}})
    assert store.values_at("site.clients", T0) == {"site:s1": 1, "site:s2": 20, "site:s3": 3}


def test_write_metrics_rejects_a_key_without_a_kind(store):
    with pytest.raises(MistwatchError, match="'<kind>:<id>'"):
        store.write_metrics(T0, {"x": {"no-prefix": 1.0}})


# alerts --------------------------------------------------------------------------------------------
def alert(key: str = "r1|site_id=s1", state: str = "firing", **kw) -> Alert:
    base = dict(key=key, rule_id="r1", labels={"site_id": "s1", "site_name": "One"}, state=state,
                severity="major", value=0.4, threshold=0.8, summary="low", pending_since=T0,
                firing_since=T0 + timedelta(minutes=5), last_eval_at=T0 + timedelta(minutes=5),
                true_count=2, causes=("ap down",), annotations={"runbook": "x", "n": [1, 2]})
    base.update(kw)
    return Alert(**base)


def test_alerts_round_trip(store):
    saved = alert()
    store.save_alerts([saved, alert("r1|site_id=s2", state="pending", firing_since=None)])
    loaded = store.load_alerts()
    assert loaded["r1|site_id=s1"] == saved
    assert loaded["r1|site_id=s2"].state == "pending"


def test_text_with_a_nul_character_from_hostile_data_is_stored_not_refused(store):
    from dataclasses import replace

    store.save_alerts([replace(alert(), summary="AP \x00evil is offline")])
    summary = store.load_alerts()["r1|site_id=s1"].summary
    assert summary.startswith("AP ") and summary.endswith("evil is offline")  # PostgreSQL: U+FFFD for NUL
    write(store, T0, Entity("site:x", "site", {"site_name": "a\x00b"}, {"site.clients": 1.0}))
    assert store.entities()[0].labels["site_name"] == "a\x00b"  # labels are JSON: the NUL is escaped


def test_an_entity_key_with_a_nul_character_is_stored_and_read_back(store):
    write(store, T0, Entity("site:\x00x", "site", {}, {"site.clients": 1.0}))
    store.write_metrics(T0, {"health.score": {"site:\x00x": 90.0}})
    assert list(store.values_at("site.clients", T0).values()) == [1.0]  # PostgreSQL: under "site:\ufffdx"
    assert list(store.values_at("health.score", T0).values()) == [90.0]


def test_saving_an_alert_again_updates_it(store):
    store.save_alerts([alert()])
    store.save_alerts([alert(state="resolved", resolved_at=T0 + timedelta(hours=1), value=0.9)])
    (loaded,) = store.load_alerts().values()
    assert (loaded.state, loaded.value, loaded.resolved_at) == ("resolved", 0.9, T0 + timedelta(hours=1))


def test_an_alert_saved_as_inactive_is_deleted(store):
    store.save_alerts([alert(), alert("r1|site_id=s2")])
    store.save_alerts([alert(state="inactive")])
    assert list(store.load_alerts()) == ["r1|site_id=s2"]


def test_transitions_are_recorded_and_filtered(store):
    t1 = Transition("r1|site_id=s1", "r1", T0, "inactive", "pending", "major", 0.4)
    t2 = Transition("r1|site_id=s1", "r1", T0 + timedelta(minutes=5), "pending", "firing", "major", 0.3)
    t3 = Transition("r1|site_id=s2", "r1", T0 + timedelta(minutes=5), "inactive", "pending", "major", None)
    store.save_alerts([alert()], [t1, t2, t3])
    assert store.transitions() == [t1, t2, t3]
    assert store.transitions("r1|site_id=s1") == [t1, t2]
    assert store.transitions(since=T0 + timedelta(minutes=1)) == [t2, t3]


def test_an_alert_that_cannot_be_stored_saves_nothing(store):
    bad = alert("r1|site_id=s2", annotations={"when": object()})
    with pytest.raises(MistwatchError, match=r"annotations of alert r1\|site_id=s2"):
        store.save_alerts([alert(), bad])
    assert store.load_alerts() == {}


# kv ------------------------------------------------------------------------------------------------
def test_kv_stores_json_values(store):
    assert store.kv_get("missing", default=[]) == []
    store.kv_set("cursor", {"mist": {"since": 1700000000, "ids": ["a", "b"]}})
    store.kv_set("digest_date", "2026-11-20")
    store.kv_set("digest_date", "2026-11-21")
    assert store.kv_get("cursor") == {"mist": {"since": 1700000000, "ids": ["a", "b"]}}
    assert store.kv_get("digest_date") == "2026-11-21"


def test_kv_refuses_values_that_are_not_json(store):
    with pytest.raises(MistwatchError, match="not JSON-serialisable"):
        store.kv_set("k", {1, 2})


# retention -----------------------------------------------------------------------------------------
def sample_times(store: Store, metric: str = "site.clients") -> list[datetime]:
    return [when for when, _ in store.window(metric, T0 - timedelta(days=400), T0 + timedelta(days=1))["site:s1"]]


def test_prune_keeps_raw_then_hourly_then_daily_and_drops_the_rest(store):
    now = T0
    # Every 20 minutes for 40 days back, on the hour: 3 rows per hour.
    start = now - timedelta(days=40)
    at = start
    while at <= now:
        write_clients(store, at, s1=1)
        at += timedelta(minutes=20)
    before = store.db.execute("SELECT count(*) FROM samples").fetchone()[0]
    counts = store.prune(now, raw_hours=48, hourly_days=8, retention_days=35)
    times = sample_times(store)

    raw = [t for t in times if t >= now - timedelta(hours=48)]
    hourly = [t for t in times if now - timedelta(days=8) <= t < now - timedelta(hours=48)]
    daily = [t for t in times if now - timedelta(days=35) <= t < now - timedelta(days=8)]
    assert len(raw) == 48 * 3 + 1  # untouched
    assert len(hourly) == 6 * 24 and all(t.minute == 0 for t in hourly)  # the first of each hour
    # The first of each UTC day: the daily zone starts at 12:00, so its first and last days are partial.
    assert len(daily) == 28 and len({t.date() for t in daily}) == 28
    assert all((t.hour, t.minute) == (0, 0) for t in daily[1:]) and daily[0] == now - timedelta(days=35)
    assert min(times) == now - timedelta(days=35)
    assert counts["samples"] == before - len(times)
    assert counts["samples_expired"] == 5 * 24 * 3  # 35 to 40 days back
    assert counts["samples_hourly"] == 6 * 24 * 2
    assert counts["samples_daily"] == 27 * 24 * 3 - 28


def test_prune_twice_deletes_nothing_more(store):
    for i in range(0, 24 * 12):
        write_clients(store, T0 - timedelta(minutes=30 * i), s1=i)
    store.prune(T0, raw_hours=6, hourly_days=2, retention_days=5)
    kept = sample_times(store)
    assert store.prune(T0, raw_hours=6, hourly_days=2, retention_days=5)["samples"] == 0
    assert sample_times(store) == kept


def test_prune_drops_old_runs_transitions_and_entities_not_seen_for_the_retention(store):
    old = T0 - timedelta(days=40)
    write(store, old, site(1, **{"site.clients": 1}), site(2, **{"site.clients": 1}))
    write(store, T0, site(2, **{"site.clients": 2}))
    store.save_alerts([], [Transition("k", "r1", old, "inactive", "pending", "major", 1.0),
                           Transition("k", "r1", T0, "pending", "firing", "major", 1.0)])
    counts = store.prune(T0, retention_days=35)
    assert (counts["runs"], counts["transitions"], counts["entities"]) == (1, 1, 1)
    assert [e.key for e in store.entities()] == ["site:s2"]
    assert [t.at for t in store.transitions()] == [T0]
    assert len(store.runs()) == 1
    write(store, T0 + timedelta(minutes=5), site(1, **{"site.clients": 9}))  # comes back as new
    assert store.values_at("site.clients", T0 + timedelta(minutes=5)) == {"site:s1": 9}
    assert store.values_at("site.clients", T0, keys=["site:s2"]) == {"site:s2": 2}


# scale ----------------------------------------------------------------------------------------------
def org_snapshot(at: datetime, sites: int, devices_per_site: int, seed: int) -> Snapshot:
    rng = random.Random(seed)
    entities = []
    for s in range(sites):
        labels = {"org_id": "o1", "site_id": f"s{s}", "site_name": f"Store {s}", "country": "DE"}
        entities.append(Entity(f"site:s{s}", "site", labels,
                               {f"site.m{i}": rng.random() for i in range(6 + s % 15)}))
        for d in range(devices_per_site):
            dlabels = {**labels, "device_id": f"d{s}-{d}", "device_name": f"ap-{s}-{d}", "model": "AP43"}
            entities.append(Entity(f"device:d{s}-{d}", "device", dlabels,
                                   {f"device.m{i}": rng.random() for i in range(6 + (s + d) % 3)}))
    return Snapshot(taken_at=at, entities=entities)


def test_write_snapshot_at_org_scale(store):
    """10,000 sites and 60,000 devices; prints the time (see it with -s), asserts only correctness."""
    store.write_snapshot(store.start_run(T0, "monitor"), org_snapshot(T0, 10_000, 6, seed=1))
    later = T0 + timedelta(minutes=15)
    snap = org_snapshot(later, 10_000, 6, seed=2)
    started = time.perf_counter()
    store.write_snapshot(store.start_run(later, "monitor"), snap)
    elapsed = time.perf_counter() - started
    print(f"\nwrite_snapshot, 10,000 sites + 60,000 devices "
          f"({sum(len(e.metrics) for e in snap.entities)} values): {elapsed * 1000:.0f} ms")
    got = store.values_at("device.m0", later)
    assert len(got) == 60_000
    assert got["device:d7-3"] == snap.entities[7 * 7 + 1 + 3].metrics["device.m0"]
