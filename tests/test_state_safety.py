"""The state directory, reports and logs: a vanished store is reported (not silently recreated), files
are owner-only whatever the umask, run honours log.file; and two settings that misbehaved: webhook
headers taken for secrets, maintenance windows on the autumn clock change."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from mistwatch.errors import MistwatchError
from mistwatch.store.database import DB_FILENAME, MARKER_FILENAME, Store

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    """Run the test with umask 000, as a careless service unit would."""
    old = os.umask(0)
    yield
    os.umask(old)


# -- a store that vanished --------------------------------------------------------------------------

def _created_store(state: Path) -> Path:
    with Store.open(state) as store:
        store.kv_set("k", "v")
    return state / DB_FILENAME


def test_a_missing_store_where_one_was_created_is_refused_not_recreated(tmp_path):
    db = _created_store(tmp_path / "state")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(MistwatchError, match=f"is missing, but a state database was created here.*{MARKER_FILENAME}"):
        Store.open(tmp_path / "state")
    assert not db.exists()


def test_an_emptied_store_is_refused(tmp_path):
    db = _created_store(tmp_path / "state")
    Path(f"{db}-wal").unlink(missing_ok=True)
    db.write_bytes(b"")
    with pytest.raises(MistwatchError, match=r"is empty \(0 bytes\)"):
        Store.open(tmp_path / "state")


def test_a_new_state_directory_still_gets_a_new_store(tmp_path):
    with Store.open(tmp_path / "fresh") as store:
        assert store.schema_version > 0
    assert (tmp_path / "fresh" / MARKER_FILENAME).exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mistwatch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})


def test_status_on_a_damaged_store_gives_the_message_run_gives(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("id: r\nkind: threshold\nmetric: site.clients\nbelow: 1\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"collectors": [], "state_dir": "var", "rules": ["rules/"], "notifiers": [{"name": "c", "type": "console"}]}))
    db = _created_store(tmp_path / "var")
    with open(db, "r+b") as fh:  # the first page overwritten: the header no longer says SQLite
        fh.write(b"\xff" * 200)
    run = _cli("run", "--mode", "insights", cwd=tmp_path)
    status = _cli("status", cwd=tmp_path)
    assert run.stderr.strip().splitlines()[-1] == status.stderr.strip() == (
        f"mistwatch: {db} is not a mistwatch state database")
    assert "Traceback" not in run.stderr + status.stderr


# -- owner-only files -----------------------------------------------------------------------------

def test_the_state_directory_store_marker_and_lock_are_owner_only_whatever_the_umask(tmp_path, open_umask):
    from mistwatch.service.lock import StateLock

    db = _created_store(tmp_path / "state")
    with StateLock(tmp_path / "state") as lock:
        assert _mode(lock.path) == 0o600
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(db) == 0o600 and _mode(tmp_path / "state" / MARKER_FILENAME) == 0o600
    for side in ("-wal", "-shm"):
        if Path(f"{db}{side}").exists():
            assert _mode(Path(f"{db}{side}")) == 0o600


def test_reports_are_owner_only_whatever_the_umask(tmp_path, open_umask):
    from fixtures_reports import T0, synthetic_org

    from mistwatch.report.build import build_report, write_reports
    from mistwatch.report.health import compute_health

    snap = synthetic_org(2, 2, at=T0)
    run = {"started_at": T0, "duration_s": 0.5, "api_calls": 1, "errors": [], "mode": "all"}
    with Store.open(tmp_path / "state") as store:
        report = build_report(store, snap, compute_health(snap, []), [], [], run, T0)
    paths = write_reports(report, tmp_path / "reports", T0)
    for path in (paths.json, paths.html, paths.history_json, paths.history_html):
        assert _mode(path) == 0o600, path
    assert _mode(tmp_path / "reports") == 0o700 and _mode(tmp_path / "reports" / "history") == 0o700


def test_log_files_and_rotated_ones_are_owner_only_whatever_the_umask(tmp_path, open_umask):
    from mistwatch.service.logsetup import setup_logging

    handlers = setup_logging({"file": str(tmp_path / "logs" / "mistwatch.log"), "max_bytes": 200, "backups": 2},
                             stream=open(os.devnull, "w"))  # noqa: SIM115
    try:
        log = logging.getLogger("mistwatch.test")
        for i in range(20):
            log.warning("line %d of the log, long enough to rotate the file quickly", i)
    finally:
        for handler in handlers:
            handler.close()
        logging.getLogger("mistwatch").handlers.clear()
    files = sorted((tmp_path / "logs").iterdir())
    assert len(files) == 3  # mistwatch.log, .1, .2
    assert all(_mode(f) == 0o600 for f in files) and _mode(tmp_path / "logs") == 0o700


def test_run_writes_its_cycle_to_the_configured_log_file(tmp_path, simulator):
    config = {
        "mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id},
        "state_dir": "var", "rules": [str(REPO / "rules")], "notifiers": [{"name": "console", "type": "console"}],
        "log": {"file": "logs/mistwatch.log", "level": "info"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mistwatch", "run", "--mode", "monitor"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "MIST_API_TOKEN": simulator.token})
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "logs" / "mistwatch.log").read_text(encoding="utf-8")
    assert "run --mode monitor: cycle ok" in text
    assert simulator.token not in text


# -- settings -------------------------------------------------------------------------------------

def test_webhook_headers_not_named_as_credentials_are_not_redacted(notify_env, http_receiver):
    from fixtures_notify import T0, make_alert

    from mistwatch.secrets import redact

    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url(),
                           "headers": {"X-Source": "mistwatch", "Authorization": "Bearer header-token-123"}}])
    notify_env.notify([make_alert()], T0)
    assert http_receiver.requests[0].headers["X-Source"] == "mistwatch"
    assert redact("mistwatch run") == "mistwatch run"
    assert redact("sent Bearer header-token-123") == "sent ***"


def test_a_weekly_window_in_the_repeated_autumn_hour_is_open_once_for_its_local_span():
    from mistwatch.notify.settings import MaintenanceWindow

    # Europe/Dublin falls back on 25 Oct 2026: 02:00 IST becomes 01:00 GMT, so 01:00-02:00 happens twice
    window = MaintenanceWindow("patching", ZoneInfo("Europe/Dublin"), start=time(1, 0), end=time(1, 30))
    at = datetime(2026, 10, 24, 23, 0, tzinfo=timezone.utc)
    open_minutes = []
    while at < datetime(2026, 10, 25, 4, 0, tzinfo=timezone.utc):
        if window.active(at):
            open_minutes.append(at)
        at += timedelta(minutes=5)
    assert open_minutes[0] == datetime(2026, 10, 25, 0, 0, tzinfo=timezone.utc)  # 01:00 IST
    assert len(open_minutes) == 6  # 30 minutes, once
