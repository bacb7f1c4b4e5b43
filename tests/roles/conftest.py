"""Fixtures of the role suite (permissions of every role, on every route, audited).

- ``roles_home`` (session): an ATOMSCALE_HOME with org ``acme`` (6 runs with series, tool state,
  metrology and labels) and org ``beta`` (2 runs), and its root key. Separate from the notebook
  suite's data because these tests write.
- ``roles_env``: that home and root key in the environment of one test.
- ``tokens`` (session): a bearer token per test user ``<role>@<org>`` (every role of both orgs).
- ``jp_server_config``: pytest-jupyter's in-process server serving ``acme`` with
  ``tests.support.roles.TokenUsers`` (token → user) and ``tests.support.roles.ScopeAccess``
  (user → the role's hub scopes → permissions); unauthenticated access refused.
- ``call``: ``await call(user, method, *path, params=, body=, headers=)`` → ``(status, body)``.
- ``audit_lines(org)``: the org's audit events as dicts, oldest first.
"""

import json
import os
import secrets
from pathlib import Path

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403
from tornado.httpclient import HTTPClientError

from tests.support import labdata, role_matrix
from tests.support.roles import user_name
from tests.support.vault import use_deployment

HERE = Path(__file__).parent

ORGS = ("acme", "beta")


@pytest.fixture(scope="session")
def roles_home(tmp_path_factory):
    """A deployment home with orgs acme and beta; returns ``{home, root_key}``."""
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    home = tmp_path_factory.mktemp("roles-home")
    key = generate_root_key()
    saved = {k: os.environ.get(k) for k in ("ATOMSCALE_ROOT_KEY", "ATOMSCALE_ROOT_KEY_FILE")}
    os.environ["ATOMSCALE_ROOT_KEY"] = key
    os.environ.pop("ATOMSCALE_ROOT_KEY_FILE", None)
    try:
        vault = Vault(Settings.load(home))
        vault.create_org("acme", "us")
        labdata.fill_org(vault, "acme", runs=6, points=20)
        vault.create_org("beta", "us")
        labdata.fill_org(vault, "beta", runs=2, detail_runs=0)
        vault.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"home": home, "root_key": key}


@pytest.fixture
def roles_env(roles_home, monkeypatch):
    """The role suite's home and root key in the environment."""
    use_deployment(monkeypatch, roles_home["home"], roles_home["root_key"])
    return roles_home


@pytest.fixture(scope="session")
def tokens():
    """``{user: token}`` for every role of acme and beta, plus ``stranger`` (no org)."""
    users = [user_name(r, o) for o in ORGS for r in role_matrix.roles()] + ["stranger"]
    return {u: secrets.token_hex(16) for u in users}


@pytest.fixture
def jp_server_config(roles_env, tokens):
    """Serve acme to the token users, with permissions from their roles' hub scopes."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"atomscale_lab": True},
            "allow_unauthenticated_access": False,
            "identity_provider_class": "tests.support.roles.TokenUsers",
        },
        "TokenUsers": {"users": {t: u for u, t in tokens.items()}},
        "AtomscaleLab": {
            "org": "acme",
            "access_class": "tests.support.roles.ScopeAccess",
            "scrub_root_key": False,
            "export_url": False,
            "refresh_interval": 0.0,
        },
    }


@pytest.fixture
def call(jp_fetch, tokens):
    """Send one API request as a test user; returns ``(status, body bytes)``."""

    async def send(user, method, *path, params=None, body=None, headers=None):
        kw = {
            "method": method,
            "params": params or {},
            "headers": {**(headers or {}), "Authorization": f"token {tokens[user]}"},
        }
        if body is not None:
            kw["body"] = body
        try:
            r = await jp_fetch("atomscale", "api", "v1", *path, **kw)
        except HTTPClientError as e:
            return e.code, e.response.body if e.response is not None else b""
        return r.code, r.body

    return send


@pytest.fixture
def audit_lines(roles_env):
    """``audit_lines(org)``: the org's audit events, oldest first."""

    def read(org):
        path = roles_env["home"] / "audit" / f"{org}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    return read
