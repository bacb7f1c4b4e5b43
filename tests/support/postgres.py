"""A private PostgreSQL cluster for the tests and benchmarks, on 127.0.0.1 on a free port.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` system user
(``runuser``); its data folder is a fresh folder under the system temp dir (pytest's own temp
folders are private to root). Started once per pytest process (:func:`postgres_cluster`, session
scope), stopped with ``pg_ctl stop -m fast`` and checked by the postmaster's process id.

Isolation is one schema per test (:func:`pg_url`): a URL whose ``search_path`` is a new schema,
so tests of several suites share one cluster and never see each other's tables.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.net import free_port

SUPERUSER = "atomscale"


def pg_bindir() -> Path:
    """Folder of ``initdb``/``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (no initdb): run `make setup`")
    return Path(candidates[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    # initdb and the server refuse root: run them as the postgres system user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PgCluster:
    """One private cluster: :meth:`start`, :meth:`url`, :meth:`new_schema`, :meth:`stop`."""

    def __init__(self):
        self.bindir = pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="atomscale-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self.pid: int | None = None

    def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            _as_owner(cmd), check=True, capture_output=True, text=True, timeout=120, **kw
        )

    def start(self) -> PgCluster:
        """initdb (trust auth, superuser ``atomscale``) and start on a free port."""
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )
        self.port = free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data),
                "-l",
                str(self.dir / "server.log"),
                "-o",
                opts,
                "start",
            ]
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, schema: str | None = None):
        """A ``postgresql://`` URL of the cluster (``schema``: its ``search_path``)."""
        u = f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"
        if schema:
            u += "?options=" + quote(f"-csearch_path={schema}", safe="")
        return u

    def execute(self, *statements: str, dbname: str = "postgres") -> None:
        """Run statements as the superuser (autocommit)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            for s in statements:
                conn.execute(s)

    def new_schema(self, prefix: str = "t") -> str:
        """A new empty schema; returns its name."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.execute(f"CREATE SCHEMA {name}")
        return name

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; then wait until the postmaster's pid is gone."""
        if self.pid is None:
            return
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        except subprocess.CalledProcessError:
            pass  # checked below by pid
        end = time.monotonic() + 30
        while _alive(self.pid) and time.monotonic() < end:
            time.sleep(0.05)
        if _alive(self.pid):
            os.kill(self.pid, 9)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster():
    """The private PostgreSQL cluster of this pytest process (started on first use)."""
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        from atomscale_lab.vault.db import close_pools

        close_pools()
        cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster):
    """A URL of the private cluster whose tables live in a new schema of their own (one per
    test); the process's connection pools are closed after the test."""
    from atomscale_lab.vault.db import close_pools

    schema = postgres_cluster.new_schema()
    yield postgres_cluster.url(schema=schema)
    close_pools()
    postgres_cluster.execute(f"DROP SCHEMA {schema} CASCADE")


def upgraded(target):
    """``target`` (a URL or a SQLite path) after ``db upgrade`` of every registered component;
    returns ``target``."""
    from atomscale_lab.vault.db import Database
    from atomscale_lab.vault.migrations import upgrade

    db = Database(target)
    upgrade(db)
    db.close()
    return target


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """Where registries live, once per backend: a SQLite file, or a new upgraded schema of the
    private cluster (a ``postgresql://`` URL); both upgraded."""
    if request.param == "sqlite":
        return upgraded(tmp_path / "registry.sqlite")
    return upgraded(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def db_backend(request, home, monkeypatch):
    """Run a test once per backend: unset, or ``ATOMSCALE_DATABASE_URL`` set to a new upgraded
    schema (after ``home``, which clears the variable). Returns the URL or None."""
    if request.param == "sqlite":
        monkeypatch.delenv("ATOMSCALE_DATABASE_URL", raising=False)
        return None
    url = upgraded(request.getfixturevalue("pg_url"))
    monkeypatch.setenv("ATOMSCALE_DATABASE_URL", url)
    return url
