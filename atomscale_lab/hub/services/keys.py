"""The ``atomscale-keys`` hub service: org keys for service identities, central commit-log
heads, and the org audit logs.

Routes (under ``/services/atomscale-keys/``):

- ``GET orgs/<org>/keys`` → ``OrgKeys.to_json()`` — only for a *service* token of the org's data
  server (``atomscale-data-<org>``) or the ingest service
  (:func:`~atomscale_lab.hub.roles.key_holders`). Any user, server, kernel or personal API token
  gets 403. Audited as ``key.release`` (allowed or denied).
- ``GET orgs/<org>/heads?table=<name>`` → ``{"head": [seq, digest] | null}`` and ``POST
  orgs/<org>/heads`` ``{table, seq, digest}`` → advance (never backwards): the deployment
  registry's commit-log heads, for the org's key holders only (refusals audited as
  ``heads.access``).
- ``POST orgs/<org>/audit`` ``{action, outcome, detail}`` → records an event from a user server in
  the org's log; the actor is always the token's owner. Any atomscale scope of the org is needed.
  The org's data server records events of its callers: ``{actor, action, outcome, detail}``.
- ``GET orgs/<org>/audit?actor=&action=&limit=&offset=`` → events: ``audit:all`` sees every event,
  ``audit:read`` only the caller's own; the org's data server (which checked its caller's scope)
  gets what it asks for.
- ``GET orgs/<org>/config`` (any scope of the org) / ``PUT`` (``config``) → the org's workspace
  configuration (``atomscale_lab.orgconfig``), kept in the deployment registry; the org's data
  server (which checked and audited its caller) reads and stores it for its callers.

The same routes are served on a Unix socket (``$ATOMSCALE_KEYS_SOCKET``), where the caller is
identified by its Unix account (``SO_PEERCRED``): an org's service account is that org's data
server; anyone else gets 401. Data servers use it for keys, heads and audit events (no proxy hop,
no token to steal).

The root key is in this service's environment (never in a user server's); the data key is sent
only in the answer body over TLS and never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re

from tornado import web

from atomscale_lab.hub.roles import data_service_name, key_holders
from atomscale_lab.hub.services.base import ServiceApp, ServiceHandler

log = logging.getLogger("atomscale.hub.keys")

NAME = "atomscale-keys"
ORG = r"(?P<org>[a-z][a-z0-9-]{1,31})"
# Actions a user server may record on its own behalf (key releases and context joins are recorded
# by the services that perform them; org and key administration by the admin CLI).
SERVER_ACTIONS = re.compile(
    r"^(data\.(read|write|query|export)|config\.(change|read)|apikey\.("
    r"create|use|revoke)|auth\.server|widget\.[a-z_]+|audit\.read|"
    r"context\.join|status\.read|openapi\.read)$"
)
# Actions the org's data server records for its callers (key releases are recorded here).
DATA_SERVER_ACTIONS = re.compile(
    r"^(data|config|audit|context|apikey|widget|auth|status|"
    r"openapi)\.[a-z_][a-z_.]{0,40}$"
)
HEAD_NAME = re.compile(r"[a-z_]+/[a-z0-9_]+@[0-9A-Za-z_-]{1,64}")
RESERVED = {"actor", "org", "action", "outcome", "service", "via", "seq", "ts", "prev", "mac"}


def _identity(model: dict) -> str:
    """The actor name of a token's owner: ``service:<name>`` for services."""
    name = str(model.get("name", "?"))
    return name if model.get("kind", "user") == "user" else f"service:{name}"


SOCKET_ENV = "ATOMSCALE_KEYS_SOCKET"
"""A Unix socket this service also serves (for the data servers: no proxy hop, no token)."""


def _is_data_server(model: dict, org: str) -> bool:
    return model.get("kind") == "service" and model.get("name") == data_service_name(org)


class KeysServiceHandler(ServiceHandler):
    """Base of this service's handlers: on the Unix socket, an org's service account is that
    org's data server (its identity checked by the kernel, not by a token)."""

    def peer_model(self, uid: int) -> dict | None:
        """``{kind: service, name: atomscale-data-<org>}`` for an org's service account."""
        import pwd

        from atomscale_lab.hub.users import service_account

        try:
            account = pwd.getpwuid(uid).pw_name
        except KeyError:
            return None
        for o in self.vault.orgs():
            if service_account(o["name"]) == account:
                return {
                    "kind": "service",
                    "name": data_service_name(o["name"]),
                    "scopes": [],
                    "via": "unix-socket",
                }
        return None


class KeysHandler(KeysServiceHandler):
    """``GET orgs/<org>/keys``."""

    async def get(self, org):
        """Release the org's keys to the org's key-holding services only."""
        model = await self.token_owner()
        who = _identity(model)
        known = any(o["name"] == org for o in self.vault.orgs())
        if model.get("kind") != "service" or model.get("name") not in key_holders(org):
            reason = (
                "keys are released to the org's services only"
                if model.get("kind", "user") == "user"
                else "this service does not hold this org's keys"
            )
            if known:  # recorded where it belongs if the org exists
                self.deny(org, who, "key.release", reason, kind=str(model.get("kind", "user")))
            raise web.HTTPError(403, reason)
        self.known_org(org)
        keys = self.vault.org_keys(org)
        self.audit(
            org,
            who,
            "key.release",
            "allowed",
            versions=sorted(keys.keys),
            current=keys.current,
            fingerprint=keys.fingerprint(),
        )
        self.finish(keys.to_json())


class HeadsHandler(KeysServiceHandler):
    """``GET`` / ``POST orgs/<org>/heads``: the central commit-log heads."""

    async def _holder(self, org) -> dict:
        model = await self.token_owner()
        if model.get("kind") != "service" or model.get("name") not in key_holders(org):
            if any(o["name"] == org for o in self.vault.orgs()):
                self.deny(
                    org,
                    _identity(model),
                    "heads.access",
                    "commit-log heads are for the org's services only",
                )
            raise web.HTTPError(403, "commit-log heads are for the org's services only")
        self.known_org(org)
        return model

    def _table(self, name) -> str:
        if not isinstance(name, str) or not HEAD_NAME.fullmatch(name):
            raise web.HTTPError(400, "table must look like <category>/<name>@<epoch>")
        return name

    async def get(self, org):
        """The latest head of one table, or null."""
        await self._holder(org)
        table = self._table(self.get_argument("table", ""))
        head = self.heads.get(org, table)
        self.finish({"head": list(head) if head else None})

    async def post(self, org):
        """Advance a table's head (ignored unless newer)."""
        await self._holder(org)
        doc = self.json_body()
        table = self._table(doc.get("table"))
        seq, digest = doc.get("seq"), doc.get("digest")
        if (
            not isinstance(seq, int)
            or seq < 1
            or not isinstance(digest, str)
            or not re.fullmatch(r"[0-9a-f]{64}", digest)
        ):
            raise web.HTTPError(400, "seq must be a positive integer and digest a sha256 hex")
        self.heads.advance(org, table, seq, digest)
        self.finish({"head": list(self.heads.get(org, table) or [])})

    @property
    def heads(self):
        """The registry's head store (one per service process)."""
        store = self.settings.get("head_store")
        if store is None:
            store = self.settings["head_store"] = self.vault.heads()
        return store


class AuditHandler(KeysServiceHandler):
    """``POST`` / ``GET orgs/<org>/audit``.

    A user server's append is accepted only for an action the token's permissions allow (a
    refusal or error may be reported for any server action: that is what a server records when
    it says no), at most ``RATE`` events a second per token on average (bursts of ``BURST``;
    past that 429 with ``Retry-After``). The org's data server records its callers' events (it
    checked their scopes itself) and is not throttled: every audited read passes here. Every
    event's detail is at most ``MAX_DETAIL`` bytes (413).
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
        (re.compile(r"^context\.join$"), {"context:join"}),
        (re.compile(r"^audit\.read$"), {"audit:read", "audit:all"}),
        (re.compile(r"^apikey\.(create|use|revoke)$"), {"data:write", "config"}),
    )

    def _limiter(self):
        from atomscale_lab.vault.audit import RateLimiter

        return self.settings.setdefault("audit_limiter", RateLimiter(self.RATE, self.BURST))

    def _caller(self) -> str:
        import hashlib

        # Per token (not per user): a leaked or looping token throttles only itself.
        return hashlib.sha256(self.request.headers.get("Authorization", "").encode()).hexdigest()

    async def post(self, org):
        """Record one event of a user server (actor = the token's owner) or of the org's data
        server (actor = its caller)."""
        import json

        model = await self.token_owner()
        if len(self.request.body or b"") > 4 * self.MAX_DETAIL:
            raise web.HTTPError(
                413, f"an audit event may carry at most {self.MAX_DETAIL} bytes of detail"
            )
        doc = self.json_body()
        action = str(doc.get("action", ""))
        outcome = str(doc.get("outcome", "allowed"))
        detail = doc.get("detail") or {}
        if _is_data_server(model, org):
            user = doc.get("actor")
            if not isinstance(user, str) or not user or len(user) > 128:
                raise web.HTTPError(400, "the data server must name the actor")
            allowed, via, perms = DATA_SERVER_ACTIONS, model["name"], None
        else:
            if model.get("kind", "user") != "user":
                raise web.HTTPError(403, "this service may not record events of this org")
            user = model["name"]
            perms = self.permissions(model, org)
            if not perms:
                raise web.HTTPError(403, "the token has no scope in this org")
            wait = self._limiter().take(self._caller())
            if wait:
                self.set_header("Retry-After", str(max(1, int(wait + 0.999))))
                raise web.HTTPError(429, "too many audit events from this token; retry shortly")
            allowed, via = SERVER_ACTIONS, "server"
        if not allowed.match(action):
            self.deny(
                org,
                _identity(model),
                "audit.write",
                "this caller may not record this action",
                attempted=action[:64],
            )
        if outcome not in ("allowed", "denied", "error"):
            raise web.HTTPError(400, "outcome must be allowed, denied or error")
        if not isinstance(detail, dict):
            raise web.HTTPError(400, "detail must be a JSON object")
        if outcome == "allowed" and perms is not None:
            for pattern, needs in self.ACTION_NEEDS:
                if pattern.match(action) and not perms & needs:
                    self.deny(
                        org,
                        user,
                        "audit.write",
                        "the token's role cannot perform this action",
                        attempted=action,
                        held=sorted(perms),
                    )
        # the service sets these itself; a caller cannot override them through the detail
        detail = {str(k)[:64]: v for k, v in detail.items() if k not in RESERVED}
        if len(json.dumps(detail, default=str)) > self.MAX_DETAIL:
            raise web.HTTPError(
                413, f"an audit event may carry at most {self.MAX_DETAIL} bytes of detail"
            )
        # On a worker thread: the append waits for its fsync, and appends arriving meanwhile
        # (other callers, the data server's concurrent requests) share one group commit instead
        # of queueing behind each other on the event loop. 201 still means "on disk".
        await asyncio.to_thread(self.audit, org, user, action, outcome, via=via, **detail)
        self.set_status(201)
        self.finish({"recorded": True})

    async def get(self, org):
        """Events: all of them with ``audit:all``, the caller's own with ``audit:read``; the
        org's data server (which checked its caller's scope) gets what it asks for."""
        model = await self.token_owner()
        actor = self.get_argument("actor", None)
        if not _is_data_server(model, org):
            if model.get("kind", "user") != "user":
                raise web.HTTPError(403, "this service may not read this org's audit log")
            user = model["name"]
            perms = self.permissions(model, org)
            if not perms & {"audit:all", "audit:read"}:
                if perms:
                    self.deny(org, user, "audit.read", "no audit scope for this org")
                raise web.HTTPError(403, "no audit scope for this org")
            if "audit:all" not in perms:
                if actor not in (None, user):
                    self.deny(
                        org,
                        user,
                        "audit.read",
                        "reading others' events needs audit:all",
                        requested_actor=actor[:64],
                    )
                actor = user
        try:
            limit = min(int(self.get_argument("limit", "100")), 1000)
            offset = max(int(self.get_argument("offset", "0")), 0)
        except ValueError:
            raise web.HTTPError(400, "limit and offset must be integers") from None
        events = self.vault.audit(org).events(
            actor=actor, action=self.get_argument("action", None), limit=limit, offset=offset
        )
        self.finish({"events": events})


class ConfigHandler(KeysServiceHandler):
    """``GET`` / ``PUT orgs/<org>/config``: the org's workspace configuration."""

    async def get(self, org):
        """The configuration, for any member of the org and for the org's data server."""
        model = await self.token_owner()
        if not _is_data_server(model, org):
            if model.get("kind", "user") != "user" or not self.permissions(model, org):
                raise web.HTTPError(403, "the token has no scope in this org")
        self.known_org(org)
        self.finish(self.vault.org_config(org))

    async def put(self, org):
        """Store a complete configuration (``config`` scope); audited as ``config.change``.

        The org's data server stores what its caller changed (it checked the caller's ``config``
        scope and recorded the change as that caller), so it is not audited twice here.
        """
        from atomscale_lab.orgconfig import changed_keys, validate

        model = await self.token_owner()
        if not _is_data_server(model, org):
            if model.get("kind", "user") != "user":
                raise web.HTTPError(403, "this service may not configure this org")
            user = model["name"]
            perms = self.permissions(model, org)
            if "config" not in perms:
                if perms:
                    self.deny(org, user, "config.change", "no config scope for this org")
                raise web.HTTPError(403, "no config scope for this org")
        self.known_org(org)
        new = validate(self.json_body())
        if not _is_data_server(model, org):
            changed = changed_keys(self.vault.org_config(org)["config"], new)
            self.audit(org, model["name"], "config.change", "allowed", keys=changed)
        self.finish(self.vault.set_org_config(org, new))


ROUTES = [
    (rf"orgs/{ORG}/keys", KeysHandler),
    (rf"orgs/{ORG}/heads", HeadsHandler),
    (rf"orgs/{ORG}/audit", AuditHandler),
    (rf"orgs/{ORG}/config", ConfigHandler),
]

app = ServiceApp(NAME, ROUTES, socket_env=SOCKET_ENV)


def main() -> None:
    """Run the service (started by the hub)."""
    app.run()


if __name__ == "__main__":
    main()
