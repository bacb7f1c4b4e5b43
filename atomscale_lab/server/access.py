"""Where the server extension gets an org's key, log heads, audit sink, permissions and context.

The extension never talks to the key registry or the context store itself: it asks an
:class:`OrgAccess`. Two implementations exist:

- :class:`LocalAccess` (single-user mode, ``atomscale-lab lab ORG``): the person running the server
  holds the root key and owns the vault, so every authenticated user of that server gets every
  permission.
- ``atomscale_lab.hub.services.data.DataServerAccess`` (JupyterHub mode, in the org's data server
  ``atomscale-data-<org>``): the key comes from the hub key service with the data server's service
  token, heads from the deployment registry through it, context joins go through the hub context
  service with the caller's token, audit events to the hub naming the caller, permissions from the
  caller's hub scopes. Users' servers hold no key (``atomscale_lab.hub.forward``).

The extension picks the class with ``c.AtomscaleLab.access_class`` (an import string) and builds it
as ``cls(org, **c.AtomscaleLab.access_kwargs)``.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from atomscale_lab.permissions import PERMISSIONS

if TYPE_CHECKING:  # keep `import atomscale_lab.server.access` cheap and free of cycles
    import pandas as pd

    from atomscale_lab.vault.audit import AuditSink
    from atomscale_lab.vault.crypto import OrgKeys
    from atomscale_lab.vault.store import HeadStore


@runtime_checkable
class OrgAccess(Protocol):
    """What a user server needs from its deployment to serve one org.

    Implementations are built once per server as ``cls(org, **kwargs)``; ``org_keys`` is called
    once at start (the result stays in memory only). All methods may raise ``atomscale_lab.errors``
    exceptions (``KeyUnavailable``, ``PermissionDenied`` …); the handlers turn them into HTTP codes.
    """

    org: str
    """The org this server serves."""
    region: str
    """The region its storage roots are declared in."""
    data_root: Path
    """The raw-data root; the org's tables live under ``data_root/<org>/``."""

    def org_keys(self) -> OrgKeys:
        """The org's data-key versions (audited as ``key.release`` by whoever releases them)."""

    def heads(self) -> HeadStore | None:
        """Where the latest commit-log heads are kept outside the data root, if anywhere."""

    def audit(self) -> AuditSink:
        """The sink for this org's audit events."""

    def permissions(self, user: str) -> set[str]:
        """The subset of :data:`PERMISSIONS` that ``user`` has in this org."""

    def actor(self, user: str) -> str:
        """The name audit events carry for the authenticated ``user`` (usually ``user`` itself)."""

    def context_join(
        self, run_ids: Sequence[str], fields: Sequence[str], purpose: str, actor: str
    ) -> pd.DataFrame:
        """Context labels (``run_id`` plus ``fields``) of ``run_ids``; audited as ``context.join``.

        ``purpose`` must be a non-empty statement of why; unknown fields raise ``ValidationError``.
        """

    def audit_events(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict]:
        """Recent audit events of the org (most recent first), optionally only ``actor``'s."""

    def org_config(self) -> dict:
        """The org's workspace configuration, ``{config, updated}`` (see ``orgconfig``)."""

    def set_org_config(self, config: dict) -> dict:
        """Store the org's complete, validated configuration; returns ``{config, updated}``."""


class LocalAccess:
    """:class:`OrgAccess` for single-user mode, on top of a
    :class:`~atomscale_lab.vault.facade.Vault`.

    The server's owner (who holds the root key) gets every permission; audit events name the
    owner's login (``owner``), since a single-user server's own user names are random.
    """

    def __init__(self, org: str, vault=None, owner: str | None = None):
        from atomscale_lab.vault.facade import Vault

        self.vault = vault if vault is not None else Vault()
        self.org = org
        self.region = self.vault.org_region(org)  # raises UnknownOrg for a missing/deleted org
        self.data_root = self.vault.settings.data_root
        self.owner = owner or _login_name()
        self._audit = None

    def actor(self, user: str) -> str:
        """The name audit events carry for ``user`` (the owner's login in single-user mode)."""
        return self.owner

    def org_keys(self):
        """The org's data keys from the local key registry (audited as ``key.release``)."""
        keys = self.vault.org_keys(self.org)
        self.audit().record(
            self.owner, "key.release", target="local-server", versions=sorted(keys.keys)
        )
        return keys

    def heads(self):
        """Log heads in the deployment's registry."""
        return self.vault.heads()

    def audit(self):
        """The org's local audit log."""
        if self._audit is None:
            self._audit = self.vault.audit(self.org)
        return self._audit

    def permissions(self, user: str) -> set[str]:
        """Every permission: whoever authenticates to this server is its owner."""
        return set(PERMISSIONS)

    def context_join(self, run_ids, fields, purpose, actor):
        """Labels of ``run_ids`` through the org's context store (which audits the join)."""
        import pandas as pd

        frame = pd.DataFrame({"run_id": pd.Series(list(dict.fromkeys(run_ids)), dtype=object)})
        return self.vault.context(self.org).join(
            frame, fields=list(fields), purpose=purpose, actor=actor
        )

    def audit_events(self, *, actor=None, action=None, limit=100, offset=0):
        """Events of the local audit log."""
        return self.audit().events(actor=actor, action=action, limit=limit, offset=offset)

    def org_config(self):
        """The org's configuration from the vault registry."""
        return self.vault.org_config(self.org)

    def set_org_config(self, config):
        """Store the org's configuration in the vault registry."""
        return self.vault.set_org_config(self.org, config)

    def __repr__(self) -> str:
        return f"LocalAccess(org={self.org!r}, owner={self.owner!r})"


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "owner"
