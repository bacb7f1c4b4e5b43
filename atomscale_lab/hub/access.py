"""HubAccess: what a hub-spawned user server knows of its org — and it holds no key.

In hub mode the org's data is decrypted only by the org's data server (the hub service
``atomscale-data-<org>``, :mod:`atomscale_lab.hub.services.data`). A user's server is a thin
pass-through: the extension forwards ``/user/<name>/atomscale/api/v1/*`` to the data server with
the server's own ``JUPYTERHUB_API_TOKEN`` (whose scopes the hub derived from its owner's roles),
so permission checks and audit events there name the owner (:mod:`atomscale_lab.hub.forward`).
:class:`HubAccess` gives the forwarder its target (:attr:`HubAccess.data_url`), token and CA
bundle, and

- posts the server's own audit events (refused access) to the ``atomscale-keys`` service, which
  records them with the token's owner as actor;
- asks the ``atomscale-context`` service for context labels (the context key stays there);
- derives its owner's permissions from the token's ``custom:atomscale:*!group=org:<org>`` scopes.

It never fetches keys: ``atomscale-keys`` releases them to service identities only.

Services are reached through the hub's public (proxy) URL over https, verified with the
deployment's CA bundle. The environment the spawner sets: ``ATOMSCALE_ORG``,
``ATOMSCALE_HUB_PUBLIC_URL``, ``ATOMSCALE_CA_BUNDLE``, ``ATOMSCALE_DATA_URL``,
``ATOMSCALE_REGION``; the hub sets ``JUPYTERHUB_API_TOKEN`` and ``JUPYTERHUB_USER``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import requests

from atomscale_lab.errors import (
    ConfigError,
    KeyUnavailable,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from atomscale_lab.hub.roles import data_service_name, permissions_from_scopes

if TYPE_CHECKING:
    from atomscale_lab.vault.store import HeadStore

log = logging.getLogger(__name__)

KEYS_SERVICE = "atomscale-keys"
CONTEXT_SERVICE = "atomscale-context"


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise ConfigError(f"${name} is not set: this server was not started by the atomscale hub")
    return value


def answer(status: int, reason: str, body: bytes, service: str | None):
    """A service's JSON answer, or the matching atomscale error for a refusal or failure."""
    import json

    if status < 300:
        return json.loads(body) if body else None
    try:
        message = json.loads(body).get("message") or reason
    except (ValueError, AttributeError):
        message = reason
    if status in (401, 403):
        raise PermissionDenied(f"{service or 'hub'}: {message}")
    if status == 404:
        raise NotFound(f"{service or 'hub'}: {message}")
    if status == 400:
        raise ValidationError(f"{service or 'hub'}: {message}")
    raise KeyUnavailable(f"{service or 'hub'} answered {status}: {message}")


class HubAuditSink:
    """An ``AuditSink`` posting events to the ``atomscale-keys`` service (fails closed)."""

    def __init__(self, access: HubAccess):
        self.access = access

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Post one event; the service records it with this server's owner as actor."""
        body = {"action": action, "outcome": outcome, "detail": detail}
        if actor != self.access.owner:
            body["detail"] = {**detail, "reported_actor": actor}
        self.access._call("POST", KEYS_SERVICE, f"orgs/{self.access.org}/audit", json=body)


class HubAccess:
    """:class:`~atomscale_lab.server.access.OrgAccess` of a hub user's server: a pass-through to the
    org's data server (see the module docstring); it holds no key."""

    def __init__(
        self,
        org: str,
        *,
        hub_url: str | None = None,
        token: str | None = None,
        ca_bundle: str | None = None,
        data_root: str | None = None,
        region: str | None = None,
        owner: str | None = None,
        timeout: float = 30,
        permissions_ttl: float = 60,
        data_url: str | None = None,
    ):
        server_org = os.environ.get("ATOMSCALE_ORG")
        if server_org and org != server_org:
            raise PermissionDenied(f"this server serves org {server_org!r}, not {org!r}")
        self.org = org
        self.hub_url = (hub_url or _env("ATOMSCALE_HUB_PUBLIC_URL")).rstrip("/")
        self._token = token or _env("JUPYTERHUB_API_TOKEN")
        self.ca_bundle = ca_bundle or os.environ.get("ATOMSCALE_CA_BUNDLE") or True
        root = data_root or os.environ.get("ATOMSCALE_DATA_ROOT")
        if root:
            from atomscale_lab.vault.store.media import as_root

            self.data_root = as_root(root)
        else:
            self.data_root = None
        self.region = region or os.environ.get("ATOMSCALE_REGION", "us")
        self.owner = owner or _env("JUPYTERHUB_USER")
        self.timeout = timeout
        self.permissions_ttl = permissions_ttl
        url = (
            data_url
            or os.environ.get("ATOMSCALE_DATA_URL")
            or f"{self.hub_url}/services/{data_service_name(org)}/atomscale/api/v1/"
        )
        self.data_url = url if url.endswith("/") else url + "/"
        self._perm_cache: tuple[float, set[str]] | None = None
        self._lock = threading.Lock()
        self._session = requests.Session()
        # requests would otherwise prefer $REQUESTS_CA_BUNDLE over `verify`, and proxies from
        # the environment over loopback.
        self._session.trust_env = False
        self._audit = HubAuditSink(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(org={self.org!r}, hub={self.hub_url!r})"

    @property
    def token(self) -> str:
        """This process's hub token (sent only to the hub's own services, over https)."""
        return self._token

    @property
    def session(self):
        """The keep-alive ``requests`` session to the hub's public URL (thread-safe pool)."""
        return self._session

    @property
    def ca_file(self) -> str | None:
        """The CA bundle file verifying the hub's public URL (None: the system's)."""
        return self.ca_bundle if isinstance(self.ca_bundle, str) else None

    # ------------------------------------------------------------------ HTTP

    def _url(self, service: str | None, path: str) -> str:
        if service is None:
            return f"{self.hub_url}/hub/api/{path}"
        return f"{self.hub_url}/services/{service}/{path}"

    def _call(self, method: str, service: str | None, path: str, *, token: str | None = None, **kw):
        try:
            r = self._session.request(
                method,
                self._url(service, path),
                timeout=self.timeout,
                verify=self.ca_bundle,
                headers={"Authorization": f"token {token or self._token}"},
                **kw,
            )
        except requests.RequestException as e:
            raise KeyUnavailable(
                f"the hub service {service or 'api'} is unreachable: {type(e).__name__}"
            ) from None
        return answer(r.status_code, r.reason, r.content, service)

    # ------------------------------------------------------------------ OrgAccess

    def org_keys(self):
        """Never: a user's server holds no key (``atomscale-keys`` would refuse it anyway)."""
        raise PermissionDenied(
            "a user's server holds no key: the org's data server "
            f"{data_service_name(self.org)} serves its data"
        )

    def heads(self) -> HeadStore | None:
        """None: commit-log heads are checked by the data server, against the central store."""
        return None

    def audit(self):
        """The sink posting to the hub's key service."""
        return self._audit

    def permissions(self, user: str) -> set[str]:
        """The owner's permissions from this server's token scopes; nothing for anyone else."""
        if user != self.owner:
            return set()
        with self._lock:
            now = time.monotonic()
            if self._perm_cache is None or now - self._perm_cache[0] > self.permissions_ttl:
                model = self._call("GET", None, "user")
                self._perm_cache = (now, permissions_from_scopes(model.get("scopes", []), self.org))
            return set(self._perm_cache[1])

    def actor(self, user: str) -> str:
        """Audit events carry the hub user name."""
        return user

    def context_join(self, run_ids: Sequence[str], fields: Sequence[str], purpose: str, actor: str):
        """Labels from the context service (audited there as ``context.join``)."""
        if actor != self.owner:
            raise PermissionDenied("only this server's owner can join context labels")
        return self._context_labels(run_ids, fields, purpose)

    def _context_labels(
        self, run_ids: Sequence[str], fields: Sequence[str], purpose: str, token: str | None = None
    ):
        import pandas as pd

        doc = self._call(
            "POST",
            CONTEXT_SERVICE,
            f"orgs/{self.org}/join",
            token=token,
            json={"run_ids": list(run_ids), "fields": list(fields), "purpose": purpose},
        )
        frame = pd.DataFrame(doc.get("labels", []))
        if frame.empty:
            frame = pd.DataFrame(columns=["run_id", *fields])
        return frame

    def audit_events(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict]:
        """Events from the key service (which filters to the owner's own without audit:all)."""
        params = {"limit": limit, "offset": offset}
        if actor:
            params["actor"] = actor
        if action:
            params["action"] = action
        return self._call("GET", KEYS_SERVICE, f"orgs/{self.org}/audit", params=params)["events"]

    def org_config(self) -> dict:
        """The org's configuration, kept by the key service in the deployment registry."""
        return self._call("GET", KEYS_SERVICE, f"orgs/{self.org}/config")

    def set_org_config(self, config: dict) -> dict:
        """Store the org's configuration through the key service (which checks ``config``)."""
        return self._call("PUT", KEYS_SERVICE, f"orgs/{self.org}/config", json=config)
