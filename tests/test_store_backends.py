"""Moving an installation between store backends (`mistwatch store copy/migrate`), and the shared
PostgreSQL store's active lock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fixtures_cli import run_cli
from fixtures_notify import T0, make_alert

from mistwatch.model import Entity, Snapshot
from mistwatch.notify import outbox
from mistwatch.notify.pipeline import sample_notification
from mistwatch.store.database import Store
from mistwatch.store.records import Transition


def _installation(target) -> dict:
    """A store holding one of everything: history, a run, an alert and its transition, state,
    a silence, a pending outbox message and a notification log entry."""
    with Store.open(target) as s:
        run = s.start_run(T0, "monitor")
        s.write_snapshot(run, Snapshot(taken_at=T0, entities=[
            Entity("site:s1", "site", {"site_name": "HQ"}, {"site.clients": 12.0})]))
        alert = make_alert()
        s.save_alerts([alert], [Transition(alert.key, alert.rule_id, T0, "pending", "firing", "critical", 0.0)])
        s.kv_set("cursors", {"mist": {"since": 5}})
        silence = outbox.add_silence(s, ["site_name=HQ"], starts_at=T0, ends_at=T0 + timedelta(hours=2),
                                     reason="works", author="ana", now=T0)
        message = sample_notification("mail", T0)
        outbox.enqueue(s, [message], T0)
        with s.transaction() as db:
            outbox.save_log(db, [outbox.LogEntry("g1", "mail", T0, "<t@x>", {alert.key: "critical"})])
    return {"alert": alert, "silence": silence, "message": message, "run": run}


def test_store_copy_moves_history_alerts_silences_and_the_outbox_to_postgresql(tmp_path, pg_url, capsys):
    made = _installation(tmp_path / "var")
    code, out, err = run_cli(["store", "copy", "--from", f"sqlite:{tmp_path / 'var'}", "--to", pg_url], capsys)
    assert (code, err) == (0, "")
    assert "samples" in out and "outbox" in out
    with Store.open(pg_url) as pg:
        assert pg.values_at("site.clients", T0) == {"site:s1": 12.0}
        assert pg.runs()[0].id == made["run"]
        assert list(pg.load_alerts()) == [made["alert"].key]
        assert [t.to_state for t in pg.transitions()] == ["firing"]
        assert pg.kv_get("cursors") == {"mist": {"since": 5}}
        assert [s.id for s in outbox.silences(pg, T0)] == [made["silence"].id]
        assert [n.id for _, n in outbox.due(pg, T0)] == [made["message"].id]
        assert outbox.load_log(pg)[("g1", "mail")].thread_id == "<t@x>"
        assert pg.start_run(T0 + timedelta(minutes=15), "monitor") > made["run"]  # ids continue after the copy


def test_store_copy_back_from_postgresql_to_sqlite_keeps_everything(tmp_path, pg_url, capsys):
    made = _installation(pg_url)
    code, _, err = run_cli(["store", "copy", "--from", pg_url, "--to", f"sqlite:{tmp_path / 'back'}"], capsys)
    assert (code, err) == (0, "")
    with Store.open(tmp_path / "back") as s:
        assert s.values_at("site.clients", T0) == {"site:s1": 12.0}
        assert [n.id for _, n in outbox.due(s, T0)] == [made["message"].id]
        assert s.start_run(T0 + timedelta(minutes=15), "monitor") > made["run"]


def test_store_copy_refuses_a_destination_that_is_not_empty(tmp_path, pg_url, capsys):
    _installation(tmp_path / "var")
    _installation(pg_url)
    code, _, err = run_cli(["store", "copy", "--from", str(tmp_path / "var"), "--to", pg_url], capsys)
    assert code == 1
    assert "is not empty" in err and len(err.strip().splitlines()) == 1


def test_store_copy_from_a_folder_without_a_state_database_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_cli(["store", "copy", "--from", f"sqlite:{tmp_path / 'none'}",
                           "--to", f"sqlite:{tmp_path / 'new'}"], capsys)
    assert code == 2
    assert err.strip() == f"mistwatch: --from: no state database mistwatch.db in {tmp_path / 'none'}"
    assert not (tmp_path / "new").exists()


def test_store_migrate_applies_the_schema_and_says_which_versions(pg_url, capsys):
    code, out, _ = run_cli(["store", "migrate", "--store", pg_url], capsys)
    assert code == 0 and "applied now: 1, 10" in out
    code, out, _ = run_cli(["store", "migrate", "--store", pg_url], capsys)
    assert code == 0 and "applied now: none (up to date)" in out


def test_store_copy_waits_for_no_daemon_it_refuses_while_one_is_active(tmp_path, pg_url, capsys):
    _installation(pg_url)
    with Store.open(pg_url) as daemon_store:
        assert daemon_store.try_become_active()
        code, _, err = run_cli(["store", "copy", "--from", pg_url, "--to", str(tmp_path / "copy")], capsys)
    assert code == 1 and "daemon is active" in err


# the active lock -----------------------------------------------------------------------------------
def test_only_one_session_at_a_time_is_active_on_a_shared_store(pg_url):
    with Store.open(pg_url) as a, Store.open(pg_url) as b:
        assert a.try_become_active()
        assert not b.try_become_active()
        assert a.still_active() and not b.still_active()
        a.close()
        assert _eventually(b.try_become_active)  # the server ends a's session (and lock) right after


def _eventually(check, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_session_that_lost_its_connection_is_no_longer_active(pg_url):
    import psycopg

    with Store.open(pg_url) as a, Store.open(pg_url) as b:
        assert a.try_become_active()
        pid = a.db.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert not a.still_active()
        assert _eventually(b.try_become_active)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sqlite_store_is_always_active_the_state_directory_lock_decides(tmp_path, backend):
    with Store.open(tmp_path) as a:
        assert a.try_become_active() and a.still_active()


# configuration --------------------------------------------------------------------------------------
def _config(tmp_path, store_section: str):
    from mistwatch.config import load_config
    from mistwatch.host import make_host

    path = tmp_path / "config.yaml"
    path.write_text(f"collectors: []\nrules: [rules/]\n{store_section}", encoding="utf-8")
    (tmp_path / "rules").mkdir(exist_ok=True)
    return load_config(path, make_host(entry_points=False))


def test_without_store_url_the_store_is_sqlite_under_state_dir(tmp_path):
    assert _config(tmp_path, "state_dir: ./var\n").store_target == tmp_path / "var"


def test_store_url_names_a_postgresql_database_or_a_sqlite_folder_relative_to_the_config(tmp_path):
    assert _config(tmp_path, "store: {url: 'postgresql://mw@db/mw'}\n").store_target == "postgresql://mw@db/mw"
    assert _config(tmp_path, "store: {url: 'sqlite:data'}\n").store_target == tmp_path / "data"


def test_a_store_url_of_another_kind_is_a_config_error_naming_the_key_and_line(tmp_path):
    from mistwatch.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, "store:\n  url: mysql://db/mw\n")
    assert (caught.value.key, caught.value.line) == ("store.url", 4)
    assert "postgresql://" in caught.value.message


# standby ----------------------------------------------------------------------------------------------
class _StoreThatDrops:
    """A standby's store whose connection fails once; the reconnected one finds the lock free."""

    where = "postgresql://db/mw"

    def __init__(self, results) -> None:
        self.results, self.closed, self.names = list(results), False, []

    def try_become_active(self) -> bool:
        from mistwatch.errors import MistwatchError

        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise MistwatchError(str(result))
        return result

    def describe_session(self, name: str) -> None:
        self.names.append(name)

    def close(self) -> None:
        self.closed = True


def test_a_standby_whose_connection_drops_connects_again_and_still_takes_over():
    from mistwatch.service.standby import wait_until_active

    first, second = _StoreThatDrops([False, OSError("server closed the connection")]), _StoreThatDrops([False, True])
    sleeps: list[float] = []
    got = wait_until_active(first, 0.5, lambda: False, reopen=lambda: second, sleep=sleeps.append)
    assert got is second and first.closed
    assert sleeps == [0.5, 0.5, 0.5]
    assert "standby" in second.names[0]


def test_a_standby_asked_to_stop_returns_without_the_lock():
    from mistwatch.service.standby import wait_until_active

    calls = iter([False, False, True])
    assert wait_until_active(_StoreThatDrops([False] * 5), 0.1, lambda: next(calls), sleep=lambda s: None) is None


def test_runs_left_running_by_a_killed_daemon_are_marked_failed_on_takeover(store_target):
    from mistwatch.service.standby import took_over

    with Store.open(store_target) as s:
        done = s.start_run(T0, "all")
        s.finish_run(done, finished_at=T0, status="ok")
        s.start_run(T0 + timedelta(minutes=15), "all")  # its daemon was killed mid-cycle
        took_over(s)
        runs = {r.id: r for r in s.runs()}
    assert runs[done].status == "ok"
    interrupted = next(r for r in runs.values() if r.id != done)
    assert interrupted.status == "failed" and "interrupted" in interrupted.errors[0]


def test_config_check_names_the_store_without_its_password(tmp_path, capsys):
    (tmp_path / "rules").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text("collectors: []\nrules: [rules/]\nstore: {url: 'postgresql://mw:pw-s3cret@db:5432/mw'}\n",
                    encoding="utf-8")
    code, out, _ = run_cli(["config", "check", "--config", str(path)], capsys)
    assert code == 0
    assert "PostgreSQL postgresql://mw@db:5432/mw" in out and "pw-s3cret" not in out
