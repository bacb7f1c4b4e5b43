"""AtomscaleAuthenticator without a hub: id_token verification, MFA, org/role, refresh.

Tokens are signed with a key whose JWKS a small https server on 127.0.0.1 serves (certificate from
``atomscale_lab.tls``); forged tokens are signed with another key (same ``kid``), or carry a
wrong issuer, audience or expiry.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tornado import web

from atomscale_lab.hub.auth import AtomscaleAuthenticator, AuthRefused
from atomscale_lab.hub.roles import (
    org_roles,
    org_scope,
    permissions_from_scopes,
    server_token_scopes,
)
from atomscale_lab.tls import ensure_certs

ISS = "https://idp.test"
AUD = "atomscale-hub"


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _Jwks:
    """A JWKS document served over https (replace ``.doc`` to rotate keys)."""

    def __init__(self, certs):
        self.doc = {"keys": []}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.cert, certs.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write_text(self, text):
        self.doc = json.loads(text)


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory):
    """The https JWKS endpoint and its CA."""
    certs = ensure_certs(tmp_path_factory.mktemp("certs"))
    srv = _Jwks(certs)
    yield srv, certs
    srv.server.shutdown()


@pytest.fixture
def idp_key(jwks_server):
    """The provider's signing key and the authenticator trusting its JWKS."""
    srv, certs = jwks_server
    key = _key()
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    srv.doc = {"keys": [jwk]}
    a = AtomscaleAuthenticator(
        issuer=ISS,
        client_id=AUD,
        client_secret="unused",
        jwks_url=srv.url,
        ca_certs=str(certs.ca),
        known_orgs={"acme", "beta"},
        jwks_cooldown=0,
    )
    return key, a, srv


def _token(key, kid="k1", **over):
    now = int(time.time())
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u1",
        "iat": now,
        "exp": now + 300,
        "preferred_username": "acme-scientist",
        "org": "acme",
        "role": "scientist",
        "amr": ["pwd", "otp", "mfa"],
    }
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _model(a, token):
    async def go():
        claims = await a.token_to_user({"id_token": token, "access_token": "x"})
        model = {
            "name": claims["preferred_username"],
            "admin": None,
            "auth_state": {
                a.user_auth_state_key: claims,
                "token_response": {"id_token": token, "access_token": "x"},
            },
        }
        model = await a.update_auth_model(model)
        model["groups"] = sorted(await a.get_user_groups(model["auth_state"]))
        return model

    return asyncio.run(go())


def test_valid_mfa_token_maps_org_and_role_to_groups(idp_key):
    key, a, _ = idp_key
    model = _model(a, _token(key))
    assert model["groups"] == ["org:acme", "role:acme:scientist"]
    assert asyncio.run(a.check_allowed(model["name"], model)) is True


@pytest.mark.parametrize("amr", [None, [], ["pwd"], "pwd", ["otp-ish"]])
def test_token_without_mfa_is_refused(idp_key, amr):
    key, a, _ = idp_key
    with pytest.raises(AuthRefused, match="multi-factor"):
        _model(a, _token(key, amr=amr))


def test_acr_can_prove_mfa_when_configured(idp_key):
    key, a, _ = idp_key
    a.accepted_acr = ["gold"]
    assert _model(a, _token(key, amr=None, acr="gold"))["groups"]
    with pytest.raises(AuthRefused):
        _model(a, _token(key, amr=None, acr="silver"))


def test_forged_signature_is_refused_even_with_a_known_kid(idp_key):
    key, a, _ = idp_key
    forged = _token(_key(), kid="k1", org="beta", role="org-admin")
    with pytest.raises(AuthRefused, match="could not be verified"):
        _model(a, forged)


def test_unsigned_token_is_refused(idp_key):
    _, a, _ = idp_key
    none_token = jwt.encode(
        {
            "iss": ISS,
            "aud": AUD,
            "sub": "u",
            "exp": time.time() + 60,
            "iat": time.time(),
            "org": "acme",
            "role": "org-admin",
            "amr": ["mfa"],
        },
        None,
        algorithm="none",
        headers={"kid": "k1"},
    )
    with pytest.raises(AuthRefused):
        _model(a, none_token)


@pytest.mark.parametrize(
    "over",
    [
        {"iss": "https://evil.test"},
        {"aud": "other-client"},
        {"exp": 1000},
        {"exp": None},
        {"aud": None},
    ],
)
def test_wrong_issuer_audience_or_expiry_is_refused(idp_key, over):
    key, a, _ = idp_key
    with pytest.raises(AuthRefused):
        _model(a, _token(key, **over))


def test_unknown_kid_refetches_the_jwks(idp_key):
    key, a, jwks = idp_key
    _model(a, _token(key))  # caches k1
    rotated = _key()
    jwk = json.loads(RSAAlgorithm.to_jwk(rotated.public_key()))
    jwk.update(kid="k2", alg="RS256", use="sig")
    jwks.write_text(json.dumps({"keys": [jwk]}))
    assert _model(a, _token(rotated, kid="k2"))["groups"] == ["org:acme", "role:acme:scientist"]


@pytest.mark.parametrize(
    "over,msg",
    [
        ({"org": "gamma"}, "not served by this hub"),
        ({"org": None}, "no organization"),
        ({"role": "root"}, "no valid role"),
    ],
)
def test_unknown_org_or_role_gets_a_clear_403(idp_key, over, msg):
    key, a, _ = idp_key
    with pytest.raises(AuthRefused, match=msg) as e:
        _model(a, _token(key, **over))
    assert isinstance(e.value, web.HTTPError) and e.value.status_code == 403


def test_list_claims_need_exactly_one_known_value(idp_key):
    key, a, _ = idp_key
    model = _model(a, _token(key, org=["acme"], role=["Default", "viewer"]))
    assert model["groups"] == ["org:acme", "role:acme:viewer"]
    with pytest.raises(AuthRefused):
        _model(a, _token(key, role=["viewer", "org-admin"]))
    with pytest.raises(AuthRefused):
        _model(a, _token(key, org=["acme", "beta"]))


class _User:
    name = "acme-scientist"

    def __init__(self, state):
        self.state = state

    async def get_auth_state(self):
        return self.state


def test_refresh_rechecks_the_stored_token(idp_key):
    key, a, _ = idp_key
    good = _token(key)
    model = asyncio.run(
        a.refresh_user(_User({"token_response": {"id_token": good, "access_token": "x"}}))
    )
    assert model and model["groups"] == ["org:acme", "role:acme:scientist"]
    for bad in (_token(key, amr=["pwd"]), _token(key, exp=int(time.time()) - 3600), _token(_key())):
        state = {"token_response": {"id_token": bad, "access_token": "x"}}
        assert asyncio.run(a.refresh_user(_User(state))) is False
    assert asyncio.run(a.refresh_user(_User(None))) is False


def test_audit_hook_records_denials(idp_key):
    key, a, _ = idp_key
    seen = []
    a.audit_hook = lambda org, actor, action, outcome, **d: seen.append(
        (org, actor, action, outcome)
    )
    with pytest.raises(AuthRefused):
        _model(a, _token(key, amr=["pwd"]))
    assert seen == [("acme", "acme-scientist", "auth.login", "denied")]


def test_jwks_over_untrusted_tls_is_refused(idp_key):
    # The token is signed with the key the JWKS serves: only the certificate check can refuse it.
    key, trusting, srv = idp_key
    token = _token(key)
    assert _model(trusting, token)["groups"] == ["org:acme", "role:acme:scientist"]
    untrusting = AtomscaleAuthenticator(
        issuer=ISS,
        client_id=AUD,
        client_secret="unused",
        jwks_url=srv.url,
        known_orgs={"acme"},
        jwks_cooldown=0,
    )
    with pytest.raises(AuthRefused, match="could not be verified") as e:
        _model(untrusting, token)
    assert e.value.status_code == 403


def test_auth_state_cannot_be_disabled():
    with pytest.raises(ValueError, match="enable_auth_state"):
        AtomscaleAuthenticator(enable_auth_state=False)


# --------------------------------------------------------------------------- roles


def test_roles_are_filtered_by_org_and_support_holds_no_data_scope():
    roles = {r["name"]: r for r in org_roles("acme")}
    assert set(roles) == {"acme-org-admin", "acme-scientist", "acme-viewer", "acme-support"}
    for r in roles.values():
        assert all(s.endswith("!group=org:acme") for s in r["scopes"]), r
        assert not any(
            s.split("!")[0]
            in (
                "tokens",
                "admin:users",
                "access:servers",
                "groups",
                "admin:groups",
                "admin:auth_state",
            )
            for s in r["scopes"]
        ), r
    support = set(roles["acme-support"]["scopes"])
    assert org_scope("config", "acme") in support
    assert (
        not {org_scope(p, "acme") for p in ("data:read", "data:write", "context:join", "audit:all")}
        & support
    )
    assert org_scope("context:join", "acme") not in roles["acme-viewer"]["scopes"]
    assert org_scope("data:write", "acme") not in roles["acme-viewer"]["scopes"]


def test_permissions_need_the_exact_org_filter():
    scopes = [
        org_scope("data:read", "acme"),
        "custom:atomscale:context:join",
        "custom:atomscale:config!group=org:acme-evil",
    ]
    assert permissions_from_scopes(scopes, "acme") == {"data:read"}
    assert permissions_from_scopes(scopes, "beta") == set()


def test_server_token_scopes_follow_the_users_groups():
    class G:
        def __init__(self, name):
            self.name = name

    class Sp:
        class user:  # noqa: N801 - mimics spawner.user
            groups = [G("org:acme"), G("role:acme:viewer"), G("beta-ish")]

    scopes = server_token_scopes(Sp)
    assert org_scope("data:read", "acme") in scopes
    assert not [s for s in scopes if "data:write" in s or "beta" in s]
    assert "access:servers!server" in scopes and "users:activity!user" in scopes
