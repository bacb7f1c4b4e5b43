"""Real permission resolution for the role-matrix server: users are members of an org with a role.

- :class:`TokenUsers`: a jupyter-server ``IdentityProvider`` mapping each bearer token to one user
  name (``<role>@<org>``), so one server serves every role at once. Identity itself (the hub's
  OAuth) is tested in the hub suite.
- :class:`ScopeAccess`: a ``LocalAccess`` whose users' permissions come from the scope strings the
  hub grants their role (``hub.roles.org_roles``), read back with ``permissions_from_scopes`` for
  the served org, as a hub-token check does.
- :func:`sample_request`: a valid request for an operation on the test data (``labdata`` runs).
"""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import Dict

from atomscale_lab.errors import ValidationError
from atomscale_lab.hub.roles import permissions_from_scopes
from atomscale_lab.schema import ARROW_STREAM
from atomscale_lab.server.access import LocalAccess
from tests.support.role_matrix import user_scopes


def user_name(role: str, org: str) -> str:
    """The test user holding ``role`` in ``org``."""
    return f"{role}@{org}"


def membership(user: str) -> tuple[str, str]:
    """``(org, role)`` of a test user name."""
    role, _, org = user.partition("@")
    return org, role


class TokenUsers(IdentityProvider):
    """Bearer token → user name, from ``c.TokenUsers.users``."""

    users = Dict(config=True, help="token -> user name")

    async def get_user_token(self, handler) -> User | None:
        """The user a request's token belongs to, or None."""
        name = self.users.get(self.get_token(handler) or "")
        return User(username=name) if name else None


class ScopeAccess(LocalAccess):
    """Local vault access with hub-style members: ``<role>@<org>`` holds that role's scopes."""

    def permissions(self, user: str) -> set[str]:
        """Permissions in the served org that the user's role scopes grant."""
        org, role = membership(user)
        try:
            scopes = user_scopes(org, role)
        except (StopIteration, ValidationError):  # no role of the table, or no org: no scopes
            return set()
        return permissions_from_scopes(scopes, self.org)

    def actor(self, user: str) -> str:
        """Events name the user."""
        return user


def metrology_body(run_id: str = "R-00001", n: int = 1) -> bytes:
    """An Arrow IPC stream of ``n`` derived results with new item ids (no run id column)."""
    t = pa.table(
        {
            "item_id": [f"D-{uuid.uuid4().hex[:12]}" for _ in range(n)],
            "technique": ["RHEED-fit"] * n,
            "time": pa.array(
                [1_736_150_400_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
            "result_name": ["oscillation_period"] * n,
            "result_value": [4.2 + i for i in range(n)],
            "result_unit": ["s"] * n,
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


PATH_VALUES = {"run_id": "R-00001", "item_id": "M-00001-xrd", "category": "process", "name": "runs"}


def sample_request(template: str, method: str) -> dict:
    """Keyword arguments for ``jp_fetch`` making a valid request of this operation."""
    path = template
    for k, v in PATH_VALUES.items():
        path = path.replace("{" + k + "}", v)
    if "{" in path:
        raise KeyError(f"no sample value for a parameter of {template}: add one to PATH_VALUES")
    kw: dict = {"method": method.upper(), "params": {}, "headers": {}, "path": path.split("/")}
    if (template, method) == ("metrology", "post"):
        kw["params"] = {"run_id": PATH_VALUES["run_id"]}
        kw["body"] = metrology_body()
        kw["headers"]["Content-Type"] = ARROW_STREAM
    elif (template, method) == ("context/join", "post"):
        kw["body"] = json.dumps(
            {"run_ids": ["R-00001"], "fields": ["film"], "purpose": "role matrix"}
        )
    elif template == "config" and method in ("put", "patch"):
        kw["body"] = json.dumps({"sidebar_page_size": 100, "units": {"pressure": "mbar"}})
    elif method in ("post", "put", "patch"):
        raise KeyError(f"no sample body for {method.upper()} {template}: add one here")
    if template == "facets/context":
        kw["params"] = {"field": "material_system", "purpose": "role matrix"}
    if template.startswith("tables/"):
        kw["params"]["format"] = "arrow"
    return kw
