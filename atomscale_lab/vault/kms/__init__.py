"""The root key and the key-management plug-ins that hold it.

- Root key text: ``;``-separated base64url keys of 32 bytes, optionally prefixed ``ask1:``; the
  first wraps, all unwrap (so rotation is: prepend a new key, run ``rewrap``, drop the old one).
- :class:`Kms` is the plug-in interface (``wrap``/``unwrap``/``key_id``); :class:`LocalKms`
  implements it with the root key. External key-management services implement the same three
  members:

  - :class:`~atomscale_lab.vault.kms.transit.VaultTransitKms`, HashiCorp Vault / OpenBao transit
    engine (``ATOMSCALE_KMS=atomscale_lab.vault.kms.transit:VaultTransitKms``);
  - :class:`~atomscale_lab.vault.kms.aws.AwsKms`, AWS KMS
    (``ATOMSCALE_KMS=atomscale_lab.vault.kms.aws:AwsKms``).

With an external KMS the root key is a key inside the KMS: it never exists in the deployment's
memory or files. The registry stores org keys wrapped by the KMS, each bound to its org, purpose
and version (transit: the key-derivation ``context``; AWS: the ``EncryptionContext``).

Besides the three members of the ``Kms`` protocol, both plug-ins have ``rotate()`` (a new version
of the wrapping key inside the KMS) and ``rewrap(blob, aad)`` (re-encrypt a blob under the newest
version inside the KMS, without the org key leaving it); ``atomscale-lab kms rotate`` uses them.
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
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atomscale_lab.errors import ConfigError, RootKeyError
from atomscale_lab.vault.settings import load_root_key_text

log = logging.getLogger(__name__)

ROOT_KEY_PREFIX = "ask1:"
ENV_KMS = "ATOMSCALE_KMS"
_KEY_LEN = 32
_NONCE_LEN = 12
_FP_LABEL = b"atomscale-lab key fingerprint v1"
_EMPTY = "the root key is empty (make one with `atomscale-lab root-key generate`)"


_AAD = re.compile(
    r"^atomscale-lab/org-key/(?P<org>[^/]+)/(?P<purpose>[a-z]+)/v(?P<version>[0-9]+)$"
)


def aad_fields(aad: bytes) -> dict[str, str]:
    """The binding of a wrapped org key as named fields.

    ``aad`` is what the registry passes (``atomscale-lab/org-key/<org>/<purpose>/v<N>``); the
    result always holds the whole text under ``"atomscale-lab"`` and, when it has that shape,
    ``org``, ``purpose`` and ``version`` too (so KMS policies and audit trails can name them).
    """
    text = aad.decode("utf-8")
    out = {"atomscale-lab": text}
    m = _AAD.match(text)
    if m:
        out.update(org=m["org"], purpose=m["purpose"], version=m["version"])
    return out


KMS_ENV_PREFIXES = ("VAULT_", "ATOMSCALE_TRANSIT_", "ATOMSCALE_AWS_KMS_", "AWS_")
"""Settings of the KMS plug-ins, passed to the hub services (which hold keys) and never to user
servers."""


def service_env(environ=None) -> dict[str, str]:
    """The KMS plug-in's settings from ``environ`` (default ``os.environ``) for a hub service.

    Empty without ``ATOMSCALE_KMS``: the local root key needs none of them.
    """

    env = os.environ if environ is None else environ
    if not env.get("ATOMSCALE_KMS", "").strip():
        return {}
    return {k: v for k, v in env.items() if k.startswith(KMS_ENV_PREFIXES) and v}


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
        body = part[len(ROOT_KEY_PREFIX) :] if part.startswith(ROOT_KEY_PREFIX) else part
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
    if mod_name.startswith("atomscale_lab.kms."):  # the plug-ins' path before 0.2, still in configs
        mod_name = "atomscale_lab.vault.kms." + mod_name.removeprefix("atomscale_lab.kms.")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load the KMS plug-in {spec!r}: {e}") from None
    kms = cls.from_env() if hasattr(cls, "from_env") else cls()
    for member in ("key_id", "wrap", "unwrap"):
        if not hasattr(kms, member):
            raise ConfigError(f"the KMS plug-in {spec!r} has no {member!r}")
    return kms
