"""The key registry (``registry.sqlite`` or PostgreSQL): per-org keys, versioned, wrapped by the
``Kms``. The database connector every registry uses (:func:`connect`, :class:`Database`) lives in
:mod:`atomscale_lab.vault.db` and is re-exported here.

:class:`KeyRegistry` stores per-org keys (purposes ``data``, ``context``, ``audit``, ``sign``),
versioned, wrapped by the ``Kms``. A ``sign`` key is the 32-byte seed of the org's Ed25519
commit-log signing key.
"""

from __future__ import annotations

import logging
import secrets
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
from atomscale_lab.vault.db import Database, connect, is_database_url  # noqa: F401 - re-exported
from atomscale_lab.vault.kms import (
    _KEY_LEN,
    Kms,
    _key_fp,
)
from atomscale_lab.vault.migrations import ensure

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _aad(org: str, purpose: str, version: int) -> bytes:
    return f"atomscale-lab/org-key/{org}/{purpose}/v{version}".encode()


class KeyRegistry:
    """Per-org keys wrapped by a ``Kms``, in SQLite or PostgreSQL (``db``: a path, a
    ``postgresql://`` URL or a :class:`Database`). Only the admin side and hub services use it."""

    def __init__(self, db: Path | str | Database, kms: Kms):
        if not isinstance(db, Database):
            db = Database(db if is_database_url(db) else Path(db), secure_delete=True)
        self._db = db
        self.db_path = db.path
        self.kms = kms
        self._lock = threading.RLock()
        ensure(db, "keys")

    def close(self) -> None:
        """Close the SQLite connection."""
        self._db.close()

    def _check(self, purpose: str) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown key purpose {purpose!r}; expected one of {PURPOSES}")

    def _insert(self, tx, org: str, purpose: str, version: int) -> None:
        raw = secrets.token_bytes(_KEY_LEN)
        blob = self.kms.wrap(raw, _aad(org, purpose, version))
        tx.execute(
            "INSERT INTO org_keys (org, purpose, version, wrapped, kms_key_id, fingerprint, "
            "created) VALUES (?,?,?,?,?,?,?)",
            (org, purpose, version, blob, self.kms.key_id, _key_fp(raw), _now()),
        )

    def _one(self, query: str, args=()):
        rows = self._db.sql(query, args)
        return rows[0] if rows else None

    def create_org(self, org: str) -> None:
        """Create version 1 of the org's data, context and audit keys."""
        with self._lock, self._db.tx() as tx:
            self._db.serialize(tx, f"atomscale-lab/keys/{org}")
            if tx.execute("SELECT 1 FROM org_keys WHERE org=? LIMIT 1", (org,)).fetchone():
                raise OrgExists(f"org {org!r} already has keys")
            # A re-created org gets fresh keys; its old (shredded) data stays unreadable.
            tx.execute("DELETE FROM shredded_orgs WHERE org=?", (org,))
            for purpose in PURPOSES:
                self._insert(tx, org, purpose, 1)

    def _missing(self, org: str) -> Exception:
        if self._one("SELECT 1 FROM shredded_orgs WHERE org=?", (org,)):
            return KeyUnavailable(f"the keys of org {org!r} were destroyed; its data is unreadable")
        return UnknownOrg(f"org {org!r} has no keys (unknown org)")

    def _unwrap(self, org: str, purpose: str, version: int, blob: bytes) -> bytes:
        try:
            return self.kms.unwrap(bytes(blob), _aad(org, purpose, version))
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
            rows = self._db.sql(
                "SELECT purpose, version, wrapped FROM org_keys WHERE org=? "
                "AND purpose IN ('data', 'sign')",
                (org,),
            )
            if not any(p == "data" for p, _, _ in rows):
                raise self._missing(org)
            keys = {v: self._unwrap(org, "data", v, b) for p, v, b in rows if p == "data"}
            seeds = {v: self._unwrap(org, "sign", v, b) for p, v, b in rows if p == "sign"}
        verify = {v: verify_key_of(k) for v, k in seeds.items()}
        top = max(seeds) if seeds and signing else None
        return OrgKeys(org, keys, verify, None if top is None else (top, seeds[top]))

    def ensure_signing_key(self, org: str) -> bool:
        """Create version 1 of the org's signing key if it has none (orgs made before commit-log
        signing). Returns True when this call created it."""
        with self._lock, self._db.tx() as tx:
            self._db.serialize(tx, f"atomscale-lab/keys/{org}")
            if not tx.execute(
                "SELECT 1 FROM org_keys WHERE org=? AND purpose='data'", (org,)
            ).fetchone():
                raise self._missing(org)
            if tx.execute(
                "SELECT 1 FROM org_keys WHERE org=? AND purpose='sign'", (org,)
            ).fetchone():
                return False
            self._insert(tx, org, "sign", 1)
        log.info("created the commit-log signing key of org %s", org)
        return True

    def key(self, org: str, purpose: str, version: int | None = None) -> tuple[int, bytes]:
        """One key (``purpose`` in PURPOSES), latest version by default."""
        self._check(purpose)
        with self._lock:
            if version is None:
                row = self._one(
                    "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose=? "
                    "ORDER BY version DESC LIMIT 1",
                    (org, purpose),
                )
            else:
                row = self._one(
                    "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose=? AND version=?",
                    (org, purpose, version),
                )
            if row is None:
                if version is not None and self._one(
                    "SELECT 1 FROM org_keys WHERE org=? LIMIT 1", (org,)
                ):
                    raise KeyUnavailable(f"org {org!r} has no {purpose} key version {version}")
                raise self._missing(org)
            return row[0], self._unwrap(org, purpose, row[0], row[1])

    def rotate(self, org: str, purpose: str = "data") -> int:
        """Add a new version for new writes; old versions stay for reading. Returns the version."""
        self._check(purpose)
        with self._lock, self._db.tx() as tx:
            self._db.serialize(tx, f"atomscale-lab/keys/{org}")
            (top,) = tx.execute(
                "SELECT MAX(version) FROM org_keys WHERE org=? AND purpose=?", (org, purpose)
            ).fetchone()
            if top is None:
                raise self._missing(org)
            self._insert(tx, org, purpose, top + 1)
        log.info("rotated %s key of org %s to v%s", purpose, org, top + 1)
        return top + 1

    def versions(self, org: str) -> dict[str, list[int]]:
        """Key versions per purpose (no material)."""
        with self._lock:
            rows = self._db.sql(
                "SELECT purpose, version FROM org_keys WHERE org=? ORDER BY purpose, version",
                (org,),
            )
        if not rows:
            raise self._missing(org)
        out: dict[str, list[int]] = {p: [] for p in PURPOSES}
        for p, v in rows:
            out.setdefault(p, []).append(v)
        return out

    def fingerprints(self, org: str) -> dict[str, dict[int, str]]:
        """Non-secret fingerprints per purpose and version (as :meth:`OrgKeys.fingerprint`)."""
        with self._lock:
            rows = self._db.sql(
                "SELECT purpose, version, fingerprint FROM org_keys WHERE org=?", (org,)
            )
        if not rows:
            raise self._missing(org)
        out: dict[str, dict[int, str]] = {}
        for p, v, f in rows:
            out.setdefault(p, {})[v] = f
        return out

    def orgs(self) -> list[str]:
        """Orgs that have keys."""
        with self._lock:
            return [r[0] for r in self._db.sql("SELECT DISTINCT org FROM org_keys ORDER BY org")]

    def _checkpoint(self) -> None:
        # Old page images of the SQLite file may survive in the WAL: fold them in.
        if not self._db.is_postgres:
            self._db.sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def rewrap(self, new_kms: Kms) -> int:
        """Re-wrap every stored key under ``new_kms`` (root-key rotation). Returns count."""
        with self._lock:
            with self._db.tx() as tx:
                self._db.serialize(tx, "atomscale-lab/keys")
                rows = tx.execute("SELECT org, purpose, version, wrapped FROM org_keys").fetchall()
                for org, purpose, version, blob in rows:
                    aad = _aad(org, purpose, version)
                    raw = self._unwrap(org, purpose, version, blob)
                    tx.execute(
                        "UPDATE org_keys SET wrapped=?, kms_key_id=? "
                        "WHERE org=? AND purpose=? AND version=?",
                        (new_kms.wrap(raw, aad), new_kms.key_id, org, purpose, version),
                    )
            self.kms = new_kms
            self._checkpoint()
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
            with self._db.tx() as tx:
                self._db.serialize(tx, "atomscale-lab/keys")
                rows = tx.execute("SELECT org, purpose, version, wrapped FROM org_keys").fetchall()
                pairs = [(bytes(b), _aad(o, p, v)) for o, p, v, b in rows]
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
                    tx.execute(
                        "UPDATE org_keys SET wrapped=?, kms_key_id=? "
                        "WHERE org=? AND purpose=? AND version=?",
                        (new_blob, kms.key_id, org, purpose, version),
                    )
            self._checkpoint()
            log.info("re-wrapped %s keys in place under %s", len(rows), kms.key_id)
            return len(rows)

    def kms_key_ids(self) -> dict[str, int]:
        """How many stored keys each wrapping-key id made (no material)."""
        with self._lock:
            return dict(
                self._db.sql("SELECT kms_key_id, COUNT(*) FROM org_keys GROUP BY kms_key_id")
            )

    def shred(self, org: str) -> None:
        """Destroy every key of ``org`` (overwrite, delete, VACUUM). Its data is then unreadable.

        On PostgreSQL the rows are overwritten and deleted, then ``VACUUM`` reclaims the dead
        row versions; PostgreSQL has no ``secure_delete``: freed space is not zeroed, so copies
        may remain in the data files until overwritten, in the WAL and in backups (see
        docs/scale-out.md).
        """
        with self._lock:
            with self._db.tx() as tx:
                self._db.serialize(tx, f"atomscale-lab/keys/{org}")
                if self._db.is_postgres:
                    tx.execute(
                        "UPDATE org_keys SET wrapped=decode(repeat('00', length(wrapped)), 'hex'), "
                        "fingerprint='' WHERE org=?",
                        (org,),
                    )
                else:
                    tx.execute(
                        "UPDATE org_keys SET wrapped=zeroblob(length(wrapped)), fingerprint='' "
                        "WHERE org=?",
                        (org,),
                    )
                tx.execute("DELETE FROM org_keys WHERE org=?", (org,))
                tx.execute(
                    "INSERT INTO shredded_orgs (org, shredded) VALUES (?,?) ON CONFLICT (org) "
                    "DO UPDATE SET shredded = excluded.shredded",
                    (org, _now()),
                )
            if self._db.is_postgres:
                self._db.sql("VACUUM org_keys")
            else:
                # Old page images may survive in the WAL and free pages: checkpoint, rebuild.
                self._checkpoint()
                self._db.sql("VACUUM")
                self._checkpoint()
            log.info("shredded the keys of org %s", org)
