"""What the hub-managed services share: token checks against the hub and audited decisions, on
the services' runtime (:mod:`atomscale_lab.runtime`: JSON errors, TLS, shutdown).

A request carries a hub API token (``Authorization: token …``, normally a user server's own
``JUPYTERHUB_API_TOKEN``). The service asks the hub whom the token belongs to and which scopes it
carries (:class:`jupyterhub.services.auth.HubAuth`). Services cannot resolve ``!group=`` filters
themselves, so a permission is the presence of the exact filtered scope string, e.g.
``custom:atomscale:data:read!group=org:acme`` (see :func:`atomscale_lab.hub.roles.org_scope`).

Every decision, allowed or denied, is an event in the org's audit log.

Start-up: the service listens (and answers ``health``) at once; the heavy imports (JupyterHub's
auth module pulls in its database layer, the vault pulls in pyarrow) load in a thread meanwhile,
and requests wait for them. The hub's readiness check backs off exponentially, so a service that
answers within a second is seen a few seconds earlier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
from functools import cached_property

from tornado import web
from tornado.log import enable_pretty_logging

from atomscale_lab.errors import UnknownOrg
from atomscale_lab.hub.roles import permissions_from_scopes
from atomscale_lab.runtime import JsonHandler, listen, serve_until_signal, server_tls
from atomscale_lab.tls import HubSsl, hub_ssl

log = logging.getLogger("atomscale.hub.service")


class Deps:
    """The service's HubAuth and Vault, given or loaded once in a thread."""

    def __init__(self, vault=None, hub_auth=None, need_vault: bool = True):
        self.vault = vault
        self.hub_auth = hub_auth
        self.need_vault = need_vault
        self._loading: asyncio.Future | None = None

    def _load(self) -> None:
        if self.hub_auth is None:
            from jupyterhub.services.auth import HubAuth

            self.hub_auth = HubAuth(
                cache_max_age=int(os.environ.get("ATOMSCALE_TOKEN_CACHE_SECONDS", "10"))
            )
        if self.vault is None and self.need_vault:
            from atomscale_lab.vault.facade import Vault

            self.vault = Vault()

    async def ready(self) -> None:
        """Wait until both are available (loads them on first call)."""
        if (self.vault is not None or not self.need_vault) and self.hub_auth is not None:
            return
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._load))
        await asyncio.shield(self._loading)


class ServiceHandler(JsonHandler):
    """Base handler of the hub services: the runtime's JSON errors, token → hub user model,
    audited decisions."""

    logger = log

    async def prepare(self):
        """Wait for the HubAuth and Vault of this service."""
        await self.settings["deps"].ready()

    @property
    def hub_auth(self):
        """The service's ``HubAuth`` (token resolution with a short cache)."""
        return self.settings["deps"].hub_auth

    @property
    def vault(self):
        """The deployment's :class:`~atomscale_lab.vault.facade.Vault` (root key from the
        environment)."""
        return self.settings["deps"].vault

    def peer_uid(self) -> int | None:
        """The uid of the process at the other end of a Unix-socket request (kernel-verified,
        ``SO_PEERCRED``); None for a TCP request."""
        sock = getattr(self.request.connection.stream, "socket", None)
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]

    def peer_model(self, uid: int) -> dict | None:
        """The identity of a Unix-socket peer (None: nobody; services override)."""
        return None

    async def token_owner(self) -> dict:
        """The hub model of the token's owner, user or service (``kind``, ``name``, the token's
        ``scopes``); 401 without a valid token. On the Unix socket the identity is the peer's
        Unix account instead (:meth:`peer_model`); tokens are not looked at there."""
        uid = self.peer_uid()
        if uid is not None:
            model = self.peer_model(uid)
            if not model:
                raise web.HTTPError(401, "this socket serves the orgs' data servers only")
            return model
        header = self.request.headers.get("Authorization", "")
        match = self.hub_auth.auth_header_pat.match(header)
        if not match:
            raise web.HTTPError(401, "a hub API token is required (Authorization: token …)")
        model = await self.hub_auth.user_for_token(match.group(1), sync=False)
        if not model:
            raise web.HTTPError(401, "the token is not valid")
        return model

    async def token_user(self) -> dict:
        """The hub model of the token's owner (with the token's ``scopes``); 401 without one."""
        model = await self.token_owner()
        if model.get("kind", "user") != "user":
            raise web.HTTPError(401, "the token is not a valid user token")
        return model

    def known_org(self, org: str) -> None:
        """404 for an org the vault does not have (checked before any key is touched)."""
        names = {o["name"] for o in self.vault.orgs()}
        if org not in names:
            raise UnknownOrg(f"no org {org!r}")

    def permissions(self, model: dict, org: str) -> set[str]:
        """The token's atomscale permissions in ``org``."""
        return permissions_from_scopes(model.get("scopes", []), org)

    def audit(self, org: str, actor: str, action: str, outcome: str, **detail) -> None:
        """Record a decision in the org's audit log (the service's own errors are logged)."""
        try:
            self.vault.audit(org).record(
                actor, action, outcome, service=self.settings["name"], **detail
            )
        except Exception:
            log.exception("could not audit %s %s for %s in %s", action, outcome, actor, org)
            raise

    def deny(self, org: str, actor: str, action: str, reason: str, **detail):
        """Audit a refusal and raise 403 with ``reason``."""
        self.audit(org, actor, action, "denied", reason=reason, **detail)
        raise web.HTTPError(403, reason)


class HealthHandler(web.RequestHandler):
    """``GET health``: 200 when the service runs (no auth, no data)."""

    def get(self):
        """Answer ``{"status": "ok"}``."""
        self.finish({"status": "ok"})


class ServiceApp:
    """Runs one service: prefix and port from the hub's environment, TLS when the hub asks."""

    def __init__(self, name: str, routes: list, socket_env: str | None = None):
        self.name = name
        self.routes = routes
        self.socket_env = socket_env
        """Environment variable naming a Unix socket to serve too (identity by peer account)."""

    @cached_property
    def prefix(self) -> str:
        """URL prefix the proxy forwards (``/services/<name>/``)."""
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{self.name}/")

    def make_app(self, vault=None, hub_auth=None, need_vault: bool = True) -> web.Application:
        """The Tornado application (routes under the prefix); ``vault`` and ``hub_auth`` are
        loaded on first use unless given (the vault only if ``need_vault``)."""
        handlers = [(self.prefix + "health", HealthHandler)]
        handlers += [(self.prefix + pattern, cls) for pattern, cls in self.routes]
        return web.Application(handlers, deps=Deps(vault, hub_auth, need_vault), name=self.name)

    def ssl_context(self, hub_auth=None) -> ssl.SSLContext | None:
        """Mutual TLS with the hub's internal certificates when ``internal_ssl`` is on: only
        clients holding a certificate of the hub's internal CA (the proxy, the hub) connect.

        The files are the ``certfile``/``keyfile``/``client_ca`` traits of the service's
        ``HubAuth`` when one is at hand; a service started by the hub listens before its
        ``HubAuth`` is imported (that import takes seconds), so there the same variables are
        read through :func:`atomscale_lab.tls.hub_ssl`.
        """
        hub = HubSsl.of(hub_auth) if hub_auth is not None else hub_ssl()
        return server_tls(hub)

    def run(self) -> None:
        """Listen on ``JUPYTERHUB_SERVICE_URL`` (and the Unix socket named by ``socket_env``)
        until SIGTERM/SIGINT."""
        from urllib.parse import urlparse

        enable_pretty_logging()
        logging.getLogger().setLevel(logging.INFO)
        url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
        path = os.environ.get(self.socket_env) if self.socket_env else None

        async def main():
            app = self.make_app()
            deps = app.settings["deps"]
            servers = listen(
                app,
                url.port,
                url.hostname or "127.0.0.1",
                tls=self.ssl_context(deps.hub_auth),
                unix_socket=path or None,
                xheaders=True,
            )
            asyncio.ensure_future(deps.ready())
            log.info(
                "%s listening on %s (TLS %s)%s",
                self.name,
                url.geturl(),
                "on" if url.scheme == "https" else "off",
                f" and on {path}" if path else "",
            )
            await serve_until_signal(servers, self.name, drain_seconds=5)

        asyncio.run(main())
