"""A self-contained hub deployment on one machine: certificates, identity provider, hub.

Used by ``make demo`` (``scripts/demo.sh``), the end-to-end tests and ``bench/hub.py``.
:func:`init_stack` writes everything a run needs under one folder and returns the paths;
:func:`idp_process` and :func:`hub_process` give the command and environment to start the
identity provider and the hub (the hub starts the proxy and the services itself). Secrets
(the OIDC client secret, the auth-state key) are generated once into ``secrets.json`` (0600).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from atomscale_lab.tls import ensure_certs

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "atomscale-hub"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """Paths and ports of one deployment."""

    root: Path
    home: Path
    public_port: int
    idp_port: int
    hub_port: int
    proxy_api_port: int
    keys_port: int
    context_port: int
    ingest_port: int

    @property
    def public_url(self) -> str:
        """Where browsers open the hub."""
        return f"https://127.0.0.1:{self.public_port}"

    @property
    def issuer(self) -> str:
        """The identity provider's issuer URL."""
        return f"https://127.0.0.1:{self.idp_port}"

    @property
    def certs(self) -> Path:
        """Folder of ca.crt, server.crt, server.key."""
        return self.root / "certs"

    @property
    def ca(self) -> Path:
        """The CA bundle that verifies every https endpoint of the stack."""
        return self.certs / "ca.crt"

    @property
    def users_file(self) -> Path:
        """The identity provider's users file."""
        return self.home / "idp" / "users.json"

    @property
    def clients_file(self) -> Path:
        """The identity provider's OIDC clients (holds the client secret, 0600)."""
        return self.root / "idp" / "clients.json"

    @property
    def deployment_file(self) -> Path:
        """The hub's deployment file."""
        return self.root / "hub" / "atomscale-hub.toml"

    @property
    def secrets_file(self) -> Path:
        """Generated secrets (0600)."""
        return self.root / "secrets.json"

    def secrets(self) -> dict:
        """The generated secrets (never print them)."""
        return json.loads(self.secrets_file.read_text())


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def init_stack(
    root: str | Path,
    home: str | Path,
    *,
    ports: dict | None = None,
    create_unix_users: bool = False,
    home_base: str | Path | None = None,
    venv: str | Path | None = None,
) -> Stack:
    """Write certificates, the identity provider's clients file, the hub's deployment file and
    the secrets for a deployment under ``root`` serving the vault in ``home``.

    ``ports`` may give ``public``, ``idp``, ``hub``, ``proxy_api``, ``keys``, ``context``,
    ``ingest``;
    missing ones are picked free. Existing secrets are kept.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # noqa: S103 - servers traverse to the CA bundle
    ports = dict(ports or {})
    st = Stack(
        root=root,
        home=Path(home).resolve(),
        **{
            f"{k}_port": int(ports.get(k) or free_port())
            for k in ("public", "idp", "hub", "proxy_api", "keys", "context", "ingest")
        },
    )
    ensure_certs(st.certs, ["127.0.0.1", "localhost"])
    os.chmod(st.certs, 0o755)  # noqa: S103 - public certificates only

    if st.secrets_file.exists():
        sec = st.secrets()
    else:
        sec = {"client_secret": secrets.token_urlsafe(32), "crypt_key": secrets.token_hex(32)}
        _write_private(st.secrets_file, json.dumps(sec))

    _write_private(
        st.clients_file,
        json.dumps(
            {
                "clients": [
                    {
                        "client_id": CLIENT_ID,
                        "client_secret": sec["client_secret"],
                        "redirect_uris": [f"{st.public_url}/hub/oauth_callback"],
                    }
                ]
            }
        ),
    )

    lines = [
        "# Generated deployment of atomscale-lab's hub (see deploy/atomscale-hub.toml).",
        "[hub]",
        f'public_url = "{st.public_url}"',
        f"hub_port = {st.hub_port}",
        f"proxy_api_port = {st.proxy_api_port}",
        f'state_dir = "{root / "hub" / "state"}"',
        f"service_ports = {{ keys = {st.keys_port}, context = {st.context_port} }}",
        "[tls]",
        f'cert = "{st.certs / "server.crt"}"',
        f'key = "{st.certs / "server.key"}"',
        f'ca = "{st.ca}"',
        "[oidc]",
        f'issuer = "{st.issuer}"',
        f'client_id = "{CLIENT_ID}"',
        "require_mfa = true",
        'required_amr = ["mfa"]',
        "[spawner]",
        f"create_unix_users = {'true' if create_unix_users else 'false'}",
        f'venv = "{Path(venv or sys.prefix).resolve()}"',
        "start_timeout = 60",
        "[ingest]",
        "enabled = true",
        f"port = {st.ingest_port}",
        "[atomscale]",
        f'home = "{st.home}"',
    ]
    if home_base:
        lines.insert(lines.index("start_timeout = 60"), f'home_base = "{Path(home_base)}"')
    st.deployment_file.parent.mkdir(parents=True, exist_ok=True)
    st.deployment_file.write_text("\n".join(lines) + "\n")
    (st.root / "stack.json").write_text(
        json.dumps(
            {
                k: getattr(st, k)
                for k in (
                    "public_port",
                    "idp_port",
                    "hub_port",
                    "proxy_api_port",
                    "keys_port",
                    "context_port",
                    "ingest_port",
                )
            }
        )
    )
    return st


def load_stack(root: str | Path, home: str | Path) -> Stack:
    """The :class:`Stack` a previous :func:`init_stack` wrote under ``root``."""
    root = Path(root).resolve()
    ports = json.loads((root / "stack.json").read_text())
    return Stack(root=root, home=Path(home).resolve(), **ports)


def idp_process(st: Stack) -> tuple[list[str], dict]:
    """``(argv, env)`` of the identity provider (Node, ``idp/server.js``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_ROOT", "OAUTH_"))}
    env.update(
        {
            "IDP_ISSUER": st.issuer,
            "IDP_HOST": "127.0.0.1",
            "IDP_PORT": str(st.idp_port),
            "IDP_CERT": str(st.certs / "server.crt"),
            "IDP_KEY": str(st.certs / "server.key"),
            "IDP_USERS": str(st.users_file),
            "IDP_CLIENTS": str(st.clients_file),
        }
    )
    return ["node", str(REPO / "idp" / "server.js")], env


def hub_process(st: Stack, *, log_level: str = "INFO") -> tuple[list[str], dict]:
    """``(argv, env)`` of the hub; the root key must already be in the environment."""
    sec = st.secrets()
    env = dict(os.environ)
    env.update(
        {
            "ATOMSCALE_HUB_CONFIG": str(st.deployment_file),
            "ATOMSCALE_HOME": str(st.home),
            "OAUTH_CLIENT_SECRET": sec["client_secret"],
            "JUPYTERHUB_CRYPT_KEY": sec["crypt_key"],
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [
        sys.executable,
        "-m",
        "atomscale_lab.hub.app",
        "-f",
        str(REPO / "jupyterhub_config.py"),
        f"--log-level={log_level}",
    ]
    return argv, env
