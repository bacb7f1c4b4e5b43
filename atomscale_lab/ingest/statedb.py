"""Where the ingest service keeps its state: SQLite files beside the WAL (the embedded default),
or the deployment's shared database when ``ATOMSCALE_DATABASE_URL`` names one (PostgreSQL).

The shared database holds the same tables (API keys, streams, batch claims, flush intents, the
compatibility layer's records), created by numbered migrations (``atomscale-lab db upgrade``).
Several ingest replicas may then share it; each keeps its own WAL (its volume) and its own
``replica`` id (a file in the state folder, so it survives a restart on the same volume), and
each org is owned by one replica at a time (:mod:`atomscale_lab.ingest.lease`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from atomscale_lab.ingest.lease import AdvisoryLease, LocalLease
from atomscale_lab.vault.db import Database


def replica_id(state_dir: Path) -> str:
    """This replica's id: made once, kept in ``state_dir/replica`` (its WAL volume)."""
    path = Path(state_dir) / "replica"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    rid = "r-" + secrets.token_hex(6)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(rid + "\n")
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # two starts at once: the first link wins, the other reads it
    except FileExistsError:
        rid = path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return rid


def sqlite_database(path: Path, **connect_kw) -> Database:
    """The embedded default: one SQLite file."""
    return Database(Path(path), **connect_kw)


def is_sqlite(db) -> bool:
    """Whether ``db`` is an embedded SQLite file (not the shared database)."""
    return getattr(db, "dialect", "sqlite") == "sqlite"


def database_url(settings) -> str | None:
    """The deployment's PostgreSQL URL (``ATOMSCALE_DATABASE_URL``), or None."""
    from atomscale_lab.vault.db import database_url_of

    return database_url_of(settings)


def shared(settings):
    """The deployment's shared database with the ingest tables at the version this release
    needs, or None without ``ATOMSCALE_DATABASE_URL`` (then each store keeps its SQLite file)."""
    url = database_url(settings)
    if not url:
        return None
    from atomscale_lab.ingest import migrations  # noqa: F401 - registers the ingest schema
    from atomscale_lab.vault.migrations import ensure

    db = Database(url)
    ensure(db, migrations.COMPONENT)
    return db


def open_state(settings, state_dir: Path, name: str):
    """The database of the ingest store ``name`` (``state``, ``sdk``): shared, or
    ``state_dir/<name>.sqlite``."""
    return shared(settings) or sqlite_database(Path(state_dir) / f"{name}.sqlite")


def make_lease(settings, on_lost=None):
    """The org lease: PostgreSQL advisory locks with a shared database, else :class:`LocalLease`."""
    url = database_url(settings)
    if not url:
        return LocalLease()

    def connect():
        import psycopg

        # A session of its own, outside the pool: the locks live exactly as long as it does.
        return psycopg.connect(url, autocommit=True, connect_timeout=10)

    return AdvisoryLease(connect, on_lost=on_lost)


def close(db) -> None:
    """Close ``db`` (a SQLite file's connection; a shared pool stays for the process)."""
    if db is not None:
        db.close()
