"""Keys: the root key, the KMS plug-in interface, the per-org key registry, and the per-org
Parquet modular-encryption factory.

- Root key text: ``;``-separated base64url keys of 32 bytes, optionally prefixed ``ask1:``; the
  first wraps, all unwrap (so rotation is: prepend a new key, run ``rewrap``, drop the old one).
- ``Kms`` is the plug-in interface (``wrap``/``unwrap``/``key_id``); ``LocalKms`` implements it
  with the root key; an external KMS (Vault transit, AWS KMS) implements the same three members.
- ``KeyRegistry`` stores per-org keys (purposes ``data``, ``context``, ``audit``, ``sign``),
  versioned, wrapped by the ``Kms`` in ``registry.sqlite``. A ``sign`` key is the 32-byte seed of
  the org's Ed25519 commit-log signing key.
- ``OrgKeys`` is what a process holds for one org: ``{version: bytes}`` of the *data* key, the
  Ed25519 verify (public) keys of every ``sign`` version, and, for writers only, the newest signing
  key. It is what the key service releases to service identities. ``OrgCrypto`` builds the pyarrow
  CryptoFactory from it, signs and verifies commit-log lines and seals their statistics.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atomscale_lab.errors import (
    AtomscaleError,
    ConfigError,
    KeyUnavailable,
    OrgExists,
    PermissionDenied,
    RootKeyError,
    UnknownOrg,
)
from atomscale_lab.vault.settings import load_root_key_text

log = logging.getLogger(__name__)

PURPOSES = ("data", "context", "audit", "sign")
ROOT_KEY_PREFIX = "ask1:"
ENV_KMS = "ATOMSCALE_KMS"
_KEY_LEN = 32
_NONCE_LEN = 12
_FP_LABEL = b"atomscale-lab key fingerprint v1"
_EMPTY = "the root key is empty (make one with `atomscale-lab root-key generate`)"


class Kms(Protocol):
    """An external key-management service that wraps and unwraps org keys under a root key.

    How an external KMS plugs in: write a class with

    - ``key_id`` (str): a non-secret id of the wrapping key in use (recorded next to each blob);
    - ``wrap(plaintext, aad) -> bytes`` and ``unwrap(blob, aad) -> bytes``, where ``aad`` must be
      bound to the blob (Vault transit: ``context``; AWS KMS: ``EncryptionContext``) and ``unwrap``
      raises :class:`~atomscale_lab.errors.RootKeyError` when it cannot decrypt;

    and a no-argument constructor (or a ``from_env()`` classmethod) that reads its own settings from
    the environment. Select it with ``ATOMSCALE_KMS=package.module:ClassName``; :func:`load_kms`
    imports it. Without ``ATOMSCALE_KMS`` the deployment uses :class:`LocalKms` and the root key.
    """

    key_id: str
    """A non-secret identifier of the current wrapping key (e.g. a fingerprint)."""

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext`` (a key) bound to ``aad``; returns an opaque blob."""

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob made by :meth:`wrap` (any known root key); raises ``RootKeyError``."""


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_root_key() -> str:
    """Return a new root key in the text format ``ATOMSCALE_ROOT_KEY`` takes."""
    return ROOT_KEY_PREFIX + _b64e(secrets.token_bytes(_KEY_LEN))


def parse_root_keys(text: str) -> list[bytes]:
    """Parse root key text (``;``-separated, each ``ask1:<base64url of 32 bytes>``) into keys.

    Raises :class:`RootKeyError` with a one-line message that never echoes the text.
    """
    if not text or not text.strip():
        raise RootKeyError(_EMPTY)
    keys = []
    for i, part in enumerate(p.strip() for p in text.strip().split(";")):
        if not part:
            continue
        body = part[len(ROOT_KEY_PREFIX):] if part.startswith(ROOT_KEY_PREFIX) else part
        try:
            raw = _b64d(body)
            if _b64e(raw) != body.rstrip("="):
                raise ValueError
        except (ValueError, binascii.Error):
            raise RootKeyError(f"root key #{i + 1} is not valid base64url") from None
        if len(raw) != _KEY_LEN:
            raise RootKeyError(f"root key #{i + 1} must be {_KEY_LEN} bytes, not {len(raw)}")
        keys.append(raw)
    if not keys:
        raise RootKeyError(_EMPTY)
    return keys


def _key_fp(key: bytes, label: bytes = _FP_LABEL) -> str:
    return hmac.new(key, label, hashlib.sha256).hexdigest()[:16]


class LocalKms:
    """``Kms`` backed by the root key(s) parsed from text (first wraps, all unwrap).

    Blob format: ``b"L1" + key fingerprint (8 bytes) + nonce (12) + AES-256-GCM(ciphertext + tag)``.
    """

    _MAGIC = b"L1"

    def __init__(self, root_key_text: str):
        self._keys = parse_root_keys(root_key_text)
        self._ids = [bytes.fromhex(_key_fp(k))[:8] for k in self._keys]
        self.key_id = "local:" + self._ids[0].hex()

    @classmethod
    def from_env(cls) -> LocalKms:
        """Build from ``ATOMSCALE_ROOT_KEY`` / ``ATOMSCALE_ROOT_KEY_FILE``; clear error if unset."""
        return cls(load_root_key_text())

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM encrypt under the first root key, bound to ``aad``."""
        nonce = secrets.token_bytes(_NONCE_LEN)
        ct = AESGCM(self._keys[0]).encrypt(nonce, plaintext, aad)
        return self._MAGIC + self._ids[0] + nonce + ct

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt with whichever root key made the blob; ``RootKeyError`` if none does."""
        if len(blob) < 2 + 8 + _NONCE_LEN + 16 or blob[:2] != self._MAGIC:
            raise RootKeyError("a stored key is not in the local KMS format (wrong KMS?)")
        kid, nonce, ct = blob[2:10], blob[10:22], blob[22:]
        # Try the key whose id matches first, then the rest (ids are short, collisions possible).
        order = sorted(range(len(self._keys)), key=lambda i: self._ids[i] != kid)
        for i in order:
            try:
                return AESGCM(self._keys[i]).decrypt(nonce, ct, aad)
            except InvalidTag:
                continue
        raise RootKeyError("the root key does not match the stored keys")

    def __repr__(self) -> str:
        return f"LocalKms(key_id={self.key_id!r}, keys={len(self._keys)})"


def load_kms(spec: str | None = None) -> Kms:
    """The deployment's KMS: ``ATOMSCALE_KMS=module:Class`` if set, else :class:`LocalKms`.

    ``spec`` (same form) names another plug-in instead of the one in the environment.
    """
    spec = (os.environ.get(ENV_KMS, "") if spec is None else spec).strip()
    if not spec:
        return LocalKms.from_env()
    mod_name, sep, cls_name = spec.partition(":")
    if not sep or not mod_name or not cls_name:
        raise ConfigError(f"{ENV_KMS} must look like 'package.module:ClassName', got {spec!r}")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load the KMS plug-in {spec!r}: {e}") from None
    kms = cls.from_env() if hasattr(cls, "from_env") else cls()
    for member in ("key_id", "wrap", "unwrap"):
        if not hasattr(kms, member):
            raise ConfigError(f"the KMS plug-in {spec!r} has no {member!r}")
    return kms


def verify_key_of(seed: bytes) -> bytes:
    """The raw Ed25519 public key of a 32-byte signing-key seed."""
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


@dataclass(frozen=True)
class OrgKeys:
    """The keys of one org held in memory.

    ``keys``: data-key versions ``{version: key bytes}`` (newest writes); ``verify``: the raw
    Ed25519 public keys of every signing-key version ``{version: 32 bytes}`` (all readers);
    ``signing``: ``(version, seed)`` of the newest signing key, held by writers only.
    """

    org: str
    keys: dict[int, bytes]
    verify: dict[int, bytes] = field(default_factory=dict)
    signing: tuple[int, bytes] | None = None

    @property
    def current(self) -> int:
        """The version used for new writes."""
        if not self.keys:
            raise KeyUnavailable(f"no data key is available for org {self.org!r}")
        return max(self.keys)

    @property
    def writer(self) -> bool:
        """True when these keys can sign commit-log lines."""
        return self.signing is not None

    def fingerprint(self, version: int | None = None) -> str:
        """A short non-secret fingerprint (HMAC of a fixed label) of a key version."""
        v = self.current if version is None else version
        if v not in self.keys:
            raise KeyUnavailable(f"data key version {v} of org {self.org!r} is not available")
        return _key_fp(self.keys[v])

    def reader(self) -> OrgKeys:
        """The same keys without the signing key (for a process that only reads)."""
        return OrgKeys(self.org, dict(self.keys), dict(self.verify), None)

    def with_keys(self, keys: dict[int, bytes]) -> OrgKeys:
        """Other symmetric key versions (e.g. the context key) with the same signing keys."""
        return OrgKeys(self.org, dict(keys), dict(self.verify), self.signing)

    def to_json(self) -> dict:
        """Serialize for the key service's release (base64 keys); never log the result.

        ``{"org", "keys": {"<v>": b64}, "verify": {"<v>": b64}, "sign": {"version": v,
        "key": b64}}``; ``sign`` is absent for a reader.
        """
        doc = {"org": self.org, "keys": {str(v): _b64e(k) for v, k in self.keys.items()},
               "verify": {str(v): _b64e(k) for v, k in self.verify.items()}}
        if self.signing is not None:
            doc["sign"] = {"version": self.signing[0], "key": _b64e(self.signing[1])}
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> OrgKeys:
        """Inverse of :meth:`to_json` (documents without ``verify``/``sign`` are readers of an
        org that has no signing key yet)."""
        try:
            keys = {int(v): _b64d(k) for v, k in doc["keys"].items()}
            verify = {int(v): _b64d(k) for v, k in (doc.get("verify") or {}).items()}
            org = str(doc["org"])
            sign = doc.get("sign")
            signing = None if sign is None else (int(sign["version"]), _b64d(sign["key"]))
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            raise KeyUnavailable("the released org keys are malformed") from None
        if any(len(k) != _KEY_LEN for k in [*keys.values(), *verify.values()]) or (
                signing is not None and len(signing[1]) != _KEY_LEN):
            raise KeyUnavailable("the released org keys are malformed")
        if signing is not None and verify.get(signing[0]) != verify_key_of(signing[1]):
            raise KeyUnavailable("the released signing key does not match its verify key")
        return cls(org, keys, verify, signing)

    def __repr__(self) -> str:  # never show key bytes
        return (f"OrgKeys(org={self.org!r}, versions={sorted(self.keys)}, "
                f"verify={sorted(self.verify)}, writer={self.writer})")

    __str__ = __repr__


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


def connect_registry(db_path: Path) -> sqlite3.Connection:
    """Open the registry SQLite file in WAL mode (shared by the other registries)."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(db_path), timeout=30, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    try:
        os.chmod(db_path, 0o600)
    except OSError:
        pass
    return conn


class KeyRegistry:
    """Per-org keys wrapped by a ``Kms``, in SQLite. Only the admin side and hub services use it."""

    def __init__(self, db_path: Path, kms: Kms):
        self.db_path = Path(db_path)
        self.kms = kms
        self._lock = threading.RLock()
        self._db = connect_registry(self.db_path)
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
            (org, purpose, version, blob, self.kms.key_id, _key_fp(raw), _now()))

    def create_org(self, org: str) -> None:
        """Create version 1 of the org's data, context and audit keys."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM org_keys WHERE org=? LIMIT 1",
                                    (org,)).fetchone():
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
                "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose='data'",
                (org,)).fetchall()
            if not rows:
                raise self._missing(org)
            keys = {v: self._unwrap(org, "data", v, b) for v, b in rows}
            seeds = {v: self._unwrap(org, "sign", v, b) for v, b in self._db.execute(
                "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose='sign'",
                (org,)).fetchall()}
        verify = {v: verify_key_of(k) for v, k in seeds.items()}
        top = max(seeds) if seeds and signing else None
        return OrgKeys(org, keys, verify, None if top is None else (top, seeds[top]))

    def ensure_signing_key(self, org: str) -> bool:
        """Create version 1 of the org's signing key if it has none (orgs made before commit-log
        signing). Returns True when this call created it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._db.execute("SELECT 1 FROM org_keys WHERE org=? AND purpose='data'",
                                        (org,)).fetchone():
                    raise self._missing(org)
                if self._db.execute("SELECT 1 FROM org_keys WHERE org=? AND purpose='sign'",
                                    (org,)).fetchone():
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
                    "ORDER BY version DESC LIMIT 1", (org, purpose)).fetchone()
            else:
                row = self._db.execute(
                    "SELECT version, wrapped FROM org_keys WHERE org=? AND purpose=? AND version=?",
                    (org, purpose, version)).fetchone()
            if row is None:
                if version is not None and self._db.execute(
                        "SELECT 1 FROM org_keys WHERE org=? LIMIT 1", (org,)).fetchone():
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
                    "SELECT MAX(version) FROM org_keys WHERE org=? AND purpose=?",
                    (org, purpose)).fetchone()
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
                (org,)).fetchall()
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
                "SELECT purpose, version, fingerprint FROM org_keys WHERE org=?",
                (org,)).fetchall()
        if not rows:
            raise self._missing(org)
        out: dict[str, dict[int, str]] = {}
        for p, v, f in rows:
            out.setdefault(p, {})[v] = f
        return out

    def orgs(self) -> list[str]:
        """Orgs that have keys."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT DISTINCT org FROM org_keys ORDER BY org")]

    def rewrap(self, new_kms: Kms) -> int:
        """Re-wrap every stored key under ``new_kms`` (root-key rotation). Returns count."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT org, purpose, version, wrapped FROM org_keys").fetchall()
                for org, purpose, version, blob in rows:
                    aad = _aad(org, purpose, version)
                    raw = self._unwrap(org, purpose, version, blob)
                    self._db.execute(
                        "UPDATE org_keys SET wrapped=?, kms_key_id=? "
                        "WHERE org=? AND purpose=? AND version=?",
                        (new_kms.wrap(raw, aad), new_kms.key_id, org, purpose, version))
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
                    "SELECT org, purpose, version, wrapped FROM org_keys").fetchall()
                pairs = [(b, _aad(o, p, v)) for o, p, v, b in rows]
                if hasattr(kms, "rewrap_many"):
                    new_blobs = kms.rewrap_many(pairs)
                elif hasattr(kms, "rewrap"):
                    new_blobs = [kms.rewrap(blob, aad) for blob, aad in pairs]
                else:
                    new_blobs = [kms.wrap(self._unwrap(o, p, v, b), _aad(o, p, v))
                                 for o, p, v, b in rows]
                if len(new_blobs) != len(rows):
                    raise RootKeyError("the KMS did not re-wrap every stored key")
                for (org, purpose, version, _), new_blob in zip(rows, new_blobs, strict=True):
                    self._db.execute(
                        "UPDATE org_keys SET wrapped=?, kms_key_id=? "
                        "WHERE org=? AND purpose=? AND version=?",
                        (new_blob, kms.key_id, org, purpose, version))
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
            return dict(self._db.execute(
                "SELECT kms_key_id, COUNT(*) FROM org_keys GROUP BY kms_key_id").fetchall())

    def shred(self, org: str) -> None:
        """Destroy every key of ``org`` (overwrite, delete, VACUUM). Its data is then unreadable."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE org_keys SET wrapped=zeroblob(length(wrapped)), fingerprint='' "
                    "WHERE org=?", (org,))
                self._db.execute("DELETE FROM org_keys WHERE org=?", (org,))
                self._db.execute("INSERT OR REPLACE INTO shredded_orgs VALUES (?,?)",
                                 (org, _now()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # Old page images may survive in the WAL and free pages: checkpoint, then rebuild.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("shredded the keys of org %s", org)


_MKID = re.compile(r"^(?P<org>[^/]+)/(?P<purpose>[a-z]+)/v(?P<version>[0-9]+)$")


class _OrgKmsClient(pe.KmsClient):
    """AES-GCM wrapping of Parquet key-encryption keys with the org's master-key versions."""

    def __init__(self, owner: OrgCrypto):
        super().__init__()
        self._owner = owner

    def _master(self, mkid: str) -> bytes:
        owner = self._owner
        m = _MKID.match(mkid or "")
        if not m or m["org"] != owner.org or m["purpose"] != owner.purpose:
            owner._fail(f"the file was encrypted for another org or purpose "
                        f"({str(mkid)[:80]!r}), not {owner.org!r}")
        v = int(m["version"])
        if not owner.ensure_version(v):
            owner._fail(f"data key version {v} of org {owner.org!r} is not available")
        return owner._keys.keys[v]

    def wrap_key(self, key_bytes, master_key_identifier):
        """Wrap a key-encryption key under the master key version named by the id."""
        master = self._master(master_key_identifier)
        nonce = secrets.token_bytes(_NONCE_LEN)
        ct = AESGCM(master).encrypt(nonce, bytes(key_bytes), master_key_identifier.encode())
        return base64.b64encode(nonce + ct).decode()

    def unwrap_key(self, wrapped_key, master_key_identifier):
        """Unwrap; a wrong key or a foreign id records a clear reason and fails."""
        master = self._master(master_key_identifier)
        try:
            raw = base64.b64decode(wrapped_key)
            return AESGCM(master).decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:],
                                          master_key_identifier.encode())
        except (InvalidTag, ValueError, binascii.Error):
            self._owner._fail(f"the data key of org {self._owner.org!r} does not match "
                              "the file's key (wrong key or another org's file)")


class OrgCrypto:
    """One pyarrow ``CryptoFactory`` per org, plus the org's KMS connection config.

    AES_GCM_V1, uniform encryption, encrypted footer, double wrapping; master-key ids are
    ``<org>/data/v<N>``; the key access token is org-specific. Also derives the keys that MAC
    old commit-log lines and seal commit-log statistics, and signs (writers) and verifies
    commit-log lines with the org's Ed25519 keys.

    When the KMS client refuses a key, pyarrow wraps the refusal in its own exception; callers
    (the store) turn that into :class:`KeyUnavailable` with :meth:`key_error`, whose message is
    ours, never the underlying exception's.
    """

    def __init__(self, keys: OrgKeys, purpose: str = "data",
                 refresh: Callable[[], OrgKeys] | None = None, refresh_interval: float = 2.0):
        if not isinstance(keys, OrgKeys) or not keys.keys:
            org = getattr(keys, "org", "?")
            raise KeyUnavailable(f"no data key is available for org {org!r}")
        self._keys = keys
        self.org = keys.org
        self.purpose = purpose
        self.version = keys.current
        self._last_error: str | None = None
        # After a rotation elsewhere (``org rotate-key``) files and log lines name a version this
        # process has not seen: fetch the org's keys again, at most once per interval.
        self._refresh, self._refresh_interval = refresh, refresh_interval
        self._refreshed_at = -1e9
        self._refresh_lock = threading.Lock()
        self._factory = pe.CryptoFactory(lambda _conf: _OrgKmsClient(self))
        # The token scopes pyarrow's key caches: org, purpose and the newest key version.
        token = f"atomscale:{self.org}:{purpose}:{keys.fingerprint()}"
        self._kms_conf = pe.KmsConnectionConfig(
            kms_instance_id=f"atomscale-{self.org}", key_access_token=token,
            custom_kms_conf={"org": self.org})
        self._dec_conf = pe.DecryptionConfiguration(cache_lifetime=timedelta(hours=12))
        self._derived: dict[tuple[str, int], bytes] = {}
        self._aeads: dict[tuple[str, int], AESGCM] = {}
        self._verifiers: dict[int, Ed25519PublicKey] = {}
        self._signer: tuple[int, Ed25519PrivateKey] | None = None

    @property
    def keys(self) -> OrgKeys:
        """The org keys this factory uses."""
        return self._keys

    def ensure_version(self, version: int) -> bool:
        """True if data-key ``version`` is held, after re-fetching the org's keys once if it is
        not (rate-limited: a version that does not exist costs one fetch per interval)."""
        if version in self._keys.keys:
            return True
        self.reload()
        return version in self._keys.keys

    def ensure_sign_version(self, version: int) -> bool:
        """True if the verify key of signing-key ``version`` is held (and, for a writer, a
        signing key at least that new), after re-fetching the org's keys once if not."""
        if self._has_sign_version(version):
            return True
        self.reload()
        return self._has_sign_version(version)

    def _has_sign_version(self, version: int) -> bool:
        if version not in self._keys.verify:
            return False
        return self._keys.signing is None or self._keys.signing[0] >= version

    def reload(self) -> bool:
        """Fetch the org's keys again (after a rotation elsewhere, ``org rotate-key``): new
        data, verify and signing key versions join the ones held. At most once per interval;
        False when nothing could be fetched."""
        if self._refresh is None:
            return False
        with self._refresh_lock:
            now = time.monotonic()
            if now - self._refreshed_at < self._refresh_interval:
                return False
            self._refreshed_at = now
            try:
                fresh = self._refresh()
            except AtomscaleError as e:
                log.warning("re-fetching the keys of org %s failed: %s", self.org,
                            type(e).__name__)
                return False
            if not isinstance(fresh, OrgKeys) or fresh.org != self.org or not fresh.keys:
                return False
            # Keep versions we hold that the fresh set lacks: files written with them stay
            # readable until this process ends. A reader stays a reader.
            old = self._keys
            signing = old.signing
            if signing is not None and fresh.signing is not None and \
                    fresh.signing[0] > signing[0]:
                signing = fresh.signing
            self._keys = OrgKeys(self.org, {**old.keys, **fresh.keys},
                                 {**old.verify, **fresh.verify}, signing)
            if fresh.current > self.version:
                log.info("org %s: data key version %s is now current in this process",
                         self.org, fresh.current)
                self.version = fresh.current
            return True

    def master_key_id(self, version: int | None = None) -> str:
        """``<org>/<purpose>/v<N>``: the Parquet master-key id of a version."""
        return f"{self.org}/{self.purpose}/v{self.version if version is None else version}"

    def encryption_config(self, version: int | None = None) -> pe.EncryptionConfiguration:
        """The Parquet encryption configuration for new files."""
        return pe.EncryptionConfiguration(
            footer_key=self.master_key_id(version), uniform_encryption=True,
            encryption_algorithm="AES_GCM_V1", plaintext_footer=False, double_wrapping=True,
            cache_lifetime=timedelta(minutes=10), internal_key_material=True,
            data_key_length_bits=256)

    def _fail(self, reason: str):
        # pyarrow calls the KMS client from its own threads: keep the reason on the object.
        self._last_error = reason
        raise KeyUnavailable(reason)

    def key_error(self) -> KeyUnavailable | None:
        """The last refusal of the KMS client (cleared on read), or None."""
        reason, self._last_error = self._last_error, None
        return KeyUnavailable(reason) if reason else None

    def file_encryption_properties(self, version: int | None = None):
        """Fresh ``FileEncryptionProperties`` (new data key per file) under the current version."""
        return self._factory.file_encryption_properties(
            self._kms_conf, self.encryption_config(version))

    def file_decryption_properties(self):
        """``FileDecryptionProperties`` for this org's files."""
        return self._factory.file_decryption_properties(self._kms_conf, self._dec_conf)

    def dataset_decryption_config(self):
        """``pyarrow.dataset.ParquetDecryptionConfig`` for this org."""
        import pyarrow.dataset as ds

        return ds.ParquetDecryptionConfig(self._factory, self._kms_conf, self._dec_conf)

    def dataset_encryption_config(self, version: int | None = None):
        """``pyarrow.dataset.ParquetEncryptionConfig`` (one data key per written file)."""
        import pyarrow.dataset as ds

        return ds.ParquetEncryptionConfig(self._factory, self._kms_conf,
                                          self.encryption_config(version))

    def mac_key(self, purpose: str, version: int | None = None) -> bytes:
        """HKDF-derived key for MACs (e.g. ``purpose="commit-log"``); never the data key itself."""
        v = self.version if version is None else version
        if v not in self._keys.keys:
            raise KeyUnavailable(f"data key version {v} of org {self.org!r} is not available")
        hit = self._derived.get((purpose, v))
        if hit is None:
            info = f"atomscale-lab/mac/{self.org}/{self.purpose}/v{v}/{purpose}".encode()
            hit = self._derived[(purpose, v)] = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None,
                info=info).derive(self._keys.keys[v])
        return hit

    def fingerprint(self, version: int | None = None) -> str:
        """Non-secret fingerprint of a key version (see :meth:`OrgKeys.fingerprint`)."""
        return self._keys.fingerprint(self.version if version is None else version)

    # -- commit-log signatures and sealed statistics ------------------------------------------

    @property
    def can_verify(self) -> bool:
        """True when the org has a signing key whose public half this process holds."""
        return bool(self._keys.verify)

    @property
    def sign_version(self) -> int | None:
        """Version of the signing key this process holds (None: a reader)."""
        return None if self._keys.signing is None else self._keys.signing[0]

    def sign(self, message: bytes) -> tuple[int, bytes]:
        """``(version, Ed25519 signature)`` of ``message``; ``PermissionDenied`` for a reader."""
        if self._keys.signing is None:
            raise PermissionDenied(
                f"this process holds no commit-log signing key of org {self.org!r}: only "
                "writers (ingest, the org's data server, the admin CLI) can change its data")
        version, seed = self._keys.signing
        signer = self._signer
        if signer is None or signer[0] != version:
            signer = self._signer = (version, Ed25519PrivateKey.from_private_bytes(seed))
        return version, signer[1].sign(message)

    def verify_signature(self, version: int, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is version ``version``'s signature of ``message``.

        Raises ``KeyUnavailable`` when that verify key is not held.
        """
        pub = self._verifiers.get(version)
        if pub is None:
            if version not in self._keys.verify:
                self.ensure_sign_version(version)
            raw = self._keys.verify.get(version)
            if raw is None:
                raise KeyUnavailable(
                    f"commit-log verify key version {version} of org {self.org!r} is not "
                    "available (the keys were loaded before a rotation, or come from before "
                    f"commit-log signing: reload them, or run `atomscale-lab org migrate "
                    f"{self.org}`)")
            pub = self._verifiers[version] = Ed25519PublicKey.from_public_bytes(raw)
        try:
            pub.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def _aead(self, label: str, version: int) -> AESGCM:
        key = (label, version)
        aead = self._aeads.get(key)
        if aead is None:
            aead = self._aeads[key] = AESGCM(self.mac_key(f"seal/{label}", version))
        return aead

    def seal(self, label: str, version: int, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under an HKDF key of data-key ``version`` for ``label``: nonce + ct."""
        nonce = secrets.token_bytes(_NONCE_LEN)
        return nonce + self._aead(label, version).encrypt(nonce, plaintext, aad)

    def unseal(self, label: str, version: int, blob: bytes, aad: bytes) -> bytes | None:
        """Inverse of :meth:`seal`; None when the blob does not authenticate."""
        try:
            return self._aead(label, version).decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], aad)
        except (InvalidTag, ValueError):
            return None

    def __repr__(self) -> str:
        return f"OrgCrypto(org={self.org!r}, purpose={self.purpose!r}, version={self.version})"
