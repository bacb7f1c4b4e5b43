"""JupyterHub roles and scopes of atomscale-lab: four roles per org, every scope filtered by org.

Custom scopes are ``custom:atomscale:<permission>`` for each permission of
:data:`atomscale_lab.permissions.PERMISSIONS`; a role of org ``acme`` holds them filtered as
``custom:atomscale:data:read!group=org:acme``. Users join roles through the hub groups the
authenticator derives from their identity-provider claims: ``org:<org>`` and ``role:<org>:<role>``
(names hold no ``:``, so no org's member group can be read as another org's role group; see
:mod:`atomscale_lab.names`).

Least privilege, per the role table: nobody gets ``tokens``, ``admin:users``, ``access:servers`` of
other users or write access to groups (each would let one user act as another, e.g. let the support
account reach a scientist's server or join the scientist group).
"""

from __future__ import annotations

from atomscale_lab.names import hub_org_group, hub_role_group, org_role_of_group
from atomscale_lab.permissions import PERMISSIONS, ROLE_PERMISSIONS, ROLES

SCOPE_PREFIX = "custom:atomscale:"

SCOPE_DESCRIPTIONS = {
    "data:read": "Read the org's process, tool-state and metrology data.",
    "data:write": "Write data into the org's datasets.",
    "context:join": "Join materials-system context labels onto data (audited).",
    "config": "Change the org's workspace configuration and set-up.",
    "audit:read": "Read one's own audit events.",
    "audit:all": "Read and verify every audit event of the org.",
}

HUB_SCOPES = {
    # Hub built-in scopes each role gets within its own org, on top of its own server.
    "org-admin": ["list:users", "read:users", "read:groups", "servers"],
    "scientist": [],
    "viewer": [],
    "support": ["list:users", "read:users", "read:groups", "servers"],
}


def custom_scopes() -> dict:
    """``c.JupyterHub.custom_scopes``: the atomscale permissions."""
    return {SCOPE_PREFIX + p: {"description": SCOPE_DESCRIPTIONS[p]} for p in PERMISSIONS}


def org_scope(permission: str, org: str) -> str:
    """The filtered scope string of ``permission`` in ``org`` (what services compare)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown atomscale permission {permission!r}")
    return f"{SCOPE_PREFIX}{permission}!group={hub_org_group(org)}"


def role_name(org: str, role: str) -> str:
    """The hub role of ``role`` in ``org`` (e.g. ``acme-scientist``)."""
    return f"{org}-{role}"


def role_group(org: str, role: str) -> str:
    """The hub group whose members hold ``role`` in ``org`` (e.g. ``role:acme:scientist``)."""
    return hub_role_group(org, role)


def org_roles(org: str) -> list[dict]:
    """The four ``load_roles`` entries of one org."""
    out = []
    for role in ROLES:
        scopes = [org_scope(p, org) for p in sorted(ROLE_PERMISSIONS[role])]
        scopes += [f"{s}!group={hub_org_group(org)}" for s in HUB_SCOPES[role]]
        out.append(
            {
                "name": role_name(org, role),
                "description": f"{role} of org {org}",
                "scopes": scopes,
                "groups": [role_group(org, role)],
            }
        )
    return out


def load_roles(orgs: list[str]) -> list[dict]:
    """``c.JupyterHub.load_roles`` for every org, plus the services' roles."""
    roles = []
    for org in orgs:
        roles += org_roles(org)
    # The services only resolve tokens (any token may ask who it belongs to) and need no scopes
    # of their own beyond identifying users who log in to them.
    return roles


DATA_SERVICE_PREFIX = "atomscale-data-"
INGEST_SERVICE = "atomscale-ingest"


def data_service_name(org: str) -> str:
    """The hub service that serves ``org``'s data (``atomscale-data-<org>``)."""
    return f"{DATA_SERVICE_PREFIX}{org}"


def key_holders(org: str) -> frozenset[str]:
    """The hub service identities that may receive ``org``'s keys: its data server and ingest."""
    return frozenset({data_service_name(org), INGEST_SERVICE})


def org_roles_of(groups) -> dict[str, set[str]]:
    """``{org: {role, ...}}`` from hub group names (``role:<org>:<role>``)."""
    out: dict[str, set[str]] = {}
    for g in groups:
        hit = org_role_of_group(getattr(g, "name", g))
        if hit and hit[1] in ROLES:
            out.setdefault(hit[0], set()).add(hit[1])
    return out


def server_token_scopes(spawner) -> list[str]:
    """``Spawner.server_token_scopes``: the default server scopes plus the owner's org scopes.

    Called before the auth-state hook, so the org comes from ``spawner.user.groups``. The hub
    intersects the result with what the user holds, so a stale group cannot widen access.
    """
    scopes = {
        "access:servers!server",
        "users:activity!user",
        "read:users:groups!user",
        "read:users:name!user",
    }
    for org, roles in org_roles_of(spawner.user.groups).items():
        for role in roles:
            scopes |= {org_scope(p, org) for p in ROLE_PERMISSIONS[role]}
    return sorted(scopes)


def permissions_from_scopes(scopes, org: str) -> set[str]:
    """The atomscale permissions in ``org`` that a token's (filtered) scope list grants.

    Only scopes filtered to exactly this org count: an unfiltered ``custom:atomscale:*`` scope
    (which no role here grants) is not taken as access to every org.
    """
    scopes = set(scopes)
    return {p for p in PERMISSIONS if org_scope(p, org) in scopes}
