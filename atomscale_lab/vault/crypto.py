"""What a process holds for one org's keys, and the Parquet encryption built from them.

``OrgKeys`` is what a process holds for one org: ``{version: bytes}`` of the *data* key, the
Ed25519 verify (public) keys of every ``sign`` version, and, for writers only, the newest signing
key. It is what the key service releases to service identities. ``OrgCrypto`` builds the pyarrow
CryptoFactory from it, signs and verifies commit-log lines and seals their statistics.

The root key and its KMS are :mod:`atomscale_lab.vault.kms`; the registry that stores wrapped org
keys is :mod:`atomscale_lab.vault.registry`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atomscale_lab.errors import (
    AtomscaleError,
    KeyUnavailable,
    PermissionDenied,
)
from atomscale_lab.vault.kms import (
    _KEY_LEN,
    _NONCE_LEN,
    _b64d,
    _b64e,
    _key_fp,
)

log = logging.getLogger(__name__)

PURPOSES = ("data", "context", "audit", "sign")


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
        doc = {
            "org": self.org,
            "keys": {str(v): _b64e(k) for v, k in self.keys.items()},
            "verify": {str(v): _b64e(k) for v, k in self.verify.items()},
        }
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
            signing is not None and len(signing[1]) != _KEY_LEN
        ):
            raise KeyUnavailable("the released org keys are malformed")
        if signing is not None and verify.get(signing[0]) != verify_key_of(signing[1]):
            raise KeyUnavailable("the released signing key does not match its verify key")
        return cls(org, keys, verify, signing)

    def __repr__(self) -> str:  # never show key bytes
        return (
            f"OrgKeys(org={self.org!r}, versions={sorted(self.keys)}, "
            f"verify={sorted(self.verify)}, writer={self.writer})"
        )

    __str__ = __repr__


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
            owner._fail(
                f"the file was encrypted for another org or purpose "
                f"({str(mkid)[:80]!r}), not {owner.org!r}"
            )
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
            return AESGCM(master).decrypt(
                raw[:_NONCE_LEN], raw[_NONCE_LEN:], master_key_identifier.encode()
            )
        except (InvalidTag, ValueError, binascii.Error):
            self._owner._fail(
                f"the data key of org {self._owner.org!r} does not match "
                "the file's key (wrong key or another org's file)"
            )


def key_refusal(exc: BaseException | None) -> KeyUnavailable | None:
    """The KMS client's refusal behind ``exc`` (``exc`` itself or an exception it was raised
    from or while handling), or None: how a read failure that wrapped a refusal is told apart
    from a tampered file."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyUnavailable):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class OrgCrypto:
    """One pyarrow ``CryptoFactory`` per org, plus the org's KMS connection config.

    AES_GCM_V1, uniform encryption, encrypted footer, double wrapping; master-key ids are
    ``<org>/data/v<N>``; the key access token is org-specific. Also derives the keys that MAC
    old commit-log lines and seal commit-log statistics, and signs (writers) and verifies
    commit-log lines with the org's Ed25519 keys.

    When the KMS client refuses a key it raises :class:`KeyUnavailable` with the reason (ours,
    never the underlying exception's); pyarrow hands that exception on to the thread that asked
    for the read, so each caller gets its own refusal (:func:`key_refusal` finds it where another
    layer wrapped it). Nothing about a refusal is kept on this object.
    """

    def __init__(
        self,
        keys: OrgKeys,
        purpose: str = "data",
        refresh: Callable[[], OrgKeys] | None = None,
        refresh_interval: float = 2.0,
    ):
        if not isinstance(keys, OrgKeys) or not keys.keys:
            org = getattr(keys, "org", "?")
            raise KeyUnavailable(f"no data key is available for org {org!r}")
        self._keys = keys
        self.org = keys.org
        self.purpose = purpose
        self.version = keys.current
        # After a rotation elsewhere (``org rotate-key``) files and log lines name a version this
        # process has not seen: fetch the org's keys again, at most once per interval.
        self._refresh, self._refresh_interval = refresh, refresh_interval
        self._refreshed_at = -1e9
        self._refresh_lock = threading.Lock()
        self._factory = pe.CryptoFactory(lambda _conf: _OrgKmsClient(self))
        # The token scopes pyarrow's key caches: org, purpose and the newest key version.
        token = f"atomscale:{self.org}:{purpose}:{keys.fingerprint()}"
        self._kms_conf = pe.KmsConnectionConfig(
            kms_instance_id=f"atomscale-{self.org}",
            key_access_token=token,
            custom_kms_conf={"org": self.org},
        )
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
                log.warning("re-fetching the keys of org %s failed: %s", self.org, type(e).__name__)
                return False
            if not isinstance(fresh, OrgKeys) or fresh.org != self.org or not fresh.keys:
                return False
            # Keep versions we hold that the fresh set lacks: files written with them stay
            # readable until this process ends. A reader stays a reader.
            old = self._keys
            signing = old.signing
            if signing is not None and fresh.signing is not None and fresh.signing[0] > signing[0]:
                signing = fresh.signing
            self._keys = OrgKeys(
                self.org, {**old.keys, **fresh.keys}, {**old.verify, **fresh.verify}, signing
            )
            if fresh.current > self.version:
                log.info(
                    "org %s: data key version %s is now current in this process",
                    self.org,
                    fresh.current,
                )
                self.version = fresh.current
            return True

    def master_key_id(self, version: int | None = None) -> str:
        """``<org>/<purpose>/v<N>``: the Parquet master-key id of a version."""
        return f"{self.org}/{self.purpose}/v{self.version if version is None else version}"

    def encryption_config(self, version: int | None = None) -> pe.EncryptionConfiguration:
        """The Parquet encryption configuration for new files."""
        return pe.EncryptionConfiguration(
            footer_key=self.master_key_id(version),
            uniform_encryption=True,
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=False,
            double_wrapping=True,
            cache_lifetime=timedelta(minutes=10),
            internal_key_material=True,
            data_key_length_bits=256,
        )

    def _fail(self, reason: str):
        # pyarrow calls the KMS client from its own threads and re-raises the client's own
        # exception in the thread that asked: the reason travels with it, not on this object.
        raise KeyUnavailable(reason)

    def file_encryption_properties(self, version: int | None = None):
        """Fresh ``FileEncryptionProperties`` (new data key per file) under the current version."""
        return self._factory.file_encryption_properties(
            self._kms_conf, self.encryption_config(version)
        )

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

        return ds.ParquetEncryptionConfig(
            self._factory, self._kms_conf, self.encryption_config(version)
        )

    def mac_key(self, purpose: str, version: int | None = None) -> bytes:
        """HKDF-derived key for MACs (e.g. ``purpose="commit-log"``); never the data key itself."""
        v = self.version if version is None else version
        if v not in self._keys.keys:
            raise KeyUnavailable(f"data key version {v} of org {self.org!r} is not available")
        hit = self._derived.get((purpose, v))
        if hit is None:
            info = f"atomscale-lab/mac/{self.org}/{self.purpose}/v{v}/{purpose}".encode()
            hit = self._derived[(purpose, v)] = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=info
            ).derive(self._keys.keys[v])
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
                "writers (ingest, the org's data server, the admin CLI) can change its data"
            )
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
                    f"{self.org}`)"
                )
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
