"""The deployment's database connector: an embedded SQLite file (the default) or PostgreSQL.

:class:`Database` opens either a SQLite file (a path) or a PostgreSQL server (a
``postgresql://`` URL, with psycopg 3 and a small connection pool) behind one API:

- :meth:`Database.sql` runs one statement and returns all rows (a list of tuples);
- :meth:`Database.tx` is one write transaction; it yields a connection-like object whose
  ``execute(query, args)`` returns a cursor (``fetchone``/``fetchall``/``rowcount``).

SQL that runs on both: write ``?`` placeholders (translated to ``%s`` on PostgreSQL; a literal
``%`` is escaped for you). Standard ``INSERT ... ON CONFLICT (...) DO UPDATE SET x = excluded.x
WHERE ...`` and ``ON CONFLICT DO NOTHING`` work on both (do not write ``INSERT OR IGNORE`` or
``INSERT OR REPLACE``). Where the dialects differ, branch on :attr:`Database.dialect`
(``"sqlite"`` or ``"postgres"``), e.g. ``BLOB`` vs ``BYTEA`` in migrations. A transaction on
SQLite is ``BEGIN IMMEDIATE`` (it holds the file's write lock from the start); on PostgreSQL it is
READ COMMITTED: take :meth:`Database.serialize` (a transaction-scoped advisory lock) or ``SELECT ...
FOR UPDATE`` where two writers must not interleave a read and a write.

Schemas are versioned: see :mod:`atomscale_lab.vault.migrations`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from pathlib import Path

from atomscale_lab.errors import ConfigError


def _driver_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


DB_ERRORS = _driver_errors()
"""Exceptions a database driver raises (SQLite's, and psycopg's when installed)."""

SQLITE = "sqlite"
POSTGRES = "postgres"
_URL_PREFIXES = ("postgresql://", "postgres://")


def is_database_url(target) -> bool:
    """True when ``target`` is a PostgreSQL URL (not a SQLite path)."""
    return isinstance(target, str) and target.startswith(_URL_PREFIXES)


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(url)
    except Exception:  # not parseable: say nothing about it beyond the scheme
        return url.split("://", 1)[0] + "://…"
    parts.pop("password", None)
    return make_conninfo(**parts)


def connect(
    db_path: Path,
    *,
    synchronous: str = "FULL",
    secure_delete: bool = False,
    autocommit: bool = True,
    private: bool = True,
) -> sqlite3.Connection:
    """Open a SQLite file of the deployment in WAL mode, shareable across threads.

    Every registry (keys, API keys, log and audit heads, ingest state) opens its file here.
    ``autocommit`` leaves transactions to explicit ``BEGIN`` (else Python's implicit ones);
    ``secure_delete`` overwrites deleted rows (the key registry: wrapped keys of a deleted org);
    ``private`` makes the file 0600.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(db_path),
        timeout=30,
        check_same_thread=False,
        **({"isolation_level": None} if autocommit else {}),
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if secure_delete:
        conn.execute("PRAGMA secure_delete=ON")
    if private:
        with contextlib.suppress(OSError):
            os.chmod(db_path, 0o600)
    return conn


def _pg_query(query: str) -> str:
    # psycopg uses %s; a literal % must be doubled. Our SQL never has ? inside string literals.
    return query.replace("%", "%%").replace("?", "%s")


class _PgConn:
    """A psycopg connection inside a transaction, with sqlite3's ``execute`` signature."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, query: str, args=()):
        """Run one statement (``?`` placeholders); returns the psycopg cursor."""
        return self._conn.execute(_pg_query(query), tuple(args))

    def executemany(self, query: str, seq):
        """Run one statement once per argument tuple."""
        cur = self._conn.cursor()
        cur.executemany(_pg_query(query), [tuple(a) for a in seq])
        return cur


_POOLS: dict[tuple[str, int], object] = {}
_POOLS_LOCK = threading.Lock()


def _pool(url: str, max_size: int):
    """One pool per URL and process: a forked child opens its own (psycopg leaves inherited
    connections alone when a child drops them, so the parent's sessions survive)."""
    key = (url, os.getpid())
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            try:
                from psycopg_pool import ConnectionPool
            except ImportError:
                raise ConfigError(
                    "ATOMSCALE_DATABASE_URL is a PostgreSQL URL but psycopg is not installed: "
                    "pip install 'atomscale-lab[postgres]'"
                ) from None
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                kwargs={"autocommit": True},
                open=False,
                name="atomscale-db",
            )
            try:
                pool.open(wait=True, timeout=30)
            except Exception as e:
                pool.close()
                raise ConfigError(
                    f"cannot connect to the database {redact_url(url)}: {type(e).__name__}"
                ) from None
            _POOLS[key] = pool
        return pool


def close_pools() -> None:
    """Close this process's PostgreSQL pools (tests, and processes that stop cleanly)."""
    with _POOLS_LOCK:
        mine = [k for k in _POOLS if k[1] == os.getpid()]
        pools = [_POOLS.pop(k) for k in mine]
    for pool in pools:
        pool.close()


class Rows(list):
    """The rows of one statement, with the cursor methods callers of ``execute`` use."""

    def __init__(self, rows, rowcount: int = -1):
        super().__init__(rows)
        self.rowcount = rowcount

    def fetchone(self):
        """The first row, or None."""
        return self[0] if self else None

    def fetchall(self) -> list:
        """Every row."""
        return list(self)


class Database:
    """A registry's database: a SQLite file (``target`` a path) or PostgreSQL (a URL).

    On SQLite: a :func:`connect`-ed file behind one re-entrant lock (``conn`` and ``lock`` are
    that connection and lock). On PostgreSQL: connections from a pool shared by every
    ``Database`` of the same URL in this process, each statement in autocommit, :meth:`tx` one
    transaction on one connection. Both are safe to share between threads.
    """

    def __init__(self, target: Path | str, *, pool_size: int = 8, **connect_kw):
        if is_database_url(target):
            self.dialect = POSTGRES
            self.url = str(target)
            self.path = None
            self._pool_size = pool_size
            _pool(self.url, pool_size)  # fail early, with a clear error, if unreachable
            self.conn = None
            self.lock = None
        else:
            self.dialect = SQLITE
            self.url = None
            self.path = Path(target)
            self.conn = connect(self.path, **connect_kw)
            self.lock = threading.RLock()

    def __repr__(self) -> str:
        where = redact_url(self.url) if self.url else str(self.path)
        return f"Database({self.dialect}, {where})"

    @property
    def is_postgres(self) -> bool:
        """True on PostgreSQL."""
        return self.dialect == POSTGRES

    def sql(self, query: str, args=()) -> list:
        """Run one statement (``?`` placeholders); returns all rows (empty for a write)."""
        return list(self.execute(query, args))

    def execute(self, query: str, args=()) -> Rows:
        """Run one statement (autocommit); returns its :class:`Rows` (also ``rowcount``)."""
        if self.dialect == SQLITE:
            with self.lock:
                cur = self.conn.execute(query, args)
                return Rows(cur.fetchall(), cur.rowcount)
        with _pool(self.url, self._pool_size).connection() as conn:
            cur = conn.execute(_pg_query(query), tuple(args))
            return Rows(cur.fetchall() if cur.description is not None else [], cur.rowcount)

    @contextlib.contextmanager
    def tx(self):
        """One write transaction; yields a connection with ``execute``. On SQLite ``BEGIN
        IMMEDIATE`` holding the lock throughout; on PostgreSQL a transaction on one pooled
        connection (rolled back on an exception)."""
        if self.dialect == SQLITE:
            with self.lock:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            return
        with _pool(self.url, self._pool_size).connection() as conn, conn.transaction():
            yield _PgConn(conn)

    def serialize(self, tx, name: str) -> None:
        """Serialise transactions that name the same ``name`` until the end of ``tx``."""
        if self.dialect == POSTGRES:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (advisory_key(name),))

    def close(self) -> None:
        """Close the SQLite connection (PostgreSQL pools stay for other users in the process)."""
        if self.conn is not None:
            self.conn.close()


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL advisory locks, from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def database_url_of(settings) -> str | None:
    """The PostgreSQL URL of a ``Settings`` (``database_url``), or None for SQLite."""
    return getattr(settings, "database_url", None) or None
