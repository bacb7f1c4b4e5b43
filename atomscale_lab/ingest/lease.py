"""Which ingest replica owns an org: the per-org ingest lease (pure logic, no HTTP).

Several ingest replicas may share one PostgreSQL state database. Each org is owned by one replica
at a time: only the owner opens streams, accepts batches and finalizes for that org, so a run's
records and stream counters have one writer. Ownership is a PostgreSQL *session* advisory lock
(``pg_try_advisory_lock``) on a key derived from the org, taken on a connection used for nothing
else: when the owner dies its connection closes, PostgreSQL drops the lock, and the next replica
that is asked for the org takes it over.

What the lease does not have to guarantee: exactly-once. That rests on the unique
``(stream, batch id)`` claim in the state database (see ``core.py``): a zombie owner that lost its
lease without noticing can at worst accept a batch that no one else has claimed.

:class:`LocalLease` is the embedded default (one process, SQLite state): every org is held.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from atomscale_lab.errors import AtomscaleError

log = logging.getLogger(__name__)


class NotLeaseHolder(AtomscaleError):
    """Another ingest replica owns the org right now (HTTP 503; retry, possibly elsewhere)."""

    http_status = 503
    retry_after = 2


class Lease(Protocol):
    """Ownership of orgs by this process."""

    def acquire(self, org: str) -> bool:
        """Hold ``org`` (True), or learn that another process holds it (False). Idempotent."""
        ...

    def holds(self, org: str) -> bool:
        """Whether this process holds ``org`` now (no round trip)."""
        ...

    def release(self, org: str) -> None:
        """Give ``org`` up (no-op if not held)."""
        ...

    def close(self) -> None:
        """Give every org up."""
        ...


class LocalLease:
    """The embedded default: one process owns every org (a no-op lease)."""

    shared = False

    def acquire(self, org: str) -> bool:
        """Always True: nobody else can hold it."""
        return True

    def holds(self, org: str) -> bool:
        """Always True."""
        return True

    def release(self, org: str) -> None:
        """Nothing to give up."""

    def close(self) -> None:
        """Nothing to close."""


def lease_key(org: str, namespace: str = "") -> int:
    """The advisory-lock key of ``org``: a signed 64-bit integer, stable across processes and
    versions (a hash, never Python's ``hash``). ``namespace`` (the schema of the state tables)
    keeps deployments that share one database apart."""
    text = f"atomscale-lab/ingest-lease\x00{namespace}\x00{org}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLease:
    """Orgs held as PostgreSQL session advisory locks on one dedicated connection.

    ``connect()`` returns a new autocommit DB-API connection (psycopg) to the state database; it
    is used only for the locks. ``on_lost(orgs)`` is called (from the watchdog thread) when the
    connection breaks: every lock is gone with it, and the process must stop writing for those
    orgs until it holds them again. ``check_interval`` is how often the watchdog checks the
    connection; the server also probes the socket with TCP keepalives, so a replica that vanished
    from the network loses its locks within about ``keepalive`` seconds.
    """

    shared = True

    def __init__(
        self,
        connect: Callable[[], object],
        *,
        on_lost: Callable[[set[str]], None] | None = None,
        check_interval: float = 2.0,
        keepalive: int = 10,
    ):
        self._connect = connect
        self._on_lost = on_lost
        self._keepalive = keepalive
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._conn = None
        self._namespace = ""
        self._stop = threading.Event()
        self._interval = check_interval
        self._thread = threading.Thread(target=self._watch, name="ingest-lease", daemon=True)
        self._thread.start()

    def _session(self):
        if self._conn is None or getattr(self._conn, "closed", False):
            conn = self._connect()
            # The server side notices a silent peer only by keepalive probes (a dead process's
            # socket is closed by its kernel at once; a lost machine's is not).
            idle, interval, count = max(1, self._keepalive // 2), max(1, self._keepalive // 4), 2
            for name, value in (
                ("tcp_keepalives_idle", idle),
                ("tcp_keepalives_interval", interval),
                ("tcp_keepalives_count", count),
            ):
                conn.execute(f"SET {name} = {int(value)}")
            (self._namespace,) = conn.execute("SELECT current_schema()").fetchone()
            self._conn = conn
        return self._conn

    def acquire(self, org: str) -> bool:
        """``pg_try_advisory_lock`` on the org's key (never waits)."""
        with self._lock:
            if org in self._held:
                return True
            try:
                conn = self._session()
                key = lease_key(org, self._namespace)
                (got,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            except Exception as e:  # the connection broke: nothing is held any more
                self._lost_locked(e)
                return False
            if got:
                self._held.add(org)
                log.info("ingest lease: now owning org %s", org)
            return bool(got)

    def holds(self, org: str) -> bool:
        """Whether ``org`` is held (as of the last check of the connection)."""
        return org in self._held

    def held(self) -> set[str]:
        """The orgs held now."""
        return set(self._held)

    def release(self, org: str) -> None:
        """``pg_advisory_unlock`` of the org's key."""
        with self._lock:
            if org not in self._held:
                return
            self._held.discard(org)
            try:
                self._conn.execute(
                    "SELECT pg_advisory_unlock(%s)", (lease_key(org, self._namespace),)
                )
            except Exception as e:
                self._lost_locked(e)

    def _lost_locked(self, exc: Exception) -> None:
        lost, self._held = self._held, set()
        log.error("ingest lease: connection to the state database lost (%s)", type(exc).__name__)
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: S110 - already broken
                pass
        self._conn = None
        if lost and self._on_lost is not None:
            self._on_lost(lost)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if self._conn is None or not self._held:
                    continue
                try:
                    self._conn.execute("SELECT 1").fetchone()
                except Exception as e:
                    self._lost_locked(e)

    def close(self) -> None:
        """Stop the watchdog and close the connection (which drops every lock)."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._held = set()
            if self._conn is not None:
                try:
                    # released now: the server ends a closed session a moment after the client
                    # returns, and a successor asking in that moment would be refused
                    self._conn.execute("SELECT pg_advisory_unlock_all()")
                except Exception:  # noqa: S110 - broken: the server drops the locks anyway
                    pass
                try:
                    self._conn.close()
                finally:
                    self._conn = None
