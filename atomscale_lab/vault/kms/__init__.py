"""External key-management services for the root key (``Kms`` plug-ins, see
:class:`atomscale_lab.vault.crypto.Kms`).

- :class:`~atomscale_lab.vault.kms.transit.VaultTransitKms` — HashiCorp Vault / OpenBao transit
  engine
  (``ATOMSCALE_KMS=atomscale_lab.vault.kms.transit:VaultTransitKms``).
- :class:`~atomscale_lab.vault.kms.aws.AwsKms` — AWS KMS
  (``ATOMSCALE_KMS=atomscale_lab.vault.kms.aws:AwsKms``).

With either, the root key is a key inside the KMS: it never exists in the deployment's memory or
files. The registry stores org keys wrapped by the KMS, each bound to its org, purpose and version
(transit: the key-derivation ``context``; AWS: the ``EncryptionContext``).

Besides the three members of the ``Kms`` protocol, both plug-ins have ``rotate()`` (a new version of
the wrapping key inside the KMS) and ``rewrap(blob, aad)`` (re-encrypt a blob under the newest
version inside the KMS, without the org key leaving it); ``atomscale-lab kms rotate`` uses them.
"""

from __future__ import annotations

import re

_AAD = re.compile(
    r"^atomscale-lab/org-key/(?P<org>[^/]+)/(?P<purpose>[a-z]+)/v(?P<version>[0-9]+)$")


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
    import os

    env = os.environ if environ is None else environ
    if not env.get("ATOMSCALE_KMS", "").strip():
        return {}
    return {k: v for k, v in env.items() if k.startswith(KMS_ENV_PREFIXES) and v}
