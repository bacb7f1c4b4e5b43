"""The ``atomscale-keys`` hub service: releases an org's data keys to its user servers.

Routes (under ``/services/atomscale-keys/``):

- ``GET orgs/<org>/keys`` → ``OrgKeys.to_json()`` — only for a token carrying
  ``custom:atomscale:data:read!group=org:<org>``; audited as ``key.release``.
- ``POST orgs/<org>/audit`` ``{action, outcome, detail}`` → records an event from a user server in
  the org's log; the actor is always the token's owner. Any atomscale scope of the org is needed.
- ``GET orgs/<org>/audit?actor=&action=&limit=&offset=`` → events: ``audit:all`` sees every event,
  ``audit:read`` only the caller's own.
- ``GET orgs/<org>/config`` (any scope of the org) / ``PUT`` (``config``) → the org's workspace
  configuration (``atomscale_lab.orgconfig``), kept in the deployment registry.

The root key is in this service's environment (never in a user server's); the data key is sent
only in the answer body over TLS and never logged.
"""

from __future__ import annotations

import logging
import re

from tornado import web

from .base import ServiceApp, ServiceHandler

log = logging.getLogger("atomscale.hub.keys")

NAME = "atomscale-keys"
ORG = r"(?P<org>[a-z][a-z0-9-]{1,31})"
# Actions a user server may record on its own behalf (key releases and context joins are recorded
# by the services that perform them; org and key administration by the admin CLI).
SERVER_ACTIONS = re.compile(r"^(data\.(read|write|query|export)|config\.(change|read)|apikey\.("
                            r"create|use|revoke)|auth\.server|widget\.[a-z_]+|audit\.read|"
                            r"context\.join|status\.read|openapi\.read)$")


class KeysHandler(ServiceHandler):
    """``GET orgs/<org>/keys``."""

    async def get(self, org):
        """Release the org's data keys to a token holding the org's data-read scope."""
        model = await self.token_user()
        user = model["name"]
        perms = self.permissions(model, org)
        if "data:read" not in perms:
            if not perms:
                # Not a member of this org at all: record it where it belongs if the org exists.
                if any(o["name"] == org for o in self.vault.orgs()):
                    self.deny(org, user, "key.release", "no data-read scope for this org")
                raise web.HTTPError(403, "no data-read scope for this org")
            self.deny(org, user, "key.release", "no data-read scope for this org",
                      held=sorted(perms))
        self.known_org(org)
        keys = self.vault.org_keys(org)
        self.audit(org, user, "key.release", "allowed", versions=sorted(keys.keys),
                   current=keys.current, fingerprint=keys.fingerprint())
        self.finish(keys.to_json())


class AuditHandler(ServiceHandler):
    """``POST`` / ``GET orgs/<org>/audit``."""

    async def post(self, org):
        """Record one event of a user server (actor = the token's owner)."""
        model = await self.token_user()
        user = model["name"]
        perms = self.permissions(model, org)
        if not perms:
            raise web.HTTPError(403, "the token has no scope in this org")
        doc = self.json_body()
        action = str(doc.get("action", ""))
        outcome = str(doc.get("outcome", "allowed"))
        detail = doc.get("detail") or {}
        if not SERVER_ACTIONS.match(action):
            self.deny(org, user, "audit.write", "a user server may not record this action",
                      attempted=action[:64])
        if outcome not in ("allowed", "denied", "error"):
            raise web.HTTPError(400, "outcome must be allowed, denied or error")
        if not isinstance(detail, dict):
            raise web.HTTPError(400, "detail must be a JSON object")
        # the service sets these itself; a server cannot override them through the detail
        reserved = {"actor", "org", "action", "outcome", "service", "via", "seq", "ts", "prev",
                    "mac"}
        detail = {str(k)[:64]: v for k, v in detail.items() if k not in reserved}
        self.audit(org, user, action, outcome, via="server", **detail)
        self.set_status(201)
        self.finish({"recorded": True})

    async def get(self, org):
        """Events: all of them with ``audit:all``, the caller's own with ``audit:read``."""
        model = await self.token_user()
        user = model["name"]
        perms = self.permissions(model, org)
        if not perms & {"audit:all", "audit:read"}:
            if perms:
                self.deny(org, user, "audit.read", "no audit scope for this org")
            raise web.HTTPError(403, "no audit scope for this org")
        actor = self.get_argument("actor", None)
        if "audit:all" not in perms:
            if actor not in (None, user):
                self.deny(org, user, "audit.read", "reading others' events needs audit:all",
                          requested_actor=actor[:64])
            actor = user
        try:
            limit = min(int(self.get_argument("limit", "100")), 1000)
            offset = max(int(self.get_argument("offset", "0")), 0)
        except ValueError:
            raise web.HTTPError(400, "limit and offset must be integers") from None
        events = self.vault.audit(org).events(actor=actor, action=self.get_argument("action", None),
                                              limit=limit, offset=offset)
        self.finish({"events": events})


class ConfigHandler(ServiceHandler):
    """``GET`` / ``PUT orgs/<org>/config``: the org's workspace configuration."""

    async def get(self, org):
        """The configuration, for any member of the org."""
        model = await self.token_user()
        if not self.permissions(model, org):
            raise web.HTTPError(403, "the token has no scope in this org")
        self.known_org(org)
        self.finish(self.vault.org_config(org))

    async def put(self, org):
        """Store a complete configuration (``config`` scope); audited as ``config.change``."""
        from ...orgconfig import changed_keys, validate

        model = await self.token_user()
        user = model["name"]
        perms = self.permissions(model, org)
        if "config" not in perms:
            if perms:
                self.deny(org, user, "config.change", "no config scope for this org")
            raise web.HTTPError(403, "no config scope for this org")
        self.known_org(org)
        new = validate(self.json_body())
        changed = changed_keys(self.vault.org_config(org)["config"], new)
        self.audit(org, user, "config.change", "allowed", keys=changed)
        self.finish(self.vault.set_org_config(org, new))


ROUTES = [
    (rf"orgs/{ORG}/keys", KeysHandler),
    (rf"orgs/{ORG}/audit", AuditHandler),
    (rf"orgs/{ORG}/config", ConfigHandler),
]

app = ServiceApp(NAME, ROUTES)


def main() -> None:
    """Run the service (started by the hub)."""
    app.run()


if __name__ == "__main__":
    main()
