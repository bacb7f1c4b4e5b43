"""The ``atomscale-keys`` hub service: releases an org's data keys to its user servers.

Routes (under ``/services/atomscale-keys/``):

- ``GET orgs/<org>/keys`` → ``OrgKeys.to_json()`` — only for a token carrying
  ``custom:atomscale:data:read!group=org:<org>``; audited as ``key.release``.
- ``POST orgs/<org>/audit`` ``{action, outcome, detail}`` → records an event from a user server in
  the org's log; the actor is always the token's owner. Any atomscale scope of the org is needed.
- ``GET orgs/<org>/audit?actor=&action=&limit=&offset=`` → events: ``audit:all`` sees every event,
  ``audit:read`` only the caller's own.

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
SERVER_ACTIONS = re.compile(r"^(data\.(read|write|query|export)|config\.change|apikey\.(create|"
                            r"use|revoke)|auth\.server|widget\.[a-z_]+)$")


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
    """``POST`` / ``GET orgs/<org>/audit``.

    An append is accepted only for an action the token's permissions allow (a refusal or error
    may be reported for any server action: that is what a server records when it says no),
    with a detail of at most ``MAX_DETAIL`` bytes, and at most ``RATE`` events a second per
    token on average (bursts of ``BURST``); past that 429 with ``Retry-After``.
    """

    MAX_DETAIL = 4096
    RATE, BURST = 50.0, 200
    # The permission an *allowed* event of each action needs (any atomscale scope of the org
    # for those not listed, e.g. ``auth.server``).
    ACTION_NEEDS = (
        (re.compile(r"^data\.(read|query|export)$"), {"data:read"}),
        (re.compile(r"^widget\.[a-z_]+$"), {"data:read"}),
        (re.compile(r"^data\.write$"), {"data:write"}),
        (re.compile(r"^config\.change$"), {"config"}),
        (re.compile(r"^apikey\.(create|use|revoke)$"), {"data:write", "config"}),
    )

    def _limiter(self):
        from ...audit import RateLimiter

        return self.settings.setdefault("audit_limiter", RateLimiter(self.RATE, self.BURST))

    def _caller(self) -> str:
        import hashlib

        # Per token (not per user): a leaked or looping token throttles only itself.
        return hashlib.sha256(self.request.headers.get("Authorization", "").encode()).hexdigest()

    async def post(self, org):
        """Record one event of a user server (actor = the token's owner)."""
        import json

        model = await self.token_user()
        user = model["name"]
        perms = self.permissions(model, org)
        if not perms:
            raise web.HTTPError(403, "the token has no scope in this org")
        wait = self._limiter().take(self._caller())
        if wait:
            self.set_header("Retry-After", str(max(1, int(wait + 0.999))))
            raise web.HTTPError(429, "too many audit events from this token; retry shortly")
        if len(self.request.body or b"") > 4 * self.MAX_DETAIL:
            raise web.HTTPError(413, f"an audit event may carry at most {self.MAX_DETAIL} "
                                "bytes of detail")
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
        if outcome == "allowed":
            for pattern, needs in self.ACTION_NEEDS:
                if pattern.match(action) and not perms & needs:
                    self.deny(org, user, "audit.write", "the token's role cannot perform "
                              "this action", attempted=action, held=sorted(perms))
        # the service sets these itself; a server cannot override them through the detail
        reserved = {"actor", "org", "action", "outcome", "service", "via", "seq", "ts", "prev",
                    "mac"}
        detail = {str(k)[:64]: v for k, v in detail.items() if k not in reserved}
        if len(json.dumps(detail, default=str)) > self.MAX_DETAIL:
            raise web.HTTPError(413, f"an audit event may carry at most {self.MAX_DETAIL} "
                                "bytes of detail")
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
            actor = user
        try:
            limit = min(int(self.get_argument("limit", "100")), 1000)
            offset = max(int(self.get_argument("offset", "0")), 0)
        except ValueError:
            raise web.HTTPError(400, "limit and offset must be integers") from None
        events = self.vault.audit(org).events(actor=actor, action=self.get_argument("action", None),
                                              limit=limit, offset=offset)
        self.finish({"events": events})


ROUTES = [
    (rf"orgs/{ORG}/keys", KeysHandler),
    (rf"orgs/{ORG}/audit", AuditHandler),
]

app = ServiceApp(NAME, ROUTES)


def main() -> None:
    """Run the service (started by the hub)."""
    app.run()


if __name__ == "__main__":
    main()
