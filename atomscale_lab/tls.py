"""TLS, once for every process: certificates made for a self-contained deployment and the hub's
internal-TLS settings.

- :func:`ensure_certs`: a private CA and a server certificate, used by the demo and the tests to
  serve the hub, the proxy and the identity provider over https (production deployments bring
  certificates from their own CA, ``deploy/README.md``).
- :func:`ensure_self_signed`: the ingest service's own certificate when none is configured.
- :class:`HubSsl` / :func:`hub_ssl`: JupyterHub's ``internal_ssl`` files
  (``JUPYTERHUB_SSL_CERTFILE``, ``JUPYTERHUB_SSL_KEYFILE``, ``JUPYTERHUB_SSL_CLIENT_CA``) and the
  mutual-TLS server context built from them.

Private keys are written 0600 and never printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPaths:
    """Where ``ensure_certs`` put the CA certificate, server certificate and server key."""

    ca: Path
    cert: Path
    key: Path


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "atomscale-lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(days: int = 30):
    """Return ``(key, cert)`` of a new self-signed CA (EC P-256) valid for ``days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name("atomscale-lab local CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _sans(hosts) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def make_server_cert(ca_key, ca_cert, hosts: list[str], days: int = 30):
    """Return ``(key, cert)`` for ``hosts`` (DNS names or IP addresses) signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans = _sans(hosts)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def ensure_certs(
    directory: str | Path, hosts: list[str] | None = None, days: int = 30
) -> CertPaths:
    """Create ``ca.crt``, ``server.crt`` and ``server.key`` in ``directory`` unless present.

    The CA's own key is not kept: a new server certificate means a new CA. The certificates are
    world-readable (user servers verify the hub with them), the key is 0600.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")
    if all(p.exists() for p in (paths.ca, paths.cert, paths.key)):
        return paths
    ca_key, ca_cert = make_ca(days)
    key, cert = make_server_cert(ca_key, ca_cert, hosts or ["127.0.0.1", "localhost"], days)
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    _write_key(paths.key, key)
    os.chmod(paths.ca, 0o644)
    os.chmod(paths.cert, 0o644)
    return paths


def ensure_self_signed(
    directory: str | Path,
    hosts=("localhost", "127.0.0.1", "::1"),
    *,
    common_name: str = "atomscale-ingest",
    days: int = 365,
) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` in ``directory``: a self-signed certificate for ``hosts``, made
    again when missing or valid for less than 7 more days (folder 0700, key file 0600)."""
    directory = Path(directory)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=7):
            return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass(frozen=True)
class HubSsl:
    """JupyterHub's ``internal_ssl`` files as the hub passes them to a service or server."""

    certfile: str | None = None
    keyfile: str | None = None
    client_ca: str | None = None

    @classmethod
    def of(cls, hub_auth) -> HubSsl:
        """The files named by a ``jupyterhub.services.auth.HubAuth``'s ``certfile``,
        ``keyfile`` and ``client_ca`` traits (configurable, defaulting to the same variables)."""
        return cls(
            certfile=hub_auth.certfile or None,
            keyfile=hub_auth.keyfile or None,
            client_ca=hub_auth.client_ca or None,
        )

    @property
    def has_cert(self) -> bool:
        """Both the certificate and its key are given."""
        return bool(self.certfile and self.keyfile)

    def server_context(self) -> ssl.SSLContext | None:
        """Mutual TLS with the hub's internal certificate: only clients holding a certificate
        of the hub's internal CA (the proxy, the hub) connect. None without a certificate."""
        if not self.has_cert:
            return None
        ctx = server_context(self.certfile, self.keyfile, self.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def hub_ssl(environ: Mapping[str, str] | None = None) -> HubSsl:
    """The ``JUPYTERHUB_SSL_*`` settings of this process (empty ones count as absent)."""
    env = os.environ if environ is None else environ
    return HubSsl(
        certfile=env.get("JUPYTERHUB_SSL_CERTFILE") or None,
        keyfile=env.get("JUPYTERHUB_SSL_KEYFILE") or None,
        client_ca=env.get("JUPYTERHUB_SSL_CLIENT_CA") or None,
    )


def server_context(certfile, keyfile, client_ca=None) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``certfile``/``keyfile``; with ``client_ca`` clients must
    present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
