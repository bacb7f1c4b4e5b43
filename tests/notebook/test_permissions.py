"""Roles in the REST API: what viewers, scientists and support may do, and denials are audited.

These tests check how the REST handlers enforce a role's permission set; the permission set comes
from ``labdata.RoleAccess`` (the role table, no identity). That the real hub resolves each role's
token to that set, and that real servers enforce it, is tested in ``tests/hub/test_hub_access.py``.
"""

import json

import pytest
from tornado.httpclient import HTTPClientError

API = ("atomscale", "api", "v1")


@pytest.fixture
def jp_server_config(lab_env):
    """The extension with an access class whose users have ATOMSCALE_TEST_ROLE's permissions."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"atomscale_lab": True},
            "allow_unauthenticated_access": False,
        },
        "AtomscaleLab": {
            "org": "acme",
            "access_class": "tests.support.labdata.RoleAccess",
            "scrub_root_key": False,
            "export_url": False,
        },
    }


async def code_of(jp_fetch, *path, **kw):
    try:
        r = await jp_fetch(*API, *path, **kw)
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)
    return r.code, json.loads(r.body)


def audit_lines(lab_env):
    path = lab_env["home"] / "audit" / "acme.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_viewer_reads_data_but_not_context_or_audit(jp_fetch, monkeypatch, lab_env):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "viewer")
    code, doc = await code_of(jp_fetch, "status")
    assert code == 200 and doc["role"] == "viewer" and "categories" in doc
    code, doc = await code_of(jp_fetch, "runs", params={"per_page": "5"})
    assert code == 200 and len(doc["runs"]) == 5
    body = json.dumps({"run_ids": ["R-00001"], "fields": ["film"], "purpose": "curious"})
    code, doc = await code_of(jp_fetch, "context", "join", method="POST", body=body)
    assert code == 403 and "context:join" in doc["message"]
    code, _ = await code_of(jp_fetch, "audit")
    assert code == 403
    denied = [
        e for e in audit_lines(lab_env) if e["actor"] == "viewer-user" and e["outcome"] == "denied"
    ]
    assert {e["action"] for e in denied} >= {"context.join", "audit.read"}


async def test_support_reads_no_data(jp_fetch, monkeypatch, lab_env):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "support")
    code, doc = await code_of(jp_fetch, "status")
    assert code == 200 and doc["role"] == "support" and "categories" not in doc
    for path in (
        ("runs",),
        ("runs", "R-00001"),
        ("runs", "R-00001", "process"),
        ("metrology",),
        ("tables", "process", "series"),
        ("facets",),
    ):
        code, doc = await code_of(jp_fetch, *path)
        assert code == 403, path
        assert "data:read" in doc["message"]
    denied = [
        e
        for e in audit_lines(lab_env)
        if e["actor"] == "support-user" and e["action"] == "data.read"
    ]
    assert denied and all(e["outcome"] == "denied" for e in denied)


async def test_scientist_sees_only_own_audit_events(jp_fetch, monkeypatch):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "scientist")
    await code_of(jp_fetch, "runs", "R-00002")
    code, doc = await code_of(jp_fetch, "audit", params={"limit": "50"})
    assert code == 200 and doc["scope"] == "own" and doc["events"]
    assert {e["actor"] for e in doc["events"]} == {"scientist-user"}
