"""The hub's CLI plug-in: users, support account, TOTP codes, deployment init."""

from __future__ import annotations

import json
import os
import stat
import time
import tomllib

import pyotp
import pytest

from atomscale_lab.cli.main import main
from atomscale_lab.hub.users import IdpUsers


@pytest.fixture
def users_file(tmp_path, vault):
    vault.create_org("acme", "us")
    return tmp_path / "idp" / "users.json"


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_add_support_creates_a_support_account_and_audits_it(capsys, users_file, vault):
    rc, out, _ = _run(capsys, "org", "add-support", "acme", "--users-file", str(users_file))
    assert rc == 0
    name, password = out.split()
    assert name == "acme-support" and len(password) >= 12
    u = IdpUsers(users_file)
    assert u.get("acme-support") == {
        "username": "acme-support",
        "org": "acme",
        "role": "support",
        "mfa": True,
        "email": "acme-support@acme.example",
    }
    assert stat.S_IMODE(os.stat(users_file).st_mode) == 0o600
    raw = users_file.read_text()
    assert password not in raw  # only a scrypt hash is stored
    ev = vault.audit("acme").events(action="config.change", limit=1)[0]
    assert ev["detail"]["change"] == "support.add" and password not in json.dumps(ev)
    rc, _, err = _run(capsys, "org", "add-support", "acme", "--users-file", str(users_file))
    assert rc != 0 and "already exists" in err


def test_add_support_for_an_unknown_org_is_refused(capsys, users_file):
    rc, _, err = _run(capsys, "org", "add-support", "nope", "--users-file", str(users_file))
    assert rc == 3 and "nope" in err
    assert not users_file.exists()


def test_users_add_list_totp(capsys, users_file):
    rc, out, _ = _run(
        capsys,
        "hub",
        "users",
        "add",
        "acme-eve",
        "--org",
        "acme",
        "--role",
        "viewer",
        "--no-mfa",
        "--users-file",
        str(users_file),
    )
    assert rc == 0
    rc, out, _ = _run(capsys, "hub", "users", "list", "--users-file", str(users_file))
    assert out.strip() == "acme-eve\tacme\tviewer\tNO-MFA"
    rc, out, _ = _run(capsys, "totp", "acme-eve", "--users-file", str(users_file))
    totp = pyotp.TOTP(IdpUsers(users_file).load()["acme-eve"]["totp"])
    now = time.time()
    assert out.strip() in {totp.at(now + d) for d in (-30, 0, 30)}
    rc, out, _ = _run(capsys, "totp", "acme-eve", "--uri", "--users-file", str(users_file))
    assert out.startswith("otpauth://totp/")
    rc, _, err = _run(
        capsys,
        "hub",
        "users",
        "add",
        "Bad Name",
        "--org",
        "acme",
        "--role",
        "viewer",
        "--users-file",
        str(users_file),
    )
    assert rc != 0 and "invalid user name" in err


def test_hub_init_writes_a_deployment_without_secrets(capsys, tmp_path, vault):
    rc, out, _ = _run(
        capsys, "hub", "init", str(tmp_path / "stack"), "--port", "18123", "--idp-port", "18124"
    )
    assert rc == 0
    dep = tomllib.loads((tmp_path / "stack" / "hub" / "atomscale-hub.toml").read_text())
    assert dep["hub"]["public_url"] == "https://127.0.0.1:18123"
    assert dep["oidc"]["issuer"] == "https://127.0.0.1:18124"
    secrets = json.loads((tmp_path / "stack" / "secrets.json").read_text())
    text = (tmp_path / "stack" / "hub" / "atomscale-hub.toml").read_text()
    assert secrets["client_secret"] not in text and secrets["crypt_key"] not in text
    for private in ("secrets.json", "idp/clients.json", "certs/server.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "stack" / private).st_mode) == 0o600, private


def test_hub_start_gives_the_deployment_file_to_the_hub_not_the_environment(
    capsys, tmp_path, vault, monkeypatch
):
    from atomscale_lab.hub.app import AtomscaleHub

    rc, out, _ = _run(
        capsys, "hub", "init", str(tmp_path / "stack"), "--port", "18125", "--idp-port", "18126"
    )
    assert rc == 0
    deployment = tmp_path / "stack" / "hub" / "atomscale-hub.toml"
    # an environment naming another (missing) file must not win over --config
    monkeypatch.setenv("ATOMSCALE_HUB_CONFIG", str(tmp_path / "elsewhere.toml"))
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "s3cret-value")
    environ_before = dict(os.environ)
    loaded = {}

    def initialize_only(argv):
        # what JupyterHub.initialize does first: the command line, then the configuration file
        hub = AtomscaleHub.instance()
        hub.parse_command_line(argv)
        hub.load_config_file(hub.config_file)
        loaded.update(deployment=hub.deployment_file, bind_url=hub.config.JupyterHub.bind_url)

    monkeypatch.setattr(AtomscaleHub, "launch_instance", staticmethod(initialize_only))
    try:
        rc, _, err = _run(capsys, "hub", "start", "--config", str(deployment))
    finally:
        AtomscaleHub.clear_instance()
    assert rc == 0, err
    assert loaded == {
        "deployment": str(deployment.resolve()),
        "bind_url": "https://127.0.0.1:18125/",
    }
    assert dict(os.environ) == environ_before
