"""Keys: the root key, the KMS plug-in interface, the per-org key registry, and the per-org
Parquet modular-encryption factory.

CONTRACT (filled in by the vault work; other modules code against these names):

- Root key text: ``;``-separated base64url keys of 32 bytes, optionally prefixed ``ask1:``; the first
  wraps, all unwrap (so rotation is: prepend a new key, run ``rewrap``, drop the old one).
- ``Kms`` is the plug-in interface (``wrap``/``unwrap``/``key_id``); ``LocalKms`` implements it with
  the root key; an external KMS (Vault transit, AWS KMS) implements the same three members.
- ``KeyRegistry`` stores per-org keys (purposes ``data``, ``context``, ``audit``), versioned, wrapped
  by the ``Kms`` in ``registry.sqlite``.
- ``OrgKeys`` is what a process holds for one org: ``{version: bytes}`` of the *data* key. It is what
  the key service releases to a user server. ``OrgCrypto`` builds the pyarrow CryptoFactory from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PURPOSES = ("data", "context", "audit")


class Kms(Protocol):
    """An external key-management service that wraps and unwraps org keys under a root key."""

    key_id: str
    """A non-secret identifier of the current wrapping key (e.g. a fingerprint)."""

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext`` (a key) bound to ``aad``; returns an opaque blob."""

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob made by :meth:`wrap` (with any known root key); raises ``RootKeyError``."""


def generate_root_key() -> str:
    """Return a new root key in the text format ``ATOMSCALE_ROOT_KEY`` takes."""
    raise NotImplementedError


class LocalKms:
    """``Kms`` backed by the root key(s) parsed from text (first wraps, all unwrap)."""

    def __init__(self, root_key_text: str):
        raise NotImplementedError

    @classmethod
    def from_env(cls) -> LocalKms:
        """Build from ``ATOMSCALE_ROOT_KEY`` / ``ATOMSCALE_ROOT_KEY_FILE`` (clear error if unset)."""
        raise NotImplementedError


@dataclass(frozen=True)
class OrgKeys:
    """The data-key versions of one org held in memory: ``{version: key bytes}``, newest writes."""

    org: str
    keys: dict[int, bytes]

    @property
    def current(self) -> int:
        """The version used for new writes."""
        return max(self.keys)

    def fingerprint(self, version: int | None = None) -> str:
        """A short non-secret fingerprint (HMAC of a fixed label) of a key version."""
        raise NotImplementedError

    def to_json(self) -> dict:
        """Serialize for the key service's release (base64 keys); never log the result."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, doc: dict) -> OrgKeys:
        """Inverse of :meth:`to_json`."""
        raise NotImplementedError

    def __repr__(self) -> str:  # never show key bytes
        return f"OrgKeys(org={self.org!r}, versions={sorted(self.keys)})"


class KeyRegistry:
    """Per-org keys wrapped by a ``Kms``, in SQLite. Only the admin side and hub services use it."""

    def __init__(self, db_path: Path, kms: Kms):
        raise NotImplementedError

    def create_org(self, org: str) -> None:
        """Create version 1 of the org's data, context and audit keys."""
        raise NotImplementedError

    def org_keys(self, org: str) -> OrgKeys:
        """All data-key versions of ``org`` (unwrapped). Raises ``KeyUnavailable`` if shredded."""
        raise NotImplementedError

    def key(self, org: str, purpose: str, version: int | None = None) -> tuple[int, bytes]:
        """One key (``purpose`` in PURPOSES), latest version by default."""
        raise NotImplementedError

    def rotate(self, org: str, purpose: str = "data") -> int:
        """Add a new version for new writes; old versions stay for reading. Returns the version."""
        raise NotImplementedError

    def versions(self, org: str) -> dict[str, list[int]]:
        """Key versions per purpose (no material)."""
        raise NotImplementedError

    def rewrap(self, new_kms: Kms) -> int:
        """Re-wrap every stored key under ``new_kms`` (root-key rotation). Returns count."""
        raise NotImplementedError

    def shred(self, org: str) -> None:
        """Destroy every key of ``org`` (overwrite, delete, VACUUM). Its data is then unreadable."""
        raise NotImplementedError


class OrgCrypto:
    """One pyarrow ``CryptoFactory`` per org, plus the org's KMS connection config.

    AES_GCM_V1, uniform encryption, encrypted footer, double wrapping; master-key ids are
    ``<org>/data/v<N>``; the key access token is org-specific. Also derives the commit-log MAC key.
    """

    def __init__(self, keys: OrgKeys):
        raise NotImplementedError

    def file_encryption_properties(self):
        """Fresh ``FileEncryptionProperties`` (new data key per file) under the current version."""
        raise NotImplementedError

    def file_decryption_properties(self):
        """``FileDecryptionProperties`` for this org's files."""
        raise NotImplementedError

    def dataset_decryption_config(self):
        """``pyarrow.dataset.ParquetDecryptionConfig`` for this org."""
        raise NotImplementedError

    def mac_key(self, purpose: str, version: int | None = None) -> bytes:
        """HKDF-derived key for MACs (e.g. ``purpose="commit-log"``); never the data key itself."""
        raise NotImplementedError
