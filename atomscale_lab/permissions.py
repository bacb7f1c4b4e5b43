"""The permissions and roles of an org, defined once for the server, the hub and the CLI.

In hub mode each permission is the scope ``custom:atomscale:<name>`` and each role a JupyterHub
role ``role:<org>:<role>`` (see :mod:`atomscale_lab.hub.roles`); in single-user mode the person
running the server holds every permission.
"""

from __future__ import annotations

PERMISSIONS = ("data:read", "data:write", "context:join", "config", "audit:read", "audit:all")
"""Permission names an ``OrgAccess`` may grant (``custom:atomscale:<name>`` scopes in hub mode)."""

ROLES = ("org-admin", "scientist", "viewer", "support")
"""The roles of an org, most privileged first."""

ROLE_PERMISSIONS = {
    "org-admin": frozenset(PERMISSIONS),
    "scientist": frozenset({"data:read", "data:write", "context:join", "audit:read"}),
    "viewer": frozenset({"data:read"}),
    "support": frozenset({"config"}),
}
"""What each role may do (the architecture's role table); ``audit:read`` alone means own events."""


def role_of(permissions: set[str] | frozenset[str]) -> str:
    """The most privileged role all of whose permissions are in ``permissions`` (else "none")."""
    perms = frozenset(permissions)
    for role in ROLES:
        if ROLE_PERMISSIONS[role] <= perms:
            return role
    return "none"
