"""An external KMS's settings reach the hub services that hold keys, and nothing else."""

from __future__ import annotations

import tomllib
from pathlib import Path

from traitlets.config import Config

from atomscale_lab.hub.config import configure
from atomscale_lab.tls import ensure_certs
from atomscale_lab.vault.kms import aad_fields, service_env

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "atomscale-hub.toml"


def test_services_get_the_kms_settings_user_servers_do_not(tmp_path, vault, monkeypatch):
    vault.create_org("acme", "us")
    certs = ensure_certs(tmp_path / "certs")
    dep = tomllib.loads(EXAMPLE.read_text())
    dep["_dir"] = str(tmp_path)
    dep["hub"]["state_dir"] = str(tmp_path / "state")
    dep["tls"] = {"cert": str(certs.cert), "key": str(certs.key), "ca": str(certs.ca)}
    dep["atomscale"]["home"] = str(vault.settings.home)
    dep["spawner"]["venv"] = str(tmp_path / "venv")
    dep["spawner"]["service_accounts"] = False  # no Unix accounts in this test
    monkeypatch.setenv("OAUTH_CLIENT_SECRET", "client-secret-value")
    monkeypatch.setenv("ATOMSCALE_KMS", "atomscale_lab.vault.kms.transit:VaultTransitKms")
    monkeypatch.setenv("VAULT_ADDR", "https://vault.lab.example:8200")
    monkeypatch.setenv("VAULT_TOKEN", "vault-token-value")
    monkeypatch.setenv("ATOMSCALE_TRANSIT_KEY", "lab-root")
    c = Config()
    configure(c, dep)
    keys = next(s for s in c.JupyterHub.services if s["name"] == "atomscale-keys")
    assert keys["environment"]["VAULT_ADDR"] == "https://vault.lab.example:8200"
    assert keys["environment"]["VAULT_TOKEN"] == "vault-token-value"
    assert keys["environment"]["ATOMSCALE_TRANSIT_KEY"] == "lab-root"
    assert "vault-token-value" not in str(c.AtomscaleSpawner)
    assert "client-secret-value" not in str(c.JupyterHub.services)


def test_service_env_is_empty_without_an_external_kms():
    env = {"VAULT_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "HOME": "/root"}
    assert service_env(env) == {}
    env["ATOMSCALE_KMS"] = "atomscale_lab.vault.kms.aws:AwsKms"
    assert service_env(env) == {"VAULT_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s"}


def test_binding_fields():
    assert aad_fields(b"atomscale-lab/org-key/acme/data/v3") == {
        "atomscale-lab": "atomscale-lab/org-key/acme/data/v3",
        "org": "acme",
        "purpose": "data",
        "version": "3",
    }
    assert aad_fields(b"something else") == {"atomscale-lab": "something else"}
