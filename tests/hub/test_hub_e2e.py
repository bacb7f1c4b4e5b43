"""End-to-end: OIDC + MFA login, spawn as per-user Unix accounts, data through the server
extension, and every cross-org and least-privilege refusal, audited."""

from __future__ import annotations

import base64
import os
import subprocess
import time

import hub_helpers as helpers
import pytest
from hubstack import ORGS, api, events_json, server_pid

from atomscale_lab.hub.roles import ROLES

pytestmark = pytest.mark.slow


def test_mfa_login_spawns_server_and_reads_data(stack, running):
    user = "acme-scientist"
    token = running(user)
    r = api(stack, token, "GET", f"/user/{user}/atomscale/api/v1/status")
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["org"] == "acme"
    assert status["role"] == "scientist"
    assert set(status["permissions"]) == {"data:read", "data:write", "context:join",
                                          "audit:read"}
    r = api(stack, token, "GET", f"/user/{user}/atomscale/api/v1/runs")
    assert r.status_code == 200, r.text
    runs = r.json()
    assert runs["total"] == 4
    run_id = runs["runs"][0]["run_id"]
    r = api(stack, token, "GET", f"/user/{user}/atomscale/api/v1/runs/{run_id}/process",
            params={"max_points": 50})
    assert r.status_code == 200, r.text
    assert r.json()["data"], "no process data came back"
    # the key came from the key service, released to this user's server and audited
    released = stack.audit_events("acme", actor=user, action="key.release")
    assert any(e["outcome"] == "allowed" for e in released), events_json(released)
    reads = stack.audit_events("acme", actor=user, action="data.read")
    assert reads, "data reads through the server are not audited"
    logins = stack.audit_events("acme", actor=user, action="auth.login")
    assert any(e["outcome"] == "allowed" for e in logins)


def test_context_join_through_service(stack, running):
    user = "acme-scientist"
    token = running(user)
    runs = api(stack, token, "GET", f"/user/{user}/atomscale/api/v1/runs").json()["runs"]
    ids = [r["run_id"] for r in runs[:2]]
    r = api(stack, token, "POST", f"/user/{user}/atomscale/api/v1/context/join",
            json={"run_ids": ids, "fields": ["film"], "purpose": "e2e check"})
    assert r.status_code == 200, r.text
    labels = r.json()["labels"]
    assert {row["run_id"] for row in labels} == set(ids)
    assert all(row.get("film") for row in labels)
    joins = stack.audit_events("acme", actor=user, action="context.join")
    assert any(e["outcome"] == "allowed" for e in joins), events_json(joins)


def test_login_without_mfa_is_refused(stack):
    s = helpers.session(stack.ca)
    r = helpers.login(s, stack.url, "acme-nomfa", stack.passwords["acme-nomfa"])
    assert r.status_code == 403
    assert "multi-factor" in r.text
    assert s.get(f"{stack.url}/hub/api/user", timeout=30).status_code == 403
    denied = stack.audit_events("acme", actor="acme-nomfa", action="auth.login")
    assert denied and denied[0]["outcome"] == "denied", events_json(denied)


def test_identity_provider_restart_with_a_new_key_is_followed(stack, logged_in):
    logged_in("acme-viewer")  # the hub has fetched and cached the current JWKS
    before, after = stack.restart_idp()
    assert before != after, "a restarted provider must sign with a new key id"
    user = "beta-support"
    s = helpers.session(stack.ca)
    r = helpers.login(s, stack.url, user, stack.passwords[user],
                      helpers.fresh_totp(stack.idp, user))
    assert helpers.on_hub(r, stack.url), (r.status_code, r.text[-300:])


def test_wrong_totp_is_refused(stack):
    user = "beta-viewer"
    real = stack.idp.totp(user)
    now = time.time()
    valid = {real.at(now + d) for d in (-60, -30, 0, 30, 60)}
    wrong = next(c for c in ("000000", "123456", "999999") if c not in valid)
    s = helpers.session(stack.ca)
    r = helpers.login(s, stack.url, user, stack.passwords[user], wrong)
    assert r.status_code == 401
    assert "not valid" in r.text
    assert "/interaction/" in r.url  # still on the identity provider
    assert s.get(f"{stack.url}/hub/api/user", timeout=30).status_code == 403


def test_wrong_password_is_refused(stack):
    s = helpers.session(stack.ca)
    r = helpers.login(s, stack.url, "beta-viewer", "not-the-password", "000000")
    assert r.status_code == 401
    assert "Wrong user name or password" in r.text


def test_repeated_failures_lock_the_account_at_the_identity_provider(stack):
    user = "beta-lockme"
    for _ in range(10):
        r = helpers.login(helpers.session(stack.ca), stack.url, user, "wrong-password")
        assert r.status_code == 401
    s = helpers.session(stack.ca)
    r = helpers.login(s, stack.url, user, stack.passwords[user],
                      helpers.fresh_totp(stack.idp, user))
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert s.get(f"{stack.url}/hub/api/user", timeout=30).status_code == 403


def test_unknown_org_is_refused_with_a_clear_page(stack):
    s = helpers.session(stack.ca)
    r = helpers.login(s, stack.url, "gamma-user", stack.passwords["gamma-user"],
                      helpers.fresh_totp(stack.idp, "gamma-user"))
    assert r.status_code == 403
    assert "not served by this hub" in r.text


@pytest.mark.parametrize("role", ROLES)
def test_role_of_org_a_is_refused_everything_of_org_b(stack, logged_in, running, role):
    attacker = stack.user("acme", role)
    _, token = logged_in(attacker)
    victim = "beta-scientist"
    running(victim)
    before = len(stack.audit_events("beta", actor=attacker))
    # org B's server and its REST API
    for path in ("/atomscale/api/v1/status", "/atomscale/api/v1/runs", "/api/contents"):
        r = api(stack, token, "GET", f"/user/{victim}{path}")
        assert r.status_code in (302, 403), (path, r.status_code, r.text[:200])
        if r.status_code == 302:  # sent to the hub's OAuth, which will not grant access
            assert "/hub/api/oauth2/authorize" in r.headers["Location"]
    # org B's key service
    r = api(stack, token, "GET", "/services/atomscale-keys/orgs/beta/keys")
    assert r.status_code == 403, r.text
    assert "keys" not in r.json()
    # org B's context service
    r = api(stack, token, "POST", "/services/atomscale-context/orgs/beta/join",
            json={"run_ids": ["x"], "fields": ["film"], "purpose": "probe"})
    assert r.status_code == 403, r.text
    # org B's audit log via the service
    r = api(stack, token, "GET", "/services/atomscale-keys/orgs/beta/audit")
    assert r.status_code == 403
    # the refusals are in org B's audit trail, naming the caller
    after = stack.audit_events("beta", actor=attacker)
    actions = {(e["action"], e["outcome"]) for e in after[: len(after) - before]}
    assert ("key.release", "denied") in actions, events_json(after)
    assert ("context.join", "denied") in actions, events_json(after)
    # the refusals at B's server (its REST API included) are in B's log too, naming the caller
    server_denials = [e for e in stack.audit_events("beta", actor=victim, action="auth.server")
                      if e["detail"].get("reported_actor") == attacker]
    paths = {e["detail"]["path"] for e in server_denials}
    assert f"/user/{victim}/atomscale/api/v1/runs" in paths, events_json(server_denials)
    assert all(e["outcome"] == "denied" for e in server_denials)


def test_role_cannot_start_or_read_other_org_users(stack, logged_in):
    _, token = logged_in("acme-admin")
    r = api(stack, token, "POST", "/hub/api/users/beta-viewer/server")
    assert r.status_code in (403, 404)
    r = api(stack, token, "GET", "/hub/api/users/beta-scientist")
    assert r.status_code in (403, 404)
    r = api(stack, token, "POST", "/hub/api/users/acme-scientist/tokens", json={})
    assert r.status_code in (403, 404), "an org admin must not mint tokens for others"


def test_support_account_gets_no_data_key_and_no_context(stack, logged_in, running):
    user = "acme-support"
    token = running(user)
    r = api(stack, token, "GET", "/services/atomscale-keys/orgs/acme/keys")
    assert r.status_code == 403
    r = api(stack, token, "POST", "/services/atomscale-context/orgs/acme/join",
            json={"run_ids": ["x"], "fields": ["film"], "purpose": "probe"})
    assert r.status_code == 403
    # its own server started, but holds no key and serves no data
    r = api(stack, token, "GET", f"/user/{user}/atomscale/api/v1/runs")
    assert r.status_code in (403, 503), r.text
    events = stack.audit_events("acme", actor=user)
    assert ("key.release", "denied") in {(e["action"], e["outcome"]) for e in events}
    # support may list the org's users (user management) but not other orgs'
    r = api(stack, token, "GET", "/hub/api/users")
    assert r.status_code == 200
    assert all(u["name"].startswith("acme-") for u in r.json())
    # and may not take over a scientist's server or mint tokens for it
    r = api(stack, token, "GET", "/user/acme-scientist/atomscale/api/v1/status")
    assert r.status_code in (302, 403)
    r = api(stack, token, "POST", "/hub/api/users/acme-scientist/tokens", json={})
    assert r.status_code in (403, 404)


def test_viewer_reads_but_cannot_join_context(stack, logged_in):
    _, token = logged_in("acme-viewer")
    r = api(stack, token, "GET", "/services/atomscale-keys/orgs/acme/keys")
    assert r.status_code == 200
    r = api(stack, token, "POST", "/services/atomscale-context/orgs/acme/join",
            json={"run_ids": ["x"], "fields": ["film"], "purpose": "probe"})
    assert r.status_code == 403
    denied = stack.audit_events("acme", actor="acme-viewer", action="context.join")
    assert denied and denied[0]["outcome"] == "denied"


def test_servers_of_different_orgs_cannot_read_each_other(stack, running):
    running("acme-scientist")
    running("beta-scientist")
    a = stack.accounts["acme-scientist"]
    pid_b = server_pid(stack, "beta-scientist")
    pid_a = server_pid(stack, "acme-scientist")
    assert pid_a != pid_b

    def as_a(*cmd):
        return subprocess.run(["setpriv", f"--reuid={a.uid}", f"--regid={a.gid}",
                               "--clear-groups", *cmd], capture_output=True, text=True)

    # the servers really run as their own accounts
    assert os.stat(f"/proc/{pid_b}").st_uid == stack.accounts["beta-scientist"].uid
    assert os.stat(f"/proc/{pid_a}").st_uid == a.uid
    r = as_a("cat", f"/proc/{pid_b}/environ")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = as_a("ls", str(stack.home / "data" / "beta"))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = as_a("ls", str(stack.accounts["beta-scientist"].home))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    for private in (stack.home / "registry.sqlite", stack.home / "audit",
                    stack.home / "context", stack.home / "idp" / "users.json"):
        r = as_a("cat" if private.suffix else "ls", str(private))
        assert r.returncode != 0 and "Permission denied" in r.stderr, private
    # A's own server's environment is readable by A (control: the check above can succeed)
    r = as_a("cat", f"/proc/{pid_a}/environ")
    assert r.returncode == 0 and "ATOMSCALE_ORG=acme" in r.stdout


def test_no_key_material_in_server_environment_or_command_line(stack, running):
    running("acme-scientist")
    pid = server_pid(stack, "acme-scientist")
    env = open(f"/proc/{pid}/environ", "rb").read()
    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    v = stack.vault()
    try:
        secrets = [k for org in ORGS for k in v.org_keys(org).keys.values()]
    finally:
        v.close()
    root_key = (stack.base / "root.key").read_text().strip().encode()
    for blob in (env, cmd):
        assert b"ATOMSCALE_ROOT_KEY" not in blob
        assert root_key not in blob
        for k in secrets:
            for form in (k, base64.urlsafe_b64encode(k).rstrip(b"="), base64.b64encode(k),
                         k.hex().encode()):
                assert form not in blob
    assert b"OAUTH_CLIENT_SECRET" not in env and b"JUPYTERHUB_CRYPT_KEY" not in env


def test_audit_logs_still_verify(stack):
    v = stack.vault()
    try:
        for org in ORGS:
            assert v.audit(org).verify() > 0
    finally:
        v.close()


def test_ingest_runs_as_hub_service_and_feeds_the_org_server(stack, running):
    """An instrument streams through the hub's proxy into acme; acme's server sees the run."""
    import sys
    from datetime import UTC, datetime, timedelta

    env = {**os.environ, "ATOMSCALE_HOME": str(stack.home),
           "ATOMSCALE_ROOT_KEY_FILE": str(stack.base / "root.key")}
    r = subprocess.run([sys.executable, "-m", "atomscale_lab.cli", "apikey", "create", "acme",
                        "--scope", "ingest:process", "--expires", "1d", "--name", "mbe1"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    s = helpers.session(stack.ca)
    base = f"{stack.url}/services/atomscale-ingest"
    assert s.get(f"{base}/health", timeout=30).status_code == 200
    bad = s.post(f"{base}/streams", headers={"Authorization": "Bearer ask_not-a-key"},
                 json={"run_id": "x", "tool": "mbe1", "category": "process"}, timeout=30)
    assert bad.status_code == 401
    h = {"Authorization": f"Bearer {key}"}
    r = s.post(f"{base}/streams", headers=h, timeout=30,
               json={"run_id": "run-ingest-1", "tool": "mbe1", "category": "process"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"time": (t0 + timedelta(seconds=i)).isoformat(), "channel": "T", "value": float(i),
             "unit": "C"} for i in range(20)]
    r = s.post(f"{base}/streams/{sid}/batches", headers=h, timeout=30,
               json={"batch_id": "b1", "rows": rows})
    assert r.status_code == 200, r.text
    r = s.post(f"{base}/streams/{sid}/finalize", headers=h, timeout=60)
    assert r.status_code == 200, r.text
    token = running("acme-scientist")
    deadline = time.monotonic() + 20
    while True:
        r = api(stack, token, "GET", "/user/acme-scientist/atomscale/api/v1/runs/run-ingest-1")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
