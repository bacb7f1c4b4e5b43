"""User and org names: one validation and one mapping to Unix names and hub groups.

Names are 2-32 (orgs) or 2-64 (users) characters of ``a-z``, ``0-9`` and ``-``, starting with a
letter. They never hold
``:`` or ``_``, which is what keeps the derived names apart:

- hub groups: ``org:<org>`` (the org's members) and ``role:<org>:<role>`` (a role in the org). As
  ``:`` is not allowed in names, no org's member group can equal another org's role group;
- Unix names (at most 32 characters): ``<prefix><name>`` when it fits, otherwise a readable head
  of the name, ``_`` and a hash of the whole. Plain forms hold no ``_``, so a shortened name never
  equals a plain one; two shortened names are equal only on a 50-bit hash collision, which the
  creation paths refuse (:func:`check_unix_free`).

Reserved org names (``org``, ``role``, service names, ``atomscale…``) are refused when an org is
created; reserved user-name prefixes keep hub users apart from service identities and accounts.
"""

from __future__ import annotations

import base64
import hashlib
import re

from atomscale_lab.errors import ValidationError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
"""Org names: 2-32 characters (they name folders and hub groups)."""
USER_RE = re.compile(r"^[a-z][a-z0-9-]{1,63}$")
"""User names: 2-64 characters (``<org>-scientist`` of a long org name still fits)."""
UNIX_MAX = 32
"""Longest Unix user or group name the system tools accept."""
_HASH_CHARS = 10  # base32 characters: 50 bits

USER_PREFIX = "as-"
"""Unix user of a hub user: ``as-<user>``."""
ORG_GROUP_PREFIX = "as-org-"
SERVICE_PREFIX = "as-svc-"
"""Unix group of an org's members: ``as-org-<org>``."""

RESERVED_ORGS = frozenset(
    {
        "org",
        "orgs",
        "role",
        "roles",
        "group",
        "groups",
        "user",
        "users",
        "service",
        "services",
        "svc",
        "hub",
        "api",
        "admin",
        "admins",
        "root",
        "system",
        "deployment",
        "support",
        "data",
        "keys",
        "context",
        "ingest",
        "proxy",
        "jupyterhub",
        "default",
        "all",
        "none",
    }
)
"""Org names that would read as (or collide with) group prefixes, services or the deployment."""
RESERVED_ORG_PREFIXES = ("atomscale", "jupyterhub", "service-", "svc-", "org-", "role-")
RESERVED_USER_PREFIXES = ("atomscale", "jupyterhub", "service-", "svc-", "org-", "role-")
"""User-name heads kept for service identities and accounts (``atomscale-keys``, …)."""


def check_name(name, what: str = "user name") -> str:
    """Return ``name`` if it is a valid user name (or, when ``what`` names an org, org name),
    else raise ``ValidationError``."""
    org = what.startswith("org")
    pattern, longest = (NAME_RE, 32) if org else (USER_RE, 64)
    if not isinstance(name, str) or not pattern.match(name):
        raise ValidationError(
            f"invalid {what} {name!r}: use 2-{longest} of a-z, 0-9 and '-', starting with a letter",
            field=what,
        )
    return name


def check_new_org(name) -> str:
    """A valid org name that is not reserved (for creating an org)."""
    check_name(name, "org name")
    if name in RESERVED_ORGS or name.startswith(RESERVED_ORG_PREFIXES):
        raise ValidationError(
            f"the org name {name!r} is reserved (it would read as a group, "
            "service or deployment name); choose another",
            field="org name",
        )
    return name


def check_new_user(name) -> str:
    """A valid user name without a reserved head (for creating a user)."""
    check_name(name)
    if name.startswith(RESERVED_USER_PREFIXES) or name in RESERVED_ORGS:
        raise ValidationError(
            f"the user name {name!r} is reserved (service and system "
            "identities use it); choose another",
            field="user name",
        )
    return name


def unix_ident(prefix: str, name: str) -> str:
    """``prefix + name`` if at most 32 characters, else ``prefix + head + '_' + hash``.

    Injective for valid names under one prefix (see the module docstring); ``prefix`` is part
    of the hash so the same name under two prefixes maps apart too.
    """
    check_name(name)
    plain = prefix + name
    if len(plain) <= UNIX_MAX:
        return plain
    digest = hashlib.sha256(plain.encode()).digest()
    tag = base64.b32encode(digest).decode().lower()[:_HASH_CHARS]
    keep = UNIX_MAX - len(prefix) - 1 - _HASH_CHARS
    if keep < 1:
        raise ValueError(f"Unix name prefix {prefix!r} is too long")
    return f"{prefix}{name[:keep].rstrip('-')}_{tag}"


def unix_user(user: str) -> str:
    """The Unix account of a hub user."""
    return unix_ident(USER_PREFIX, user)


def unix_org_group(org: str) -> str:
    """The Unix group of an org's members."""
    return unix_ident(ORG_GROUP_PREFIX, org)


def unix_service_account(org: str) -> str:
    """The Unix account (and group) of an org's data server."""
    return unix_ident(SERVICE_PREFIX, org)


def check_unix_free(mapped: str, name: str, taken: dict[str, str], what: str) -> None:
    """Refuse ``name`` if its Unix name ``mapped`` already belongs to another name.

    ``taken`` maps Unix names in use to the names they stand for.
    """
    other = taken.get(mapped)
    if other is not None and other != name:
        raise ValidationError(
            f"the {what} {name!r} maps to the Unix name {mapped!r} of "
            f"{other!r}; choose another name",
            field=what,
        )


# ---------------------------------------------------------------- hub groups

ORG_GROUP = "org:"
ROLE_GROUP = "role:"
_ROLE_GROUP_RE = re.compile(r"^role:(?P<org>[a-z][a-z0-9-]{1,31}):(?P<role>[a-z-]+)$")
# (org names are at most 32 characters: see NAME_RE)
_ORG_GROUP_RE = re.compile(r"^org:(?P<org>[a-z][a-z0-9-]{1,31})$")


def hub_org_group(org: str) -> str:
    """The hub group of an org's members: ``org:<org>``."""
    return ORG_GROUP + check_name(org, "org name")


def hub_role_group(org: str, role: str) -> str:
    """The hub group holding ``role`` in ``org``: ``role:<org>:<role>``."""
    return f"{ROLE_GROUP}{check_name(org, 'org name')}:{role}"


def org_of_group(group: str) -> str | None:
    """The org of a member group ``org:<org>``, else None."""
    m = _ORG_GROUP_RE.match(group)
    return m["org"] if m else None


def org_role_of_group(group: str) -> tuple[str, str] | None:
    """``(org, role)`` of a role group ``role:<org>:<role>``, else None."""
    m = _ROLE_GROUP_RE.match(group)
    return (m["org"], m["role"]) if m else None
