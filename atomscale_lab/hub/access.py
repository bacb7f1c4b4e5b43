"""HubAccess: the server extension's :class:`~atomscale_lab.sources.OrgAccess` on JupyterHub.

A hub-spawned user server holds no root key and no key registry. With its own
``JUPYTERHUB_API_TOKEN`` (whose scopes the hub derived from its owner's roles) it

- fetches the org's data keys from the ``atomscale-keys`` service (audited there as
  ``key.release``), once, into memory;
- asks the ``atomscale-context`` service for context labels (the context key stays there);
- posts its audit events to the ``atomscale-keys`` service, which records them in the org's log
  with the token's owner as actor;
- derives its owner's permissions from the token's ``custom:atomscale:*!group=org:<org>`` scopes.

Services are reached through the hub's public (proxy) URL over https, verified with the
deployment's CA bundle. The environment the spawner sets: ``ATOMSCALE_ORG``,
``ATOMSCALE_HUB_PUBLIC_URL``, ``ATOMSCALE_CA_BUNDLE``, ``ATOMSCALE_DATA_ROOT``,
``ATOMSCALE_REGION``; the hub sets ``JUPYTERHUB_API_TOKEN`` and ``JUPYTERHUB_USER``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from ..errors import (
    ConfigError,
    KeyUnavailable,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from .roles import permissions_from_scopes

log = logging.getLogger(__name__)

KEYS_SERVICE = "atomscale-keys"
CONTEXT_SERVICE = "atomscale-context"


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise ConfigError(f"${name} is not set: this server was not started by the atomscale hub")
    return value


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
    """:class:`~atomscale_lab.sources.OrgAccess` backed by the hub and its services."""

    def __init__(self, org: str, *, hub_url: str | None = None, token: str | None = None,
                 ca_bundle: str | None = None, data_root: str | None = None,
                 region: str | None = None, owner: str | None = None, timeout: float = 30,
                 permissions_ttl: float = 60):
        server_org = os.environ.get("ATOMSCALE_ORG")
        if server_org and org != server_org:
            raise PermissionDenied(f"this server serves org {server_org!r}, not {org!r}")
        self.org = org
        self.hub_url = (hub_url or _env("ATOMSCALE_HUB_PUBLIC_URL")).rstrip("/")
        self._token = token or _env("JUPYTERHUB_API_TOKEN")
        self.ca_bundle = ca_bundle or os.environ.get("ATOMSCALE_CA_BUNDLE") or True
        self.data_root = Path(data_root or _env("ATOMSCALE_DATA_ROOT"))
        self.region = region or os.environ.get("ATOMSCALE_REGION", "us")
        self.owner = owner or _env("JUPYTERHUB_USER")
        self.timeout = timeout
        self.permissions_ttl = permissions_ttl
        self._perm_cache: tuple[float, set[str]] | None = None
        self._lock = threading.Lock()
        self._session = requests.Session()
        # requests would otherwise prefer $REQUESTS_CA_BUNDLE over `verify`, and proxies from
        # the environment over loopback.
        self._session.trust_env = False
        self._audit = HubAuditSink(self)

    def __repr__(self) -> str:
        return f"HubAccess(org={self.org!r}, hub={self.hub_url!r})"

    # ------------------------------------------------------------------ HTTP

    def _url(self, service: str | None, path: str) -> str:
        if service is None:
            return f"{self.hub_url}/hub/api/{path}"
        return f"{self.hub_url}/services/{service}/{path}"

    def _call(self, method: str, service: str | None, path: str, **kw):
        try:
            r = self._session.request(method, self._url(service, path), timeout=self.timeout,
                                      verify=self.ca_bundle,
                                      headers={"Authorization": f"token {self._token}"}, **kw)
        except requests.RequestException as e:
            raise KeyUnavailable(f"the hub service {service or 'api'} is unreachable: "
                                 f"{type(e).__name__}") from None
        if r.status_code < 300:
            return r.json() if r.content else None
        try:
            message = r.json().get("message") or r.reason
        except ValueError:
            message = r.reason
        if r.status_code in (401, 403):
            raise PermissionDenied(f"{service or 'hub'}: {message}")
        if r.status_code == 404:
            raise NotFound(f"{service or 'hub'}: {message}")
        if r.status_code == 400:
            raise ValidationError(f"{service or 'hub'}: {message}")
        raise KeyUnavailable(f"{service or 'hub'} answered {r.status_code}: {message}")

    # ------------------------------------------------------------------ OrgAccess

    def org_keys(self):
        """The org's data keys from the key service (which audits the release)."""
        from ..crypto import OrgKeys

        doc = self._call("GET", KEYS_SERVICE, f"orgs/{self.org}/keys")
        keys = OrgKeys.from_json(doc)
        if keys.org != self.org:
            raise KeyUnavailable("the key service released keys of another org")
        return keys

    def heads(self):
        """Commit-log heads this server's account has seen (rollback defence across restarts)."""
        from ..store import SqliteHeadStore

        path = Path(os.environ.get("HOME", "~")).expanduser() / ".atomscale" / "heads.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SqliteHeadStore(path)

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
                self._perm_cache = (now, permissions_from_scopes(model.get("scopes", []),
                                                                 self.org))
            return set(self._perm_cache[1])

    def actor(self, user: str) -> str:
        """Audit events carry the hub user name."""
        return user

    def context_join(self, run_ids: Sequence[str], fields: Sequence[str], purpose: str,
                     actor: str):
        """Labels from the context service (audited there as ``context.join``)."""
        import pandas as pd

        if actor != self.owner:
            raise PermissionDenied("only this server's owner can join context labels")
        doc = self._call("POST", CONTEXT_SERVICE, f"orgs/{self.org}/join",
                         json={"run_ids": list(run_ids), "fields": list(fields),
                               "purpose": purpose})
        frame = pd.DataFrame(doc.get("labels", []))
        if frame.empty:
            frame = pd.DataFrame(columns=["run_id", *fields])
        return frame

    def audit_events(self, *, actor: str | None = None, action: str | None = None,
                     limit: int = 100, offset: int = 0) -> list[dict]:
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
