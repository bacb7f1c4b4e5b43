"""``Kms`` plug-in for the transit engine of HashiCorp Vault or OpenBao.

Settings (environment):

- ``VAULT_ADDR`` (required), ``VAULT_TOKEN`` (else the client's token file), ``VAULT_NAMESPACE``,
  ``VAULT_CACERT`` — the standard Vault client variables;
- ``ATOMSCALE_TRANSIT_MOUNT`` (default ``transit``) and ``ATOMSCALE_TRANSIT_KEY`` (default
  ``atomscale-lab``): where the wrapping key lives.

The wrapping key must be a *derived* ``aes256-gcm96`` key that cannot be exported: Vault derives
one key per ``context``, and the context of every org key is its binding
(``atomscale-lab/org-key/<org>/<purpose>/v<N>``), so a blob of one org or purpose does not decrypt
as another's. The binding goes through ``context`` and not ``associated_data``: transit's
``rewrap`` does not take associated data, so blobs bound that way could not be re-wrapped after a
rotation. The token needs ``encrypt``, ``decrypt`` and ``rewrap`` on the key (``rotate`` and
``config`` for ``atomscale-lab kms rotate``).
"""

from __future__ import annotations

import base64
import logging
import os

from atomscale_lab.errors import ConfigError, RootKeyError

log = logging.getLogger(__name__)

ENV_MOUNT = "ATOMSCALE_TRANSIT_MOUNT"
ENV_KEY = "ATOMSCALE_TRANSIT_KEY"
KEY_TYPES = ("aes256-gcm96", "chacha20-poly1305")
_MAGIC = b"VT1:"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class VaultTransitKms:
    """Wraps org keys with a derived transit key of Vault / OpenBao (the key never leaves it).

    Blob format: ``b"VT1:"`` + the transit ciphertext (``vault:v<N>:...``, ASCII).
    """

    def __init__(self, client, key: str = "atomscale-lab", mount: str = "transit"):
        """``client``: an authenticated ``hvac.Client``; the key must exist (:meth:`ensure_key`)."""
        self._client = client
        self.key = key
        self.mount = mount
        self._latest = 0
        self.key_id = ""

    @classmethod
    def from_env(cls, *, check: bool = True) -> VaultTransitKms:
        """Build from ``VAULT_ADDR`` / ``VAULT_TOKEN`` / ``ATOMSCALE_TRANSIT_*``.

        With ``check`` the key is read once: it must exist, be derived and not exportable.
        """
        try:
            import hvac
        except ImportError:
            raise ConfigError(
                "the Vault transit KMS needs the hvac package (pip install 'atomscale-lab[kms]')"
            ) from None
        addr = os.environ.get("VAULT_ADDR", "").strip()
        if not addr:
            raise ConfigError("VAULT_ADDR is not set (the address of the Vault/OpenBao server)")
        verify: bool | str = os.environ.get("VAULT_CACERT", "").strip() or True
        client = hvac.Client(
            url=addr,
            token=os.environ.get("VAULT_TOKEN") or None,
            namespace=os.environ.get("VAULT_NAMESPACE") or None,
            verify=verify,
        )
        kms = cls(
            client,
            key=os.environ.get(ENV_KEY, "").strip() or "atomscale-lab",
            mount=os.environ.get(ENV_MOUNT, "").strip() or "transit",
        )
        if check:
            kms.refresh()
        return kms

    def _call(self, what: str, fn, *args, **kw):
        """Run one hvac call; Vault's refusals become one-line errors without Vault's text."""
        import hvac.exceptions as hx
        import requests

        try:
            return fn(*args, **kw)
        except hx.InvalidPath:
            raise ConfigError(
                f"Vault has no transit key {self.key!r} at mount {self.mount!r} "
                "(create it with `atomscale-lab kms init`)"
            ) from None
        except (hx.Forbidden, hx.Unauthorized):
            raise RootKeyError(
                f"Vault refused to {what} with transit key {self.key!r} "
                "(token missing, expired or without that capability)"
            ) from None
        except hx.InvalidRequest:
            # e.g. "cipher: message authentication failed": the blob is not bound to this context
            raise RootKeyError(
                f"Vault could not {what}: the stored key is not bound to this "
                "org and purpose, or was made by another key"
            ) from None
        except (hx.VaultError, requests.RequestException) as e:
            log.warning("Vault call %s failed: %s", what, type(e).__name__)
            raise RootKeyError(
                f"the Vault server is unavailable ({type(e).__name__}) while trying to {what}"
            ) from None

    def refresh(self) -> dict:
        """Read the key's settings; refuse a key that is not derived or can be exported."""
        data = self._call(
            "read the key",
            self._client.secrets.transit.read_key,
            name=self.key,
            mount_point=self.mount,
        )["data"]
        if not data.get("derived"):
            raise ConfigError(
                f"transit key {self.key!r} is not a derived key; org keys are "
                "bound to their org through key derivation (create it with "
                "`atomscale-lab kms init`)"
            )
        if data.get("exportable") or data.get("allow_plaintext_backup"):
            raise ConfigError(
                f"transit key {self.key!r} can be exported; the root key must never leave the KMS"
            )
        if data.get("type") not in KEY_TYPES:
            raise ConfigError(
                f"transit key {self.key!r} has type {data.get('type')!r}; "
                f"expected one of {KEY_TYPES}"
            )
        self._latest = int(data["latest_version"])
        self.key_id = f"transit:{self.mount}/{self.key}:v{self._latest}"
        return data

    def ensure_key(self) -> bool:
        """Create the transit key (derived, aes256-gcm96, not exportable) if it is missing.

        Returns True when it was created. The transit engine must be enabled at the mount.
        """
        import hvac.exceptions as hx

        try:
            self._client.secrets.transit.read_key(name=self.key, mount_point=self.mount)
            created = False
        except hx.InvalidPath:
            self._call(
                "create the key",
                self._client.secrets.transit.create_key,
                name=self.key,
                derived=True,
                exportable=False,
                key_type="aes256-gcm96",
                mount_point=self.mount,
            )
            created = True
        self.refresh()
        return created

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt under the newest key version derived for ``aad``."""
        resp = self._call(
            "encrypt",
            self._client.secrets.transit.encrypt_data,
            name=self.key,
            plaintext=_b64(plaintext),
            context=_b64(aad),
            mount_point=self.mount,
        )
        return _MAGIC + resp["data"]["ciphertext"].encode("ascii")

    def _ciphertext(self, blob: bytes) -> str:
        if not blob.startswith(_MAGIC + b"vault:v"):
            raise RootKeyError("a stored key is not in the Vault transit format (wrong KMS?)")
        return blob[len(_MAGIC) :].decode("ascii", "replace")

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob made by :meth:`wrap` for the same ``aad``; ``RootKeyError`` if not."""
        resp = self._call(
            "decrypt",
            self._client.secrets.transit.decrypt_data,
            name=self.key,
            ciphertext=self._ciphertext(blob),
            context=_b64(aad),
            mount_point=self.mount,
        )
        return base64.b64decode(resp["data"]["plaintext"])

    def rewrap(self, blob: bytes, aad: bytes) -> bytes:
        """Re-encrypt a blob under the newest key version inside Vault (the key stays there)."""
        resp = self._call(
            "re-wrap",
            self._client.secrets.transit.rewrap_data,
            name=self.key,
            ciphertext=self._ciphertext(blob),
            context=_b64(aad),
            mount_point=self.mount,
        )
        return _MAGIC + resp["data"]["ciphertext"].encode("ascii")

    def rewrap_many(self, items: list[tuple[bytes, bytes]], chunk: int = 250) -> list[bytes]:
        """:meth:`rewrap` of many ``(blob, aad)`` pairs, in batches (one request per ``chunk``)."""
        out: list[bytes] = []
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            batch = [{"ciphertext": self._ciphertext(b), "context": _b64(a)} for b, a in part]
            resp = self._call(
                "re-wrap",
                self._client.secrets.transit.rewrap_data,
                name=self.key,
                ciphertext=None,
                batch_input=batch,
                mount_point=self.mount,
            )
            results = resp["data"]["batch_results"]
            if len(results) != len(part) or any("error" in r and r["error"] for r in results):
                raise RootKeyError(
                    "Vault could not re-wrap every stored key: a stored key is "
                    "not bound to its org and purpose, or was made by another key"
                )
            out += [_MAGIC + r["ciphertext"].encode("ascii") for r in results]
        return out

    def version_of(self, blob: bytes) -> int:
        """The transit key version a blob was made with."""
        return int(self._ciphertext(blob).split(":", 2)[1][1:])

    def rotate(self) -> str:
        """Make a new version of the transit key for new wraps; returns the new ``key_id``."""
        self._call(
            "rotate", self._client.secrets.transit.rotate_key, name=self.key, mount_point=self.mount
        )
        self.refresh()
        return self.key_id

    def retire_before(self, version: int) -> None:
        """Refuse decryption with versions before ``version`` (once every blob is re-wrapped)."""
        self._call(
            "update the key's configuration",
            self._client.secrets.transit.update_key_configuration,
            name=self.key,
            min_decryption_version=int(version),
            mount_point=self.mount,
        )
        self.refresh()

    @property
    def latest_version(self) -> int:
        """The newest key version (as of the last read)."""
        return self._latest

    def __repr__(self) -> str:
        return f"VaultTransitKms(key_id={self.key_id!r})"
