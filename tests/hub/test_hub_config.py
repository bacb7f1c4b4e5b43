"""The deployment file → JupyterHub configuration wiring (no processes started)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from traitlets.config import Config

from atomscale_lab.errors import ConfigError
from atomscale_lab.hub.config import configure, load_deployment
from atomscale_lab.tls import ensure_certs

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "atomscale-hub.toml"


@pytest.fixture
def deployment(tmp_path, vault):
    vault.create_org("acme", "us")
    vault.create_org("beta", "us")
    certs = ensure_certs(tmp_path / "certs")
    dep = tomllib.loads(EXAMPLE.read_text())
    dep["_dir"] = str(tmp_path)
    dep["hub"]["state_dir"] = str(tmp_path / "state")
    dep["tls"] = {"cert": str(certs.cert), "key": str(certs.key), "ca": str(certs.ca)}
    dep["atomscale"]["home"] = str(vault.settings.home)
    dep["spawner"]["venv"] = str(tmp_path / "venv")
    dep["spawner"]["service_accounts"] = False  # no Unix accounts in this test
    return dep


def test_example_deployment_configures_tls_everywhere_and_org_roles(deployment, monkeypatch):
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "s3cret-value")
    c = Config()
    configure(c, deployment)
    assert c.JupyterHub.bind_url.startswith("https://")
    assert c.JupyterHub.internal_ssl is True
    assert c.ConfigurableHTTPProxy.api_url.startswith("https://")
    assert {s["name"] for s in c.JupyterHub.services} == {
        "atomscale-keys",
        "atomscale-context",
        "atomscale-ingest",
        "atomscale-data-acme",
        "atomscale-data-beta",
    }
    # the data servers: no secret in their environment, the servers' Python, one org each
    data = {s["name"]: s for s in c.JupyterHub.services if s["name"].startswith("atomscale-data")}
    for org in ("acme", "beta"):
        svc = data[f"atomscale-data-{org}"]
        assert svc["environment"]["ATOMSCALE_ORG"] == org
        assert not [k for k in svc["environment"] if "ROOT_KEY" in k or "KMS" in k]
        assert svc["command"][0] == str(Path(deployment["spawner"]["venv"]) / "bin" / "python")
    # user servers are not told where the data root is
    assert "ATOMSCALE_DATA_ROOT" not in c.AtomscaleSpawner.atomscale_env
    assert all(s["url"].startswith("https://") for s in c.JupyterHub.services)
    assert {r["name"] for r in c.JupyterHub.load_roles} == {
        f"{o}-{r}"
        for o in ("acme", "beta")
        for r in ("org-admin", "scientist", "viewer", "support")
    }
    a = c.AtomscaleAuthenticator
    assert a.require_mfa is True and a.known_orgs == {"acme", "beta"}
    assert a.issuer == "https://idp.lab.example"
    env = c.AtomscaleSpawner.atomscale_env
    assert env["ATOMSCALE_HUB_PUBLIC_URL"] == "https://hub.lab.example"
    assert not [k for k in env if "ROOT_KEY" in k or "SECRET" in k]
    # the root key reaches the services' environment, the client secret does not
    svc_env = c.JupyterHub.services[0]["environment"]
    assert "ATOMSCALE_ROOT_KEY" in svc_env or "ATOMSCALE_ROOT_KEY_FILE" in svc_env
    assert "s3cret-value" not in str(c.JupyterHub.services)


def test_the_database_url_reaches_the_hub_services_only(deployment, pg_url, monkeypatch):
    from atomscale_lab.hub.spawner import SECRET_PREFIXES
    from tests.support.postgres import upgraded

    monkeypatch.setenv("ATOMSCALE_DATABASE_URL", upgraded(pg_url))
    c = Config()
    configure(c, deployment)
    by_name = {s["name"]: s for s in c.JupyterHub.services}
    for name in ("atomscale-keys", "atomscale-context", "atomscale-ingest"):
        assert by_name[name]["environment"]["ATOMSCALE_DATABASE_URL"] == pg_url
    for name, svc in by_name.items():
        if name.startswith("atomscale-data"):
            assert pg_url not in str(svc["environment"])
    assert pg_url not in str(c.AtomscaleSpawner.atomscale_env)
    # a user server's environment is scrubbed of it (and of libpq's password variables)
    assert all(k.startswith(SECRET_PREFIXES) for k in ("ATOMSCALE_DATABASE_URL", "PGPASSWORD"))


def test_missing_settings_are_named(deployment):
    del deployment["oidc"]["issuer"]
    with pytest.raises(ConfigError, match="oidc.issuer"):
        configure(Config(), deployment)


def test_missing_deployment_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no deployment file"):
        load_deployment(tmp_path / "nope.toml")


def test_data_servers_need_their_service_accounts(deployment, monkeypatch):
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "s3cret-value")
    deployment["spawner"]["service_accounts"] = True
    deployment["hub"]["data_ports"] = {"acme": 18101, "beta": 18102}
    monkeypatch.setattr("atomscale_lab.names.unix_service_account", lambda org: f"as-svc-zz{org}")
    with pytest.raises(ConfigError, match=r"as-svc-zzacme.*hub users sync acme"):
        configure(Config(), deployment)


def test_object_store_credentials_reach_the_hub_account_services_only(deployment, s3, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    secret = s3.env()["AWS_SECRET_ACCESS_KEY"]
    # local roots: the AWS variables of the hub's environment go nowhere
    c = Config()
    configure(c, deployment)
    assert secret not in str(c.JupyterHub.services)
    # s3:// roots: the keys, context and ingest services get them; the data servers only where
    # the store is (their own account's credentials); user servers nothing
    monkeypatch.setenv("ATOMSCALE_DATA_ROOT", s3.root().url)
    monkeypatch.setenv("ATOMSCALE_CONTEXT_ROOT", s3.root().url)
    c = Config()
    configure(c, deployment)
    by_name = {s["name"]: s["environment"] for s in c.JupyterHub.services}
    for name in ("atomscale-keys", "atomscale-context", "atomscale-ingest"):
        assert by_name[name]["AWS_SECRET_ACCESS_KEY"] == secret
        assert by_name[name]["AWS_ENDPOINT_URL"] == s3.url
    for org in ("acme", "beta"):
        env = by_name[f"atomscale-data-{org}"]
        assert env["AWS_ENDPOINT_URL"] == s3.url
        assert secret not in str(env) and "AWS_ACCESS_KEY_ID" not in env
    assert not [k for k in c.AtomscaleSpawner.atomscale_env if k.startswith("AWS_")]
