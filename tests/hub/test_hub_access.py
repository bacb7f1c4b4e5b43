"""Identity and roles resolved by the real hub: ``HubAccess`` (what a user server uses) and the
REST API of real user servers, with a real token of each role.

The role tests of ``tests/notebook/test_permissions.py`` check how the REST handlers enforce a
given permission set; here the permission set comes from the hub itself (login through the
identity provider with MFA, the user's API token, ``GET /hub/api/user``).
"""

from __future__ import annotations

import pytest

from atomscale_lab.errors import PermissionDenied
from atomscale_lab.hub.access import HubAccess
from atomscale_lab.hub.roles import ROLES
from atomscale_lab.permissions import ROLE_PERMISSIONS
from tests.support.hubstack import api, events_json

pytestmark = pytest.mark.slow


@pytest.fixture
def access(stack, logged_in, tmp_path, monkeypatch):
    """``access(user, org="acme")``: a HubAccess holding ``user``'s real API token."""
    for var in (
        "ATOMSCALE_ORG",
        "ATOMSCALE_HUB_PUBLIC_URL",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTERHUB_USER",
        "ATOMSCALE_CA_BUNDLE",
    ):
        monkeypatch.delenv(var, raising=False)

    def make(user, org="acme"):
        _, token = logged_in(user)
        return HubAccess(
            org,
            hub_url=stack.url,
            token=token,
            ca_bundle=stack.ca,
            data_root=str(tmp_path),
            owner=user,
        )

    return make


@pytest.mark.parametrize("role", ROLES)
def test_hub_access_resolves_each_roles_permissions(stack, access, role):
    user = stack.user("acme", role)
    a = access(user)
    assert a.permissions(user) == set(ROLE_PERMISSIONS[role])
    # nobody else gets this server's permissions, and another org's token gives none in acme
    assert (
        a.permissions(stack.user("acme", "org-admin" if role != "org-admin" else "viewer")) == set()
    )
    other = stack.user("beta", role)
    assert access(other, org="beta").permissions(other) == set(ROLE_PERMISSIONS[role])
    assert access(other, org="acme").permissions(other) == set()


def test_hub_access_refuses_another_org_than_the_servers(monkeypatch, stack, tmp_path):
    monkeypatch.setenv("ATOMSCALE_ORG", "beta")
    with pytest.raises(PermissionDenied, match="serves org 'beta'"):
        HubAccess(
            "acme",
            hub_url=stack.url,
            token="unused",
            ca_bundle=stack.ca,
            data_root=str(tmp_path),
            owner="x",
        )


def test_hub_access_keys_context_and_audit_follow_the_role(stack, access, logged_in):
    sci, viewer, support = (stack.user("acme", r) for r in ("scientist", "viewer", "support"))
    a = access(sci)
    # A user's server holds no key, and the key service refuses every user's token (audited).
    with pytest.raises(PermissionDenied, match="holds no key"):
        a.org_keys()
    for user, org in ((sci, "acme"), (support, "acme"), (stack.user("beta", "scientist"), "beta")):
        _, token = logged_in(user)
        r = api(stack, token, "GET", "/services/atomscale-keys/orgs/acme/keys")
        assert r.status_code == 403 and "keys" not in r.json(), (user, r.status_code)
    refused = {
        e["actor"]
        for e in stack.audit_events("acme", action="key.release")
        if e["outcome"] == "denied"
    }
    assert {sci, support, stack.user("beta", "scientist")} <= refused
    # Context labels: scientists only, and only for the server's owner.
    frame = a.context_join(["R-none"], ["film"], "identity test", actor=sci)
    assert list(frame.columns) == ["run_id", "film"]
    with pytest.raises(PermissionDenied):
        access(viewer).context_join(["R-none"], ["film"], "probe", actor=viewer)
    with pytest.raises(PermissionDenied, match="owner"):
        a.context_join(["R-none"], ["film"], "probe", actor=viewer)
    denied = stack.audit_events("acme", actor=viewer, action="context.join")
    assert any(e["outcome"] == "denied" for e in denied), events_json(denied)
    # Audit events posted by a server carry the token's owner, whatever actor it reports.
    a.audit().record(sci, "data.read", table="process/runs", rows=1, marker="identity-own")
    a.audit().record(
        "mallory", "data.read", table="process/runs", rows=1, marker="identity-claimed"
    )
    mine = [
        e
        for e in stack.audit_events("acme", action="data.read")
        if e.get("detail", {}).get("marker", "").startswith("identity-")
    ]
    assert {e["actor"] for e in mine} == {sci}, events_json(mine)
    claimed = [e for e in mine if e["detail"]["marker"] == "identity-claimed"]
    assert claimed and claimed[0]["detail"]["reported_actor"] == "mallory"
    # audit:read alone: own events only
    assert {e["actor"] for e in a.audit_events(limit=50)} == {sci}


@pytest.mark.parametrize("role", ROLES)
def test_rest_api_of_a_real_server_follows_the_role(stack, running, role):
    user = stack.user("acme", role)
    token = running(user)
    perms = ROLE_PERMISSIONS[role]
    base = f"/user/{user}/atomscale/api/v1"
    r = api(stack, token, "GET", f"{base}/status")
    if "data:read" not in perms:
        # Support: the org's data server answers its status (no row counts), refuses every data
        # route (audited), and lets it configure the org's workspace.
        assert r.status_code == 200, r.text
        assert "categories" not in r.json() and r.json()["role"] == "support", r.text
        r = api(stack, token, "GET", f"{base}/runs")
        assert r.status_code == 403, r.text
        denied = [
            e
            for e in stack.audit_events("acme", actor=user, action="data.read")
            if e["outcome"] == "denied"
        ]
        assert denied, "support's refused read is not audited"
        r = api(stack, token, "GET", f"{base}/audit")
        assert r.status_code == 403, r.text
        r = api(stack, token, "PATCH", f"{base}/config", json={"sidebar_page_size": 40})
        assert r.status_code == 200 and r.json()["config"]["sidebar_page_size"] == 40, r.text
        changed = stack.audit_events("acme", actor=user, action="config.change")
        assert any(e["outcome"] == "allowed" for e in changed), events_json(changed)
        return
    assert r.status_code == 200, r.text
    assert r.json()["role"] == role and set(r.json()["permissions"]) == set(perms)
    r = api(stack, token, "GET", f"{base}/runs")
    assert r.status_code == 200 and r.json()["total"] > 0, r.text
    r = api(
        stack,
        token,
        "POST",
        f"{base}/context/join",
        json={"run_ids": ["R-none"], "fields": ["film"], "purpose": "role check"},
    )
    assert r.status_code == (200 if "context:join" in perms else 403), r.text
    r = api(stack, token, "GET", f"{base}/audit")
    if perms & {"audit:read", "audit:all"}:
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == ("all" if "audit:all" in perms else "own")
    else:
        assert r.status_code == 403, r.text
