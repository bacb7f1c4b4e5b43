"""Turn a deployment file into JupyterHub configuration.

A deployment file (TOML, see ``deploy/atomscale-hub.toml``) names the URLs, certificates, the
identity provider and where the vault lives; :func:`configure` applies it to JupyterHub's config
object. Secrets are never in the file: ``OAUTH_CLIENT_SECRET`` (the hub's OIDC client secret),
``JUPYTERHUB_CRYPT_KEY`` (encrypts auth state) and the root key (``ATOMSCALE_ROOT_KEY_FILE`` or
``ATOMSCALE_ROOT_KEY``, passed only to the hub services) come from the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

from atomscale_lab.errors import ConfigError

ENV_DEPLOYMENT = "ATOMSCALE_HUB_CONFIG"
ENV_HUB_DB = "ATOMSCALE_HUB_DB_URL"
"""JupyterHub's own database (an SQLAlchemy URL, e.g. PostgreSQL); default: SQLite in the hub's
state folder."""
SERVICE_ENV = (
    "ATOMSCALE_HOME",
    "ATOMSCALE_ROOT_KEY",
    "ATOMSCALE_ROOT_KEY_FILE",
    "ATOMSCALE_KMS",
    "ATOMSCALE_DATA_ROOT",
    "ATOMSCALE_CONTEXT_ROOT",
    "ATOMSCALE_REGION",
    "ATOMSCALE_TOKEN_CACHE_SECONDS",
    "ATOMSCALE_DATABASE_URL",
)


def hub_deployment_file() -> str | None:
    """The deployment file given to the hub running in this process (``AtomscaleHub
    --deployment``, see :func:`atomscale_lab.hub.app.hub_argv`), or None."""
    app = sys.modules.get("jupyterhub.app")  # not imported: no hub runs in this process
    if app is None or not app.JupyterHub.initialized():
        return None
    return getattr(app.JupyterHub.instance(), "deployment_file", "") or None


def load_deployment(path: str | Path | None = None) -> dict:
    """Read the deployment file: ``path``, else the one the running hub was given
    (``--deployment``), else ``$ATOMSCALE_HUB_CONFIG``, else ``deploy/atomscale-hub.toml``;
    relative paths in it are taken relative to the file's folder."""
    p = Path(
        path
        or hub_deployment_file()
        or os.environ.get(ENV_DEPLOYMENT)
        or "deploy/atomscale-hub.toml"
    )
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no deployment file {p} (set ${ENV_DEPLOYMENT})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    doc["_dir"] = str(p.resolve().parent)
    return doc


def _path(dep: dict, value: str | None) -> str:
    if not value:
        return ""
    return str((Path(dep["_dir"]) / Path(value).expanduser()).resolve())


def _need(section: dict, key: str, where: str):
    if key not in section or section[key] in ("", None):
        raise ConfigError(f"the deployment file needs {where}.{key}")
    return section[key]


def hub_db_url(hub: dict, state: Path) -> str:
    """JupyterHub's database URL: ``$ATOMSCALE_HUB_DB_URL``, else ``[hub] db_url`` of the
    deployment file (no password there: give it in the variable, or as ``PGPASSWORD``), else
    ``jupyterhub.sqlite`` in the state folder.

    ``postgresql://`` is given SQLAlchemy's psycopg 3 driver (``postgresql+psycopg://``; plain
    ``postgresql://`` would ask for psycopg2). Use a database of its own (e.g. ``jupyterhub``
    beside the deployment's ``ATOMSCALE_DATABASE_URL`` database on the same server).
    """
    from urllib.parse import urlsplit

    url = os.environ.get(ENV_HUB_DB) or ""
    if not url and hub.get("db_url"):
        url = str(hub["db_url"])
        if urlsplit(url).password:
            raise ConfigError(
                "[hub] db_url holds a password: secrets are never in the deployment file; "
                f"set {ENV_HUB_DB} (or PGPASSWORD) in the hub's environment instead"
            )
    if not url:
        return f"sqlite:///{state / 'jupyterhub.sqlite'}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain) :]
    return url


def proxy_command() -> list[str]:
    """configurable-http-proxy: the one installed in ``idp/node_modules`` or on PATH."""
    local = (
        Path(__file__).resolve().parents[2]
        / "idp"
        / "node_modules"
        / ".bin"
        / "configurable-http-proxy"
    )
    if local.exists():
        return [str(local)]
    found = shutil.which("configurable-http-proxy")
    if not found:
        raise ConfigError("configurable-http-proxy is not installed (run `make setup`)")
    return [found]


def server_config_dir(state_dir: Path) -> Path:
    """A Jupyter config folder every user server reads: enables the extension in hub mode."""
    d = state_dir / "jupyter-config"
    d.mkdir(parents=True, exist_ok=True)
    cfg = {
        # jupyter_lsp scans for language servers at every start; the workspace does not use it.
        # User servers hold no key: instead of the in-process extension (atomscale_lab), the
        # pass-through to the org's data server serves the same URLs.
        "ServerApp": {
            "jpserver_extensions": {
                "atomscale_lab": False,
                "jupyter_lsp": False,
                "atomscale_lab.hub.forward": True,
                "atomscale_lab.hub.server_audit": True,
            }
        },
    }
    f = d / "jupyter_server_config.json"
    f.write_text(json.dumps(cfg, indent=1))
    os.chmod(d, 0o755)  # noqa: S103 - every server's account reads it
    os.chmod(f, 0o644)
    return d


def configure(c, dep: dict | None = None) -> None:
    """Apply a deployment (see :func:`load_deployment`) to the JupyterHub config ``c``."""
    from atomscale_lab.hub.auth import audit_hook_for
    from atomscale_lab.hub.roles import custom_scopes, load_roles, server_token_scopes
    from atomscale_lab.hub.spawner import AtomscaleSpawner
    from atomscale_lab.vault.settings import Settings

    dep = dep if dep is not None else load_deployment()
    hub, tls, oidc = dep.get("hub", {}), dep.get("tls", {}), dep.get("oidc", {})
    spawn, ats = dep.get("spawner", {}), dep.get("atomscale", {})

    if ats.get("home"):
        os.environ["ATOMSCALE_HOME"] = _path(dep, ats["home"])
    if ats.get("root_key_file"):
        os.environ.setdefault("ATOMSCALE_ROOT_KEY_FILE", _path(dep, ats["root_key_file"]))
    settings = Settings.load()

    state = Path(_path(dep, _need(hub, "state_dir", "hub")))
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    # servers read the jupyter-config folder inside; nothing else
    os.chmod(state, 0o711)  # noqa: S103
    public_url = _need(hub, "public_url", "hub").rstrip("/")
    ca = _path(dep, _need(tls, "ca", "tls"))

    # --- hub, proxy, TLS everywhere
    c.JupyterHub.bind_url = public_url + "/"
    c.JupyterHub.public_url = public_url + "/"
    c.JupyterHub.ssl_cert = _path(dep, _need(tls, "cert", "tls"))
    c.JupyterHub.ssl_key = _path(dep, _need(tls, "key", "tls"))
    c.JupyterHub.hub_ip = hub.get("hub_ip", "127.0.0.1")
    c.JupyterHub.hub_port = int(hub.get("hub_port", 8081))
    c.JupyterHub.internal_ssl = True
    c.JupyterHub.internal_certs_location = str(state / "internal-ssl")
    c.JupyterHub.trusted_alt_names = ["IP:127.0.0.1", "DNS:localhost"]
    c.JupyterHub.db_url = hub_db_url(hub, state)
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.cleanup_servers = True
    c.ConfigurableHTTPProxy.command = proxy_command()
    c.ConfigurableHTTPProxy.api_url = f"https://127.0.0.1:{int(hub.get('proxy_api_port', 8001))}"
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    c.ConfigurableHTTPProxy.debug = False

    # --- identity: OIDC with enforced MFA
    orgs = sorted(o["name"] for o in _orgs(settings))
    c.JupyterHub.authenticator_class = "atomscale"
    a = c.AtomscaleAuthenticator
    a.issuer = _need(oidc, "issuer", "oidc").rstrip("/")
    a.client_id = _need(oidc, "client_id", "oidc")
    a.oauth_callback_url = public_url + "/hub/oauth_callback"
    for key in (
        "authorize_url",
        "token_url",
        "jwks_url",
        "login_service",
        "org_claim",
        "role_claim",
        "username_claim",
    ):
        if oidc.get(key):
            setattr(a, key, oidc[key])
    if "scope" in oidc:
        a.scope = list(oidc["scope"])
    a.ca_certs = _path(dep, oidc["ca_certs"]) if oidc.get("ca_certs") else ca
    a.require_mfa = bool(oidc.get("require_mfa", True))
    if "required_amr" in oidc:
        a.required_amr = list(oidc["required_amr"])
    if "accepted_acr" in oidc:
        a.accepted_acr = list(oidc["accepted_acr"])
    a.known_orgs = set(orgs)
    a.auth_refresh_age = int(oidc.get("refresh_seconds", 300))
    a.refresh_pre_spawn = True
    a.audit_hook = audit_hook_for(_vault_factory(settings))

    # --- roles: four per org, every scope filtered to the org
    c.JupyterHub.custom_scopes = custom_scopes()
    c.JupyterHub.load_roles = load_roles(orgs)

    # --- one server per user, as its own Unix user, grouped by org
    c.JupyterHub.spawner_class = AtomscaleSpawner
    s = c.AtomscaleSpawner
    s.create_unix_users = bool(spawn.get("create_unix_users", False))
    if spawn.get("home_base"):
        s.home_base = _path(dep, spawn["home_base"])
    s.venv = _path(dep, spawn["venv"]) if spawn.get("venv") else str(Path(sys.prefix))
    s.server_token_scopes = server_token_scopes
    s.default_url = spawn.get("default_url", "/lab")
    s.start_timeout = int(spawn.get("start_timeout", 60))
    s.http_timeout = int(spawn.get("http_timeout", 60))
    s.atomscale_env = {
        "ATOMSCALE_HUB_PUBLIC_URL": public_url,
        "ATOMSCALE_CA_BUNDLE": ca,
        "ATOMSCALE_REGION": settings.region,
        "JUPYTER_CONFIG_PATH": str(server_config_dir(state)),
    }

    # --- hub-managed services (TLS via internal_ssl; user servers reach them through the proxy)
    env = {k: os.environ[k] for k in SERVICE_ENV if os.environ.get(k)}
    from atomscale_lab.vault.kms import (
        service_env as kms_env,  # an external KMS's settings (Vault, AWS)
    )

    env.update(_object_store_env(settings))
    env.update(kms_env())
    env["PYTHONUNBUFFERED"] = "1"
    keys_socket = str(state / "keys.sock")
    py = str(Path(sys.executable))
    ports = hub.get("service_ports", {})
    c.JupyterHub.services = [
        {
            "name": "atomscale-keys",
            "url": f"https://127.0.0.1:{int(ports.get('keys', 8091))}",
            "command": [py, "-m", "atomscale_lab.hub.services.keys"],
            "environment": {**env, "ATOMSCALE_KEYS_SOCKET": keys_socket},
            "display": False,
        },
        {
            "name": "atomscale-context",
            "url": f"https://127.0.0.1:{int(ports.get('context', 8092))}",
            "command": [py, "-m", "atomscale_lab.hub.services.context"],
            "environment": env,
            "display": False,
        },
    ]
    if dep.get("ingest", {}).get("enabled"):
        c.JupyterHub.services.append(_ingest_service(dep, env, py))
    # one data server per org, as the org's service account, from the servers' Python
    data_ports = hub.get("data_ports", {})
    run_as = bool(spawn.get("service_accounts", os.geteuid() == 0))
    for info in _orgs(settings):
        c.JupyterHub.services.append(
            _data_service(
                info["name"],
                info.get("region") or settings.region,
                settings,
                public_url,
                ca,
                str(Path(s.venv) / "bin" / "python"),
                data_ports.get(info["name"]),
                run_as,
                keys_socket,
            )
        )


def _orgs(settings) -> list[dict]:
    from atomscale_lab.vault.facade import Vault

    v = Vault(settings)
    try:
        return v.orgs()
    finally:
        v.close()


def _vault_factory(settings):
    cache = {}

    def get():
        if "v" not in cache:
            from atomscale_lab.vault.facade import Vault

            cache["v"] = Vault(settings)
        return cache["v"]

    return get


def _data_service(
    org: str,
    region: str,
    settings,
    public_url: str,
    ca: str,
    py: str,
    port: int | None,
    run_as: bool,
    keys_socket: str | None = None,
) -> dict:
    """The hub service ``atomscale-data-<org>`` (see :mod:`atomscale_lab.hub.services.data`).

    Its environment holds no secret: it gets the org's keys from ``atomscale-keys`` with the
    service token the hub gives it.
    """
    import pwd

    from atomscale_lab.hub.roles import data_service_name
    from atomscale_lab.hub.stack import free_port
    from atomscale_lab.hub.users import service_account

    service = {
        "name": data_service_name(org),
        "url": f"https://127.0.0.1:{int(port or free_port())}",
        "command": [py, "-m", "atomscale_lab.hub.services.data"],
        "environment": {
            "ATOMSCALE_ORG": org,
            "ATOMSCALE_DATA_ROOT": str(settings.data_root),
            "ATOMSCALE_REGION": region,
            "ATOMSCALE_HUB_PUBLIC_URL": public_url,
            "ATOMSCALE_CA_BUNDLE": ca,
            "PYTHONUNBUFFERED": "1",
            # keys, heads and audit through the key service's Unix socket (identity: the
            # service account); only when it runs as one
            **({"ATOMSCALE_KEYS_SOCKET": keys_socket} if run_as and keys_socket else {}),
            # an s3:// data root: where the store is, never credentials (the service account's
            # own AWS credential chain: ~/.aws, an instance or workload role)
            **_s3_env(settings.data_root),
        },
        "display": False,
    }
    if run_as:
        account = service_account(org)
        try:
            pwd.getpwnam(account)
        except KeyError:
            raise ConfigError(
                f"no Unix account {account} for the data server of org {org!r}: "
                f"run `atomscale-lab hub users sync {org}`"
            ) from None
        service["user"] = account
    return service


def _object_store_env(settings, environ=None) -> dict:
    """The standard AWS variables of the hub's environment (endpoint, region, credentials) for
    the services running as the hub's account — keys, context, ingest — when a root is on object
    storage: they read and write the roots as the deployment. Data servers get only the endpoint
    and region (:func:`_s3_env`; their own account's credential chain), user servers nothing."""
    from atomscale_lab.vault.store.objects import S3Root

    if not any(isinstance(r, S3Root) for r in (settings.data_root, settings.context_root)):
        return {}
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith("AWS_") and v}


def _s3_env(root) -> dict:
    """The non-secret S3 settings of an ``s3://`` root for a service's environment."""
    from atomscale_lab.vault.store.objects import S3Root

    if not isinstance(root, S3Root):
        return {}
    cfg = root.config
    env = {"AWS_ENDPOINT_URL": cfg.endpoint_url, "AWS_REGION": cfg.region}
    return {k: v for k, v in env.items() if v}


def _ingest_service(dep: dict, env: dict, py: str) -> dict:
    ing = dep["ingest"]
    port = int(ing.get("port", 8093))
    # umask 007: what ingest writes into data_root/<org> stays writable by the org's data server
    # (group of the setgid folders), which appends for data:write
    return {
        "name": "atomscale-ingest",
        "url": f"https://127.0.0.1:{port}",
        "command": [
            "/bin/sh",
            "-c",
            'umask 007 && exec "$0" "$@"',
            py,
            "-m",
            "atomscale_lab.ingest",
            *map(str, ing.get("args", [])),
        ],
        "environment": env,
        "display": False,
    }
