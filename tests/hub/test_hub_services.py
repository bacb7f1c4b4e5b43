"""The key and context services' decisions, in process: exact filtered-scope comparison,
refusals audited in the right org, no key in a refusal.

Most tests resolve tokens from a table (``StubHubAuth``) so that scopes no real role carries
(look-alike filters, unfiltered scopes, a service identity) can be tried;
``test_real_tokens_of_each_role`` resolves real tokens of every role through the running hub
(a real ``HubAuth``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
import requests
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from atomscale_lab.hub.roles import ROLES, org_scope
from atomscale_lab.hub.services import context as context_service
from atomscale_lab.hub.services import keys as keys_service
from tests.support.hub_stub import StubHubAuth

TOKENS = {
    "sci-acme": {
        "kind": "user",
        "name": "ann",
        "scopes": [
            org_scope("data:read", "acme"),
            org_scope("context:join", "acme"),
            org_scope("audit:read", "acme"),
        ],
    },
    "view-acme": {"kind": "user", "name": "vic", "scopes": [org_scope("data:read", "acme")]},
    "support-acme": {"kind": "user", "name": "sup", "scopes": [org_scope("config", "acme")]},
    "sci-beta": {
        "kind": "user",
        "name": "bob",
        "scopes": [org_scope("data:read", "beta"), org_scope("context:join", "beta")],
    },
    "lookalike": {
        "kind": "user",
        "name": "eve",
        "scopes": [
            "custom:atomscale:data:read!group=org:acme-evil",
            "custom:atomscale:data:read",
            "custom:atomscale:data:read!user=eve",
        ],
    },
    "service": {"kind": "service", "name": "svc", "scopes": [org_scope("data:read", "acme")]},
    "data-acme": {"kind": "service", "name": "atomscale-data-acme", "scopes": []},
    "data-beta": {"kind": "service", "name": "atomscale-data-beta", "scopes": []},
    "ingest": {"kind": "service", "name": "atomscale-ingest", "scopes": []},
    "user-named-like-a-service": {
        "kind": "user",
        "name": "atomscale-data-acme",
        "scopes": [org_scope("data:read", "acme")],
    },
}


def _serve(vault, hub_auth):
    """Both services on free loopback ports (plain HTTP in process; TLS is the hub's job)."""
    servers, urls = [], {}
    for mod in (keys_service, context_service):
        app = mod.app.make_app(vault=vault, hub_auth=hub_auth)
        sock, port = bind_unused_port()
        srv = HTTPServer(app)
        srv.add_sockets([sock])
        servers.append(srv)
        urls[mod.NAME] = f"http://127.0.0.1:{port}/services/{mod.NAME}"
    return servers, urls


@pytest.fixture
def loop():
    """A fresh event loop for the in-process services and their client: a loop left current
    (or closed) by another test must not matter."""
    lp = asyncio.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    lp.close()


@pytest.fixture
def services(vault, loop):
    """Both services resolving tokens from ``TOKENS``."""

    vault.create_org("acme", "us")
    vault.create_org("beta", "us")
    vault.context("acme").put(
        [{"run_id": "r1", "film": "GaN", "substrate": "sapphire"}], actor="test"
    )
    servers, urls = _serve(vault, StubHubAuth(TOKENS))
    yield urls
    for s in servers:
        s.stop()


@pytest.fixture
def real_services(stack, tmp_path, loop):
    """Both services with the deployment's vault and a real ``HubAuth`` asking the running hub
    (through its public URL, verified with the deployment's CA) who a token belongs to."""
    from jupyterhub.services.auth import HubAuth

    from atomscale_lab.tls import ensure_certs

    # HubAuth takes a CA bundle only together with a client certificate; the proxy asks for
    # none, so a throw-away one does.
    client = ensure_certs(tmp_path / "client")
    auth = HubAuth(
        api_url=f"{stack.url}/hub/api",
        api_token="not-used-for-lookups",
        certfile=str(client.cert),
        keyfile=str(client.key),
        client_ca=stack.ca,
        cache_max_age=0,
    )
    vault = stack.vault()
    servers, urls = _serve(vault, auth)
    yield urls
    for s in servers:
        s.stop()
    vault.close()


def _call(url, token, method="GET", body=None):
    async def go():
        try:
            r = await AsyncHTTPClient().fetch(
                url,
                method=method,
                raise_error=True,
                headers={"Authorization": f"token {token}"} if token else {},
                body=json.dumps(body) if body is not None else None,
            )
            return r.code, json.loads(r.body)
        except HTTPClientError as e:
            return e.code, json.loads(e.response.body) if e.response else None

    return asyncio.get_event_loop_policy().get_event_loop().run_until_complete(go())


@pytest.fixture
def call(services):
    def run(service, path, token, method="GET", body=None):
        return _call(f"{services[service]}/{path}", token, method, body)

    return run


def test_keys_released_only_to_the_orgs_service_identities(call, vault):
    for token in ("data-acme", "ingest"):
        code, doc = call("atomscale-keys", "orgs/acme/keys", token)
        assert code == 200 and doc["org"] == "acme" and doc["keys"], token
    # every user token (server, kernel, personal: all the same kind) and every other service
    for token in (
        "sci-acme",
        "view-acme",
        "support-acme",
        "sci-beta",
        "lookalike",
        "service",
        "data-beta",
        "user-named-like-a-service",
        "nope",
        None,
    ):
        code, doc = call("atomscale-keys", "orgs/acme/keys", token)
        assert code in (401, 403), token
        assert "keys" not in (doc or {})
    events = vault.audit("acme").events(action="key.release", limit=50)
    outcomes = {(e["actor"], e["outcome"]) for e in events}
    assert {
        ("service:atomscale-data-acme", "allowed"),
        ("service:atomscale-ingest", "allowed"),
        ("ann", "denied"),
        ("vic", "denied"),
        ("sup", "denied"),
        ("bob", "denied"),
        ("eve", "denied"),
        ("service:atomscale-data-beta", "denied"),
        ("atomscale-data-acme", "denied"),
    } <= outcomes
    assert not {a for a, o in outcomes if o == "allowed"} - {
        "service:atomscale-data-acme",
        "service:atomscale-ingest",
    }


def test_heads_are_central_and_for_the_orgs_services_only(call, vault):
    head = {"table": "process/runs@0123abcd", "seq": 3, "digest": "a" * 64}
    assert call("atomscale-keys", "orgs/acme/heads?table=process/runs@0123abcd", "data-acme") == (
        200,
        {"head": None},
    )
    assert call("atomscale-keys", "orgs/acme/heads", "data-acme", "POST", head)[0] == 200
    older = dict(head, seq=2, digest="b" * 64)
    assert call("atomscale-keys", "orgs/acme/heads", "data-acme", "POST", older)[0] == 200
    # never backwards, and the same store the vault's own readers and writers use
    code, doc = call("atomscale-keys", "orgs/acme/heads?table=process/runs@0123abcd", "data-acme")
    assert (code, doc) == (200, {"head": [3, "a" * 64]})
    assert vault.heads().get("acme", "process/runs@0123abcd") == (3, "a" * 64)
    for token in ("sci-acme", "data-beta", "view-acme"):
        assert (
            call("atomscale-keys", "orgs/acme/heads?table=process/runs@0123abcd", token)[0] == 403
        ), token
        assert (
            call("atomscale-keys", "orgs/acme/heads", token, "POST", dict(head, seq=9))[0] == 403
        ), token
    assert vault.heads().get("acme", "process/runs@0123abcd") == (3, "a" * 64)
    code, _ = call(
        "atomscale-keys", "orgs/acme/heads", "data-acme", "POST", dict(head, digest="not-hex")
    )
    assert code == 400
    denied = vault.audit("acme").events(action="heads.access", limit=50)
    assert {"ann", "service:atomscale-data-beta"} <= {e["actor"] for e in denied}


def test_data_server_records_events_of_its_callers(call, vault):
    code, _ = call(
        "atomscale-keys",
        "orgs/acme/audit",
        "data-acme",
        "POST",
        {"actor": "ann", "action": "data.read", "detail": {"rows": 3, "via": "x"}},
    )
    assert code == 201
    ev = vault.audit("acme").events(action="data.read", limit=1)[0]
    assert ev["actor"] == "ann" and ev["detail"]["via"] == "atomscale-data-acme"
    # another org's data server, or a service that is no data server, cannot
    assert (
        call(
            "atomscale-keys",
            "orgs/acme/audit",
            "data-beta",
            "POST",
            {"actor": "ann", "action": "data.read"},
        )[0]
        == 403
    )
    code, _ = call(
        "atomscale-keys",
        "orgs/acme/audit",
        "data-acme",
        "POST",
        {"actor": "ann", "action": "key.release"},
    )
    assert code == 403  # nor forge key releases
    code, doc = call("atomscale-keys", "orgs/acme/audit?actor=ann", "data-acme")
    assert code == 200 and doc["events"] and {e["actor"] for e in doc["events"]} == {"ann"}


def test_unknown_org_reveals_nothing(call):
    code, doc = call("atomscale-keys", "orgs/gamma/keys", "sci-acme")
    assert code == 403
    code, doc = call("atomscale-keys", "orgs/gamma/keys", "data-acme")
    assert code == 403


def test_context_join_needs_the_context_scope(call, vault):
    code, doc = call(
        "atomscale-context",
        "orgs/acme/join",
        "sci-acme",
        "POST",
        {"run_ids": ["r1", "r9"], "fields": ["film"], "purpose": "test"},
    )
    assert code == 200
    assert {row["run_id"]: row["film"] for row in doc["labels"]} == {"r1": "GaN", "r9": None}
    for token in ("view-acme", "support-acme", "sci-beta", "lookalike"):
        code, _ = call(
            "atomscale-context",
            "orgs/acme/join",
            token,
            "POST",
            {"run_ids": ["r1"], "fields": ["film"], "purpose": "probe"},
        )
        assert code == 403, token
    code, doc = call(
        "atomscale-context",
        "orgs/acme/join",
        "sci-acme",
        "POST",
        {"run_ids": ["r1"], "fields": ["film"], "purpose": ""},
    )
    assert code == 400 and "purpose" in doc["message"]
    events = vault.audit("acme").events(action="context.join", limit=50)
    assert {("vic", "denied"), ("sup", "denied"), ("bob", "denied"), ("ann", "allowed")} <= {
        (e["actor"], e["outcome"]) for e in events
    }


def test_servers_post_audit_events_as_their_owner_only(call, vault):
    code, _ = call(
        "atomscale-keys",
        "orgs/acme/audit",
        "sci-acme",
        "POST",
        {
            "action": "data.read",
            "detail": {"table": "process/runs", "actor": "mallory", "outcome": "x", "service": "y"},
        },
    )
    assert code == 201
    ev = vault.audit("acme").events(action="data.read", limit=1)[0]
    assert ev["actor"] == "ann" and "mallory" not in json.dumps(ev)
    code, _ = call(
        "atomscale-keys",
        "orgs/acme/audit",
        "sci-acme",
        "POST",
        {"action": "key.release", "outcome": "allowed"},
    )
    assert code == 403  # servers cannot forge key releases
    code, _ = call("atomscale-keys", "orgs/acme/audit", "sci-beta", "POST", {"action": "data.read"})
    assert code == 403
    code, doc = call("atomscale-keys", "orgs/acme/audit", "sci-acme")
    assert code == 200 and {e["actor"] for e in doc["events"]} == {"ann"}
    # audit:read alone cannot ask for someone else's events; the attempt is on record
    code, _ = call("atomscale-keys", "orgs/acme/audit?actor=vic", "sci-acme")
    assert code == 403
    ev = vault.audit("acme").events(action="audit.read", limit=1)[0]
    assert (ev["actor"], ev["outcome"], ev["detail"]["requested_actor"]) == ("ann", "denied", "vic")


def test_service_stops_on_sigterm(tmp_path, vault):
    port = bind_unused_port()
    port[0].close()
    env = {
        "PATH": "/usr/bin:/bin",
        "ATOMSCALE_HOME": str(vault.settings.home),
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port[1]}",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/atomscale-keys/",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
        "JUPYTERHUB_API_TOKEN": "x",
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "atomscale_lab.hub.services.keys"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port[1]}/services/atomscale-keys/health"
        for _ in range(100):
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("service did not start")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0  # a hang fails here (the hub waits on its services)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_org_configuration_read_by_members_changed_with_the_config_scope(call, vault):
    code, doc = call(
        "atomscale-keys",
        "orgs/acme/config",
        "support-acme",
        "PUT",
        {"sidebar_page_size": 30, "default_project": "gan-hemt"},
    )
    assert code == 200 and doc["config"]["sidebar_page_size"] == 30
    code, doc = call("atomscale-keys", "orgs/acme/config", "view-acme")
    assert code == 200 and doc["config"]["default_project"] == "gan-hemt"
    assert vault.org_config("acme")["config"]["sidebar_page_size"] == 30
    for token in ("sci-acme", "view-acme", "sci-beta", "lookalike"):
        code, _ = call(
            "atomscale-keys", "orgs/acme/config", token, "PUT", {"sidebar_page_size": 10}
        )
        assert code == 403, token
    for token in ("sci-beta", "lookalike", None):
        assert call("atomscale-keys", "orgs/acme/config", token)[0] in (401, 403), token
    code, doc = call(
        "atomscale-keys", "orgs/acme/config", "support-acme", "PUT", {"sidebar_page_size": 10_000}
    )
    assert code == 400 and "sidebar_page_size" in doc["message"]
    assert vault.org_config("acme")["config"]["sidebar_page_size"] == 30
    events = vault.audit("acme").events(action="config.change", limit=50)
    assert {(e["actor"], e["outcome"]) for e in events} == {
        ("sup", "allowed"),
        ("ann", "denied"),
        ("vic", "denied"),
    }
    allowed = [e for e in events if e["outcome"] == "allowed"]
    assert allowed[0]["detail"]["keys"] == ["default_project", "sidebar_page_size"]


@pytest.mark.slow
def test_real_tokens_of_each_role(stack, logged_in, real_services):
    from atomscale_lab.permissions import ROLE_PERMISSIONS

    def call(service, path, token, method="GET", body=None):
        return _call(f"{real_services[service]}/{path}", token, method, body)

    for org in ("acme", "beta"):
        for role in ROLES:
            user = stack.user(org, role)
            _, token = logged_in(user)
            perms = ROLE_PERMISSIONS[role]
            code, doc = call("atomscale-keys", "orgs/acme/keys", token)
            # keys go to the org's services only: every user token of every role is refused
            # (the message only: a wrongly released key must not end up in the test output)
            assert code == 403, (user, code, (doc or {}).get("message"))
            assert "keys" not in (doc or {})
            code, doc = call(
                "atomscale-context",
                "orgs/acme/join",
                token,
                "POST",
                {"run_ids": ["R-none"], "fields": ["film"], "purpose": "roles"},
            )
            may_join = org == "acme" and "context:join" in perms
            assert code == (200 if may_join else 403), (user, code, (doc or {}).get("message"))
    events = stack.audit_events("acme", action="key.release")
    seen = {(e["actor"], e["outcome"]) for e in events}
    assert {(stack.user("acme", role), "denied") for role in ROLES} <= seen
    assert not [
        e for e in events if e["outcome"] == "allowed" and not e["actor"].startswith("service:")
    ], events
    assert call("atomscale-keys", "orgs/acme/keys", "not-a-token")[0] in (401, 403)
