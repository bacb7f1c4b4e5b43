"""The role matrix: what every role of an org, and every role of another org, may do on each route.

Nothing here is a hand-written list of outcomes. The cases come from

- the routes and methods the server serves (``atomscale_lab.server.handlers.ROUTES``),
- the permissions each operation accepts (any of them suffices) and the audit action of a refusal,
  as the published API description declares them (``x-atomscale-permissions``,
  ``x-atomscale-audit`` in ``openapi.json``),
- the role table (``atomscale_lab.permissions.ROLE_PERMISSIONS``), turned into the hub's filtered
  scope strings by ``atomscale_lab.hub.roles.org_roles`` and back into permissions by
  ``permissions_from_scopes``, exactly as a server resolves a hub token.

Use from any suite (the hub suite runs it against the real hub)::
    from tests.support.role_matrix import cases, expected_status, user_scopes

``cases(role=None, same_org=None)`` lists :class:`Case` rows (template, method, role, same_org,
permissions, audit_action, expected); ``expected_status(template, method, role, same_org)`` is the
status a request must get (200/201 or 403); ``audit_action(template, method)`` the action a
refusal is recorded under (``AUDITED_WHEN_ALLOWED`` says which are recorded when allowed too);
``user_scopes(org, role)`` is the scope list a hub token of that role carries. A valid request
per operation on the ``labdata`` runs is ``tests.support.roles.sample_request(template, method)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from atomscale_lab.hub import roles as hub_roles
from atomscale_lab.permissions import PERMISSIONS, ROLE_PERMISSIONS
from atomscale_lab.server import handlers

METHODS = ("get", "post", "put", "patch", "delete")
SUCCESS = {"get": 200, "post": 200, "put": 200, "patch": 200, "delete": 204}
"""Success status per method; an operation documenting 201 (it creates something) uses that."""
REFUSED = 403
_SERVED, _OTHER = "org-a", "org-b"
"""Stand-in org names: only whether the user's org is the served one matters."""


AUDITED_WHEN_ALLOWED = frozenset(
    {"data.read", "data.write", "context.join", "config.change", "audit.read"}
)
"""Actions recorded when allowed too (the architecture: every data read, context join, config
change and audit read is an event, allowed or denied); reading status, the API description or the
configuration is not."""


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: a request of ``role`` (of the served org or another) on a route."""

    template: str
    method: str
    role: str
    same_org: bool
    permissions: frozenset[str]
    """Permissions the route accepts (any one suffices)."""
    audit_action: str
    """The action a refusal is recorded under."""
    expected: int

    @property
    def allowed(self) -> bool:
        """Whether the request must succeed."""
        return self.expected < 400

    def __str__(self) -> str:
        where = "own org" if self.same_org else "other org"
        return f"{self.method.upper()} {self.template} as {self.role} ({where})"


def operations() -> list[tuple[str, str]]:
    """``(template, method)`` of every served operation, in ``ROUTES`` order."""
    return [(t, m) for t, h in handlers.ROUTES for m in METHODS if m in vars(h)]


@cache
def _spec() -> dict:
    return handlers.openapi_spec()


def operation_doc(template: str, method: str) -> dict:
    """The operation's entry in the API description (KeyError if it is undocumented)."""
    return _spec()["paths"]["/" + template][method]


def required_permissions(template: str, method: str) -> frozenset[str]:
    """The permissions the operation accepts, as it declares them; each must be a real one."""
    perms = frozenset(operation_doc(template, method)["x-atomscale-permissions"])
    unknown = perms - set(PERMISSIONS)
    if not perms or unknown:
        raise ValueError(
            f"{method.upper()} {template} declares {sorted(perms)}; every "
            f"operation needs one or more of {PERMISSIONS}"
        )
    return perms


def audit_action(template: str, method: str) -> str:
    """The audit action a refusal of the operation is recorded under."""
    return operation_doc(template, method)["x-atomscale-audit"]


def success_status(template: str, method: str) -> int:
    """201 for an operation that documents it (it creates something), else the method's."""
    responses = operation_doc(template, method)["responses"]
    return 201 if "201" in responses else SUCCESS[method]


def user_scopes(org: str, role: str) -> list[str]:
    """The scopes the hub grants a member of ``org`` holding ``role`` (from ``org_roles``)."""
    name = hub_roles.role_name(org, role)
    return next(r["scopes"] for r in hub_roles.org_roles(org) if r["name"] == name)


def granted(role: str, user_org: str, served_org: str) -> set[str]:
    """Permissions a ``role`` of ``user_org`` has on ``served_org``'s server, via real scopes."""
    return hub_roles.permissions_from_scopes(user_scopes(user_org, role), served_org)


def expected_status(template: str, method: str, role: str, same_org: bool) -> int:
    """The status a request must get: success if the role (in the served org, or in another
    org) holds any permission the operation accepts, else 403."""
    perms = granted(role, _OTHER if not same_org else _SERVED, _SERVED)
    if perms & required_permissions(template, method):
        return success_status(template, method)
    return REFUSED


def roles() -> tuple[str, ...]:
    """Every role of the role table."""
    assert set(hub_roles.ROLES) == set(ROLE_PERMISSIONS), "hub roles and role table differ"
    return tuple(ROLE_PERMISSIONS)


def cases(role: str | None = None, same_org: bool | None = None) -> list[Case]:
    """Every operation × role × own/other org (optionally one role or one side)."""
    out = []
    for r in roles() if role is None else (role,):
        for same in (True, False) if same_org is None else (same_org,):
            for template, method in operations():
                out.append(
                    Case(
                        template,
                        method,
                        r,
                        same,
                        required_permissions(template, method),
                        audit_action(template, method),
                        expected_status(template, method, r, same),
                    )
                )
    return out
