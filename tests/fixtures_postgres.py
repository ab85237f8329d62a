"""A real, throwaway PostgreSQL server for the tests that run the store on both backends.

``pg_server`` (session): ``initdb`` + ``pg_ctl`` a cluster in a temp folder, on a free loopback port,
with durability off (fsync, synchronous_commit) since the data dies with the session. initdb refuses
to run as root, so as root the cluster runs as the ``nobody`` user (``runuser``). Tests that need it
skip, naming the reason, only where no server can be started (no initdb on the PATH, or no way to
drop root). ``MISTWATCH_TEST_PG_URL`` points the tests at an existing server instead (a superuser
URL: each test creates and drops its own database).

``pg_url``: a fresh, empty schema on that server for one test, dropped afterwards;
``pg_database_url`` a whole database.
``store_target``: parametrized over ``sqlite`` and ``postgresql`` -- what ``Store.open`` takes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A running cluster: ``admin_url`` (superuser, database ``postgres``) and per-test databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.shared_db: str | None = None

    def url(self, dbname: str, schema: str | None = None) -> str:
        parts = urlsplit(self.admin_url)
        query = f"options=-csearch_path%3D{schema}" if schema else parts.query
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, query, ""))

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = "mw_" + secrets.token_hex(6)
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_schema(self) -> str:
        """A fresh schema in the shared test database: instant, where CREATE DATABASE takes ~1 s."""
        import psycopg

        if self.shared_db is None:
            self.shared_db = self.create_database()
        name = "s_" + secrets.token_hex(6)
        with psycopg.connect(self.url(self.shared_db), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return name

    def drop_schema(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(self.shared_db), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _start_cluster(folder: Path) -> tuple[PgServer, list[str]]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl on the PATH): apt-get install postgresql")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the throwaway cluster as nobody
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        prefix = [runuser, "-u", "nobody", "--"]
        shutil.chown(folder, user="nobody")
    data, port = folder / "data", _free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "mistwatch", "-E", "UTF8",
                    "--locale=C", "--no-sync"], check=True, capture_output=True, cwd=folder)
    options = (f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w",
                    "start"], check=True, capture_output=True, cwd=folder)
    stop = [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"]
    return PgServer(f"postgresql://mistwatch@127.0.0.1:{port}/postgres"), stop


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("MISTWATCH_TEST_PG_URL")
    if external:
        yield PgServer(external)
        return
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")
    folder = Path(tempfile.mkdtemp(prefix="mistwatch-pg-"))
    try:
        server, stop = _start_cluster(folder)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        log = (folder / "server.log")
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
        if log.exists():
            detail = log.read_text(errors="replace").strip().splitlines()[-1:]
        pytest.skip(f"cannot start a PostgreSQL server for the tests: {detail[0]}")
    try:
        yield server
    finally:
        subprocess.run(stop, capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """An empty schema of its own (search_path in the URL) for one test."""
    schema = pg_server.create_schema()
    try:
        yield pg_server.url(pg_server.shared_db, schema)
    finally:
        pg_server.drop_schema(schema)


@pytest.fixture
def pg_database_url(pg_server: PgServer) -> Iterator[str]:
    """A whole database of its own (advisory locks are per database): for active/standby tests."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """A state folder (SQLite) or a fresh PostgreSQL database URL: the store tests run on both."""
    if request.param == "sqlite":
        return tmp_path / "state"
    return request.getfixturevalue("pg_url")
