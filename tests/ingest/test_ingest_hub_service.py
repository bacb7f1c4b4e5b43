"""Run as a JupyterHub-managed service: URL and prefix from the hub's environment, the hub's
internal certificates with client certificates required, and a clean exit on SIGTERM."""

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.net import free_port


def _cert(name, issuer=None, issuer_key=None, ca=False, san=None, usage=None):
    key = ec.generate_private_key(ec.SECP256R1())
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subj)
        .issuer_name(issuer.subject if issuer else subj)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(1))
        .not_valid_after(now + dt.timedelta(1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _write(path, cert, key):
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


@pytest.fixture
def internal_ca(tmp_path):
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    import ipaddress

    d = tmp_path / "internal-ssl"
    d.mkdir()
    ca, ca_key = _cert("test internal CA", ca=True)
    srv, srv_key = _cert(
        "atomscale-ingest",
        ca,
        ca_key,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    cli, cli_key = _cert("proxy", ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path = d / "ca.crt"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return {
        "ca": str(ca_path),
        "server": _write(d / "server", srv, srv_key),
        "client": _write(d / "client", cli, cli_key),
    }


def test_runs_as_a_hub_managed_service(deployment, root_key, internal_ca):
    port = free_port()
    prefix = "/services/atomscale-ingest/"
    env = dict(
        os.environ,
        ATOMSCALE_HOME=str(deployment.home),
        ATOMSCALE_ROOT_KEY=root_key,
        JUPYTERHUB_SERVICE_URL=f"https://127.0.0.1:{port}",
        JUPYTERHUB_SERVICE_PREFIX=prefix,
        JUPYTERHUB_SSL_CERTFILE=internal_ca["server"][0],
        JUPYTERHUB_SSL_KEYFILE=internal_ca["server"][1],
        JUPYTERHUB_SSL_CLIENT_CA=internal_ca["ca"],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomscale_lab.ingest"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    http = requests.Session()
    http.trust_env = False
    url = f"https://127.0.0.1:{port}{prefix}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "service did not start"
            try:
                r = http.get(
                    url + "health", verify=internal_ca["ca"], cert=internal_ca["client"], timeout=1
                )
                if r.ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        with pytest.raises(requests.exceptions.SSLError):
            http.get(url + "health", verify=internal_ca["ca"], timeout=5)  # no client cert
        key = deployment.key()
        r = http.post(
            url + "streams",
            verify=internal_ca["ca"],
            cert=internal_ca["client"],
            headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": "192.0.2.10"},
            json={"run_id": "hub-run", "tool": "mbe1", "category": "process"},
        )
        assert r.status_code == 201, r.text
        ev = deployment.vault.audit("acme").events(action="apikey.use", limit=1)[0]
        assert ev["detail"]["client"] == "192.0.2.10"  # the address the proxy forwarded
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)  # a hang fails here; how fast it stops: bench/ingest.py
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        proc.stderr.close()
