"""The vault: one deployment's orgs, keys, stores, context and audit, for admins and single-user use.

CONTRACT (filled in by the vault work). ``Vault`` is the façade the CLI, the demo, the hub services and
the single-user server extension use. Hub-spawned user servers do *not* use it: they get ``OrgKeys``
from the key service and build ``OrgStore`` directly.
"""

from __future__ import annotations

from .config import Settings


class Vault:
    """Orgs (registry in SQLite), their keys, data stores, context stores and audit logs."""

    def __init__(self, settings: Settings | None = None, kms=None):
        """``settings`` defaults to ``Settings.load()``; ``kms`` to ``LocalKms.from_env()``."""
        raise NotImplementedError

    def create_org(self, name: str, region: str) -> dict:
        """Create an org (name: ``[a-z][a-z0-9-]{1,31}``); refuse a region that does not match the
        roots' declared region (``ResidencyError``) or an existing name (``OrgExists``)."""
        raise NotImplementedError

    def orgs(self) -> list[dict]:
        """Every live org: name, region, created."""
        raise NotImplementedError

    def org_info(self, name: str) -> dict:
        """Region, key versions and fingerprints, per-table rows/files/bytes — never key material."""
        raise NotImplementedError

    def org_keys(self, name: str):
        """The org's ``OrgKeys`` (data key versions)."""
        raise NotImplementedError

    def store(self, name: str, *, actor: str = "admin"):
        """The org's ``OrgStore``."""
        raise NotImplementedError

    def context(self, name: str):
        """The org's ``ContextStore``."""
        raise NotImplementedError

    def audit(self, name: str):
        """The org's ``AuditLog``."""
        raise NotImplementedError

    def rotate_data_key(self, name: str, *, rewrite: bool = False) -> int:
        """New data-key version; with ``rewrite`` re-encrypt all files under it. Returns version."""
        raise NotImplementedError

    def rotate_root_key(self, new_kms) -> int:
        """Re-wrap every key under a new root key. Returns the number of keys re-wrapped."""
        raise NotImplementedError

    def delete_org(self, name: str, *, shred: bool) -> None:
        """Delete an org; with ``shred`` destroy its keys first (its files become unreadable)."""
        raise NotImplementedError
