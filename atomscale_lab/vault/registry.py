"""The key registry (``registry.sqlite``): per-org keys, versioned, wrapped by the ``Kms``, and
the one SQLite connector every registry of the deployment uses (:func:`connect`).

:class:`KeyRegistry` stores per-org keys (purposes ``data``, ``context``, ``audit``, ``sign``),
versioned, wrapped by the ``Kms``. A ``sign`` key is the 32-byte seed of the org's Ed25519
commit-log signing key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from atomscale_lab.errors import (
    KeyUnavailable,
    OrgExists,
    RootKeyError,
    UnknownOrg,
)
from atomscale_lab.vault.crypto import (
    PURPOSES,
    OrgKeys,
    verify_key_of,
)
from atomscale_lab.vault.kms import (
    _KEY_LEN,
    Kms,
    _key_fp,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS org_keys (
    org TEXT NOT NULL, purpose TEXT NOT NULL, version INTEGER NOT NULL,
    wrapped BLOB NOT NULL, kms_key_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (org, purpose, version));
CREATE TABLE IF NOT EXISTS shredded_orgs (org TEXT PRIMARY KEY, shredded TEXT NOT NULL);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _aad(org: str, purpose: str, version: int) -> bytes:
    return f"atomscale-lab/org-key/{org}/{purpose}/v{version}".encode()


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


class Database:
    """A :func:`connect`-ed SQLite file behind one re-entrant lock, for a registry whose methods
    run on several threads: :meth:`sql` for one statement, :meth:`tx` for a transaction."""

    def __init__(self, db_path: Path, **connect_kw):
        self.conn = connect(db_path, **connect_kw)
        self.lock = threading.RLock()

    def sql(self, query: str, args=()) -> list:
        """Run one statement; returns all rows."""
        with self.lock:
            return self.conn.execute(query, args).fetchall()

    @contextlib.contextmanager
    def tx(self):
        """One ``BEGIN IMMEDIATE`` transaction, holding the lock throughout (the connection is
        in autocommit mode otherwise)."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")


class KeyRegistry:
    """Per-org keys wrapped by a ``Kms``, in SQLite. Only the admin side and hub services use it."""

    def __init__(self, db_path: Path, kms: Kms):
        self.db_path = Path(db_path)
        self.kms = kms
        self._lock = threading.RLock()
        self._db = connect(self.db_path, secure_delete=True)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the SQLite connection."""
        self._db.close()

    def _check(self, purpose: str) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown key purpose {purpose!r}; expected one of {PURPOSES}")

    def _insert(self, org: str, purpose: str, version: int) -> None:
        raw = secrets.token_bytes(_KEY_LEN)
        blob = self.kms.wrap(raw, _aad(org, purpose, version))
        self._db.execute(
            "INSERT INTO org_keys VALUES (?,?,?,?,?,?,?)",
            (org, purpose, version, blob, self.kms.key_id, _key_fp(raw), _now()),
        )

    def create_org(self, org: str) -> None:
        """Create version 1 of the org's data, context and audit keys."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute(
                    "SELECT 1 FROM org_keys WHERE org=? LIMIT 1", (org,)
                ).fetchone():
                    raise OrgExists(f"org {org!r} already has keys")
                # A re-created org gets fresh keys; its old (shredded) data stays unreadable.
                self._db.execute("DELETE FROM shredded_orgs WHERE org=?", (org,))
                for purpose in PURPOSES:
                    self._insert(org, purpose, 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _missing(self, org: str) -> Exception:
        if self._db.execute("SELECT 1 FROM shredded_orgs WHERE org=?", (org,)).fetchone():
            return KeyUnavailable(f"the keys of org {org!r} were destroyed; its data is unreadable")
        return UnknownOrg(f"org {org!r} has no keys (unknown org)")

    def _unwrap(self, org: str, purpose: str, version: int, blob: bytes) -> bytes:
        try:
            return self.kms.unwrap(blob, _aad(org, purpose, version))
        except RootKeyError:
            raise
        except Exception:  # an external KMS's own error text could carry details; keep it out
            log.warning("KMS unwrap failed for org %s %s v%s", org, purpose, version)
            raise RootKeyError("the root key does not match the stored keys") from None

    def org_keys(self, org: str, *, signing: bool = True) -> OrgKeys:
        """All data-key versions of ``org`` (unwrapped), the verify keys of every signing-key
        version and (``signing``) the newest signing key. Raises ``KeyUnavailable`` if shredded.

        An org created before commit-log signing has no ``sign`` rows: its ``OrgKeys`` then has
        no verify or signing key until :meth:`ensure_signing_key` makes one.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose='data'", (org,)
            ).fetchall()
            if not rows:
                raise self._missing(org)
            keys = {v: self._unwrap(org, "data", v, b) for v, b in rows}
            seeds = {
                v: self._unwrap(org, "sign", v, b)
                for v, b in self._db.execute(
                    "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose='sign'", (org,)
                ).fetchall()
            }
        verify = {v: verify_key_of(k) for v, k in seeds.items()}
        top = max(seeds) if seeds and signing else None
        return OrgKeys(org, keys, verify, None if top is None else (top, seeds[top]))

    def ensure_signing_key(self, org: str) -> bool:
        """Create version 1 of the org's signing key if it has none (orgs made before commit-log
        signing). Returns True when this call created it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._db.execute(
                    "SELECT 1 FROM org_keys WHERE org=? AND purpose='data'", (org,)
                ).fetchone():
                    raise self._missing(org)
                if self._db.execute(
                    "SELECT 1 FROM org_keys WHERE org=? AND purpose='sign'", (org,)
                ).fetchone():
                    self._db.execute("COMMIT")
                    return False
                self._insert(org, "sign", 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            log.info("created the commit-log signing key of org %s", org)
            return True

    def key(self, org: str, purpose: str, version: int | None = None) -> tuple[int, bytes]:
        """One key (``purpose`` in PURPOSES), latest version by default."""
        self._check(purpose)
        with self._lock:
            if version is None:
                row = self._db.execute(
                    "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose=? "
                    "ORDER BY version DESC LIMIT 1",
                    (org, purpose),
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose=? AND version=?",
                    (org, purpose, version),
                ).fetchone()
            if row is None:
                if (
                    version is not None
                    and self._db.execute(
                        "SELECT 1 FROM org_keys WHERE org=? LIMIT 1", (org,)
                    ).fetchone()
                ):
                    raise KeyUnavailable(f"org {org!r} has no {purpose} key version {version}")
                raise self._missing(org)
            return row[0], self._unwrap(org, purpose, row[0], row[1])

    def rotate(self, org: str, purpose: str = "data") -> int:
        """Add a new version for new writes; old versions stay for reading. Returns the version."""
        self._check(purpose)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (top,) = self._db.execute(
                    "SELECT MAX(version) FROM org_keys WHERE org=? AND purpose=?", (org, purpose)
                ).fetchone()
                if top is None:
                    raise self._missing(org)
                self._insert(org, purpose, top + 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            log.info("rotated %s key of org %s to v%s", purpose, org, top + 1)
            return top + 1

    def versions(self, org: str) -> dict[str, list[int]]:
        """Key versions per purpose (no material)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT purpose, version FROM org_keys WHERE org=? ORDER BY purpose, version",
                (org,),
            ).fetchall()
        if not rows:
            raise self._missing(org)
        out: dict[str, list[int]] = {p: [] for p in PURPOSES}
        for p, v in rows:
            out.setdefault(p, []).append(v)
        return out

    def fingerprints(self, org: str) -> dict[str, dict[int, str]]:
        """Non-secret fingerprints per purpose and version (as :meth:`OrgKeys.fingerprint`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT purpose, version, fingerprint FROM org_keys WHERE org=?", (org,)
            ).fetchall()
        if not rows:
            raise self._missing(org)
        out: dict[str, dict[int, str]] = {}
        for p, v, f in rows:
            out.setdefault(p, {})[v] = f
        return out

    def orgs(self) -> list[str]:
        """Orgs that have keys."""
        with self._lock:
            return [
                r[0] for r in self._db.execute("SELECT DISTINCT org FROM org_keys ORDER BY org")
            ]

    def rewrap(self, new_kms: Kms) -> int:
        """Re-wrap every stored key under ``new_kms`` (root-key rotation). Returns count."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT org, purpose, version, wrapped FROM org_keys"
                ).fetchall()
                for org, purpose, version, blob in rows:
                    aad = _aad(org, purpose, version)
                    raw = self._unwrap(org, purpose, version, blob)
                    self._db.execute(
                        "UPDATE org_keys SET wrapped=?, kms_key_id=? "
                        "WHERE org=? AND purpose=? AND version=?",
                        (new_kms.wrap(raw, aad), new_kms.key_id, org, purpose, version),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.kms = new_kms
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("re-wrapped %s keys under %s", len(rows), new_kms.key_id)
            return len(rows)

    def rewrap_in_kms(self) -> int:
        """Re-wrap every stored key under the KMS's newest wrapping-key version. Returns count.

        An external KMS with a ``rewrap(blob, aad)`` member re-encrypts inside the KMS (the org
        key never comes out), in batches if it has ``rewrap_many(pairs)``; otherwise each key is
        unwrapped and wrapped again.
        """
        kms = self.kms
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT org, purpose, version, wrapped FROM org_keys"
                ).fetchall()
                pairs = [(b, _aad(o, p, v)) for o, p, v, b in rows]
                if hasattr(kms, "rewrap_many"):
                    new_blobs = kms.rewrap_many(pairs)
                elif hasattr(kms, "rewrap"):
                    new_blobs = [kms.rewrap(blob, aad) for blob, aad in pairs]
                else:
                    new_blobs = [
                        kms.wrap(self._unwrap(o, p, v, b), _aad(o, p, v)) for o, p, v, b in rows
                    ]
                if len(new_blobs) != len(rows):
                    raise RootKeyError("the KMS did not re-wrap every stored key")
                for (org, purpose, version, _), new_blob in zip(rows, new_blobs, strict=True):
                    self._db.execute(
                        "UPDATE org_keys SET wrapped=?, kms_key_id=? "
                        "WHERE org=? AND purpose=? AND version=?",
                        (new_blob, kms.key_id, org, purpose, version),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("re-wrapped %s keys in place under %s", len(rows), kms.key_id)
            return len(rows)

    def kms_key_ids(self) -> dict[str, int]:
        """How many stored keys each wrapping-key id made (no material)."""
        with self._lock:
            return dict(
                self._db.execute(
                    "SELECT kms_key_id, COUNT(*) FROM org_keys GROUP BY kms_key_id"
                ).fetchall()
            )

    def shred(self, org: str) -> None:
        """Destroy every key of ``org`` (overwrite, delete, VACUUM). Its data is then unreadable."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE org_keys SET wrapped=zeroblob(length(wrapped)), fingerprint='' "
                    "WHERE org=?",
                    (org,),
                )
                self._db.execute("DELETE FROM org_keys WHERE org=?", (org,))
                self._db.execute("INSERT OR REPLACE INTO shredded_orgs VALUES (?,?)", (org, _now()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # Old page images may survive in the WAL and free pages: checkpoint, then rebuild.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("shredded the keys of org %s", org)
