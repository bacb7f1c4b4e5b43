"""``Kms`` plug-in for AWS KMS (or a service that speaks its API).

Settings (environment):

- ``ATOMSCALE_AWS_KMS_KEY_ID`` (required): the symmetric KMS key that wraps org keys (key id, ARN
  or ``alias/...``);
- ``ATOMSCALE_AWS_KMS_PREVIOUS_KEY_IDS`` (optional, comma-separated): keys that made blobs still
  in the registry, accepted for unwrapping and re-wrapping only (while moving to a new key);
- the standard AWS variables for the client: ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or a role.

Every blob is bound by ``EncryptionContext`` to its org, purpose and version (keys ``org``,
``purpose``, ``version`` and the whole binding under ``atomscale-lab``), so a key policy can
restrict a principal to one org (``kms:EncryptionContext:org``) and CloudTrail names the org of
each decryption. Decryption names the key explicitly (the key the blob says it was made with, if
that key is configured), so a blob planted in the registry under some other key that the
deployment's role may use is refused.
"""

from __future__ import annotations

import logging
import os

from atomscale_lab.errors import ConfigError, RootKeyError
from atomscale_lab.vault.kms import aad_fields

log = logging.getLogger(__name__)

ENV_KEY_ID = "ATOMSCALE_AWS_KMS_KEY_ID"
ENV_PREVIOUS = "ATOMSCALE_AWS_KMS_PREVIOUS_KEY_IDS"
_MAGIC = b"AK1:"


class AwsKms:
    """Wraps org keys with a symmetric AWS KMS key (the key never leaves the KMS).

    Blob format: ``b"AK1:"`` + 2-byte length + the key's ARN (ASCII) + KMS ``CiphertextBlob``.
    """

    def __init__(self, client, key_id: str, previous_key_ids: tuple[str, ...] = ()):
        """``client`` is a boto3 KMS client; ``key_id`` is resolved to its ARN (one call each)."""
        self._client = client
        self.arn = self._describe(key_id)
        self._known = {self.arn} | {self._describe(k) for k in previous_key_ids if k}
        self.key_id = f"aws-kms:{self.arn}"

    @classmethod
    def from_env(cls) -> AwsKms:
        """Build from ``ATOMSCALE_AWS_KMS_KEY_ID`` and the standard AWS variables."""
        try:
            import boto3
        except ImportError:
            raise ConfigError(
                "the AWS KMS plug-in needs boto3 (pip install 'atomscale-lab[kms]')"
            ) from None
        key_id = os.environ.get(ENV_KEY_ID, "").strip()
        if not key_id:
            raise ConfigError(f"{ENV_KEY_ID} is not set (the KMS key that wraps org keys)")
        previous = tuple(
            k.strip() for k in os.environ.get(ENV_PREVIOUS, "").split(",") if k.strip()
        )
        # boto3 reads AWS_ENDPOINT_URL, credentials and AWS_DEFAULT_REGION itself; not AWS_REGION.
        region = os.environ.get("AWS_REGION", "").strip() or None
        return cls(boto3.client("kms", region_name=region), key_id, previous)

    def _call(self, what: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise RootKeyError(
                    f"AWS KMS could not {what}: the stored key is not bound to "
                    "this org and purpose, or was made by another key"
                ) from None
            if code in ("NotFoundException", "DisabledException", "KMSInvalidStateException"):
                raise ConfigError(
                    f"AWS KMS could not {what}: the key is missing or disabled ({code})"
                ) from None
            if code in ("AccessDeniedException", "UnrecognizedClientException"):
                raise RootKeyError(
                    f"AWS KMS refused to {what} (credentials or key policy: {code})"
                ) from None
            log.warning("AWS KMS call %s failed: %s", what, code)
            raise RootKeyError(f"AWS KMS could not {what} ({code or 'error'})") from None
        except BotoCoreError as e:
            log.warning("AWS KMS call %s failed: %s", what, type(e).__name__)
            raise RootKeyError(
                f"AWS KMS is unavailable ({type(e).__name__}) while trying to {what}"
            ) from None

    def _describe(self, key_id: str) -> str:
        meta = self._call("describe the key", self._client.describe_key, KeyId=key_id)[
            "KeyMetadata"
        ]
        if (
            meta.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT"
            or meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
        ):
            raise ConfigError(f"KMS key {key_id!r} is not a symmetric encryption key")
        if meta.get("Origin") == "EXTERNAL":
            log.info("KMS key %s has imported key material", meta["Arn"])
        return meta["Arn"]

    @staticmethod
    def _pack(arn: str, ciphertext: bytes) -> bytes:
        raw = arn.encode("ascii")
        return _MAGIC + len(raw).to_bytes(2, "big") + raw + ciphertext

    def _unpack(self, blob: bytes) -> tuple[str, bytes]:
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 2:
            raise RootKeyError("a stored key is not in the AWS KMS format (wrong KMS?)")
        n = int.from_bytes(blob[len(_MAGIC) : len(_MAGIC) + 2], "big")
        start = len(_MAGIC) + 2
        arn = blob[start : start + n].decode("ascii", "replace")
        if arn not in self._known:
            raise RootKeyError(
                "a stored key was wrapped by a KMS key this deployment does not "
                f"use ({arn[:120]}); add it to {ENV_PREVIOUS} if it is yours"
            )
        return arn, blob[start + n :]

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt under the current key with the binding as ``EncryptionContext``."""
        resp = self._call(
            "encrypt",
            self._client.encrypt,
            KeyId=self.arn,
            Plaintext=plaintext,
            EncryptionContext=aad_fields(aad),
        )
        return self._pack(self.arn, resp["CiphertextBlob"])

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt with the key named in the blob and the same binding; ``RootKeyError`` if not."""
        arn, ct = self._unpack(blob)
        resp = self._call(
            "decrypt",
            self._client.decrypt,
            KeyId=arn,
            CiphertextBlob=ct,
            EncryptionContext=aad_fields(aad),
        )
        if resp.get("KeyId") not in (None, arn):
            raise RootKeyError("AWS KMS decrypted a stored key with an unexpected key")
        return resp["Plaintext"]

    def rewrap(self, blob: bytes, aad: bytes) -> bytes:
        """Re-encrypt inside AWS KMS under the current key (and its newest key material)."""
        arn, ct = self._unpack(blob)
        ctx = aad_fields(aad)
        resp = self._call(
            "re-encrypt",
            self._client.re_encrypt,
            CiphertextBlob=ct,
            SourceKeyId=arn,
            SourceEncryptionContext=ctx,
            DestinationKeyId=self.arn,
            DestinationEncryptionContext=ctx,
        )
        return self._pack(self.arn, resp["CiphertextBlob"])

    def rotate(self) -> str:
        """Rotate the current key's material now (AWS keeps the old material for decryption)."""
        self._call("rotate the key", self._client.rotate_key_on_demand, KeyId=self.arn)
        return self.key_id

    def __repr__(self) -> str:
        return f"AwsKms(key_id={self.key_id!r})"
