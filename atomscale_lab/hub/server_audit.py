"""A server extension for hub-spawned servers: records refused access in the org's audit log.

JupyterHub's single-user server refuses a valid hub token whose owner has no access to this
server (for example a user of another org) before any handler runs, and only logs it. This
extension wraps the server's identity provider so that each such refusal is also an
``auth.server`` event (outcome ``denied``) in the server's org log, naming the caller
(``detail.reported_actor``); the event's actor is the server's owner, as for every event a server
reports. Anonymous requests (no token, no cookie: the browser is sent to log in) are not recorded.
Enabled by the hub's server configuration (``atomscale_lab.hub.configure``).
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)


def _jupyter_server_extension_points():
    return [{"module": "atomscale_lab.hub.server_audit"}]


def _load_jupyter_server_extension(serverapp) -> None:
    idp = serverapp.identity_provider
    hub_auth = getattr(idp, "hub_auth", None)
    org = os.environ.get("ATOMSCALE_ORG")
    if hub_auth is None or not org:
        serverapp.log.info("atomscale server audit: not a hub-spawned server, nothing to do")
        return
    from atomscale_lab.hub.access import HubAccess

    access = HubAccess(org)
    owner = access.owner
    original = idp.get_user

    async def get_user(handler):
        user = await original(handler)
        if user is not None or getattr(handler, "_atomscale_denial_seen", False):
            return user
        handler._atomscale_denial_seen = True
        try:
            model = await hub_auth.get_user(handler, sync=False)
        except Exception:  # noqa: BLE001 - the refusal stands; only the record is missing
            model = None
        if model and model.get("name") != owner:
            path = handler.request.path
            try:
                await asyncio.to_thread(
                    access.audit().record,
                    owner,
                    "auth.server",
                    "denied",
                    reported_actor=str(model.get("name")),
                    kind=str(model.get("kind", "user")),
                    path=path[:200],
                    method=handler.request.method,
                )
            except Exception as e:  # noqa: BLE001 - never turn a refusal into a 500
                log.warning(
                    "could not audit a refused access by %s: %s",
                    model.get("name"),
                    type(e).__name__,
                )
        return user

    idp.get_user = get_user
    serverapp.log.info("atomscale server audit: refused hub users are recorded for org %s", org)
