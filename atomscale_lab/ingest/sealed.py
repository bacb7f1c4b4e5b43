"""Identifying strings in the ingest service's registry files, unreadable at rest.

``state.sqlite`` and ``sdk.sqlite`` must not show which runs, samples or tags exist. Per org:

- :meth:`RegistrySeal.tag`: a keyed hash (HMAC-SHA256, truncated to 128 bits) of a value, for
  columns that are only looked up by equality (a run id in ``WHERE run_id=?``). Its key derives
  from the org's oldest held data-key version, so the tag of a value stays the same across key
  rotations (a rotation that drops that version orphans the lookups of unfinished streams only).
- :meth:`RegistrySeal.seal` / :meth:`RegistrySeal.unseal`: AES-256-GCM of a value whose text is
  needed back (``v<version>:<base64>``), bound to its row by associated data; keys are HKDF
  derivations of the org's data key, one per use, never the data key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atomscale_lab.errors import IntegrityError, KeyUnavailable

_NONCE = 12


def _derive(org_keys, version: int, use: str) -> bytes:
    if version not in org_keys.keys:
        raise KeyUnavailable(f"data key version {version} of org {org_keys.org!r} is not available")
    info = f"atomscale-lab/ingest-registry/{use}/{org_keys.org}/v{version}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        org_keys.keys[version]
    )


class RegistrySeal:
    """Tags and sealed values of one registry file, for every org (see the module docstring).

    ``org_keys(org)`` returns the org's current ``OrgKeys`` (called on each use, so a rotation
    reaches running services).
    """

    def __init__(self, org_keys: Callable[[str], object], purpose: str):
        self._org_keys = org_keys
        self._purpose = purpose
        self._cache: dict[tuple, bytes] = {}

    def _key(self, org: str, version: int, use: str) -> bytes:
        k = (org, version, use)
        hit = self._cache.get(k)
        if hit is None:
            hit = self._cache[k] = _derive(self._org_keys(org), version, f"{self._purpose}/{use}")
        return hit

    def tag(self, org: str, kind: str, value: str) -> str:
        """The keyed hash of ``value`` (equal values, equal tags; nothing else learnt)."""
        version = min(self._org_keys(org).keys)
        mac = hmac.new(
            self._key(org, version, "tag"), f"{kind}\x00{value}".encode(), hashlib.sha256
        )
        return mac.hexdigest()[:32]

    def seal(self, org: str, value: str | None, aad: str) -> str | None:
        """``value`` encrypted under the org's current key version, bound to ``aad``."""
        if value is None:
            return None
        keys = self._org_keys(org)
        version = keys.current
        nonce = secrets.token_bytes(_NONCE)
        ct = AESGCM(self._key(org, version, "seal")).encrypt(nonce, value.encode(), aad.encode())
        return f"v{version}:" + base64.urlsafe_b64encode(nonce + ct).decode()

    def unseal(self, org: str, text: str | None, aad: str) -> str | None:
        """Inverse of :meth:`seal`; ``IntegrityError`` if the value was changed or moved."""
        if text is None:
            return None
        head, _, body = text.partition(":")
        try:
            version = int(head[1:])
            blob = base64.urlsafe_b64decode(body)
            return (
                AESGCM(self._key(org, version, "seal"))
                .decrypt(blob[:_NONCE], blob[_NONCE:], aad.encode())
                .decode()
            )
        except (InvalidTag, ValueError, TypeError):
            raise IntegrityError(
                f"a sealed registry value of org {org!r} does not "
                "authenticate (changed, moved or corrupt)"
            ) from None
