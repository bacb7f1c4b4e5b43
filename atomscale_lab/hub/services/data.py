"""The per-org data server ``atomscale-data-<org>``: the only process that decrypts an org's data
for its users in hub mode.

One hub-managed service per org, running as the org's own service account
(:func:`atomscale_lab.hub.users.service_account`), which owns ``data_root/<org>``. It has no
kernels, terminals or contents API: it serves the REST API of the server extension (the same
:data:`atomscale_lab.server.handlers.ROUTES`, JSON and Arrow) under
``/services/atomscale-data-<org>/atomscale/api/v1/``.

- Identity: each request carries a hub token (``Authorization: token …``: the user's server
  token forwarded by its pass-through, a kernel's, or a personal API token). The hub resolves it
  (:class:`jupyterhub.services.auth.HubAuth`); permissions are the token's scopes filtered to this
  org (:func:`~atomscale_lab.hub.roles.permissions_from_scopes`). Callers without any scope in
  this org are refused (audited as ``auth.server``); service tokens are refused.
- Keys: fetched once from ``atomscale-keys`` with this service's own token and kept in memory
  only (:class:`DataServerAccess`).
- Heads: commit-log heads are read from and advanced in the deployment registry through
  ``atomscale-keys`` (:class:`ServiceHeadStore`), so a server started fresh refuses a rolled-back
  log just like a long-running one.
- Audit: every decision is posted to ``atomscale-keys``, which records it in the org's log with
  the caller as actor (``via`` = this service). The events of a read (:data:`DEFERRED_AUDIT`)
  are posted from :data:`AUDIT_POOL` while the answer is being encoded; no byte of the answer
  leaves before the key service has confirmed them (a failed post is the request's error).

Environment (set by :func:`atomscale_lab.hub.configure`): ``ATOMSCALE_ORG``,
``ATOMSCALE_DATA_ROOT``, ``ATOMSCALE_REGION``, ``ATOMSCALE_HUB_PUBLIC_URL``,
``ATOMSCALE_CA_BUNDLE``; the hub sets ``JUPYTERHUB_API_TOKEN`` and the service variables.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import json as _json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from urllib.parse import urlencode

from tornado import web

from atomscale_lab.errors import AtomscaleError, KeyUnavailable, PermissionDenied, http_status
from atomscale_lab.hub.access import KEYS_SERVICE, HubAccess, _env, answer
from atomscale_lab.hub.roles import data_service_name, permissions_from_scopes
from atomscale_lab.hub.services.base import ServiceApp
from atomscale_lab.runtime import JsonHandler
from atomscale_lab.server.handlers import (
    API_PREFIX,
    _reason,
    host_handlers,
    request_params,
    run_service_call,
)
from atomscale_lab.server.service import OrgService

log = logging.getLogger("atomscale.hub.data")

RETRY_SECONDS = 1.0

DEFERRED_AUDIT = frozenset(
    {
        OrgService.series,
        OrgService.runs_page,
        OrgService.facets,
        OrgService.run,
        OrgService.metrology,
        OrgService.metrology_item,
    }
)
"""Reads whose events are posted while their answer is encoded (one request, one or two events,
nothing done after the event that depends on it)."""
AUDIT_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="atomscale-audit")
"""Posts collected events to ``atomscale-keys`` (each thread keeps its own socket connection;
the key service group-commits appends that arrive together)."""
_COLLECT = threading.local()


def _collecting(events: list[dict], fn: Callable):
    """Run ``fn`` with the events a :class:`ServiceAuditSink` records in this thread appended to
    ``events`` instead of posted (the caller posts them, see :meth:`DataApiHandler.call`)."""
    _COLLECT.events = events
    try:
        return fn()
    finally:
        _COLLECT.events = None


def _post_all(sink: ServiceAuditSink, events: list[dict]) -> None:
    for body in events:  # in the order recorded
        sink.post(body)


class Caller(str):
    """The hub name of a request's caller, carrying that request's permissions and token.

    ``OrgService`` methods take the user as a string; carrying the permissions with it keeps
    concurrent requests of the same user with different tokens (say a personal token with
    fewer scopes) apart.
    """

    permissions: frozenset[str]
    token: str

    def __new__(cls, name: str, permissions, token: str):
        obj = super().__new__(cls, name)
        obj.permissions = frozenset(permissions)
        obj.token = token
        return obj

    def __repr__(self) -> str:
        return f"Caller({str(self)!r})"

    @property
    def username(self) -> str:
        """The name (as ``current_user.username`` on a jupyter-server host)."""
        return str(self)


class ServiceHeadStore:
    """:class:`~.vault.store.HeadStore` kept centrally: the deployment registry's heads,
    read and advanced through ``atomscale-keys`` with the data server's own token. Fails closed:
    an unreachable store is an error, never "no head known"."""

    def __init__(self, access: HubAccess):
        self.access = access

    def get(self, org: str, table: str) -> tuple[int, str] | None:
        """Latest known head, or None."""
        doc = self.access._call("GET", KEYS_SERVICE, f"orgs/{org}/heads", params={"table": table})
        head = (doc or {}).get("head")
        return (int(head[0]), str(head[1])) if head else None

    def advance(self, org: str, table: str, seq: int, digest: str) -> None:
        """Record a newer head (the registry never goes backwards)."""
        self.access._call(
            "POST",
            KEYS_SERVICE,
            f"orgs/{org}/heads",
            json={"table": table, "seq": int(seq), "digest": str(digest)},
        )


class ServiceAuditSink:
    """An ``AuditSink`` posting events to ``atomscale-keys`` with the caller as actor."""

    def __init__(self, access: HubAccess):
        self.access = access

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Post one event (fails closed: an unrecorded read is not served); inside a request's
        collecting scope (:func:`_collecting`) the event is handed to the request instead."""
        body = {"actor": str(actor), "action": action, "outcome": outcome, "detail": detail}
        events = getattr(_COLLECT, "events", None)
        if events is not None:
            events.append(body)
            return
        self.post(body)

    def post(self, body: dict) -> None:
        """Post one event body and wait for the key service's confirmation."""
        self.access._call("POST", KEYS_SERVICE, f"orgs/{self.access.org}/audit", json=body)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a Unix socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        """Connect to the socket file."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class DataServerAccess(HubAccess):
    """:class:`~atomscale_lab.server.access.OrgAccess` of the data server: keys and heads from
    ``atomscale-keys`` (service identity), permissions from each caller's token.

    With ``$ATOMSCALE_KEYS_SOCKET`` set, ``atomscale-keys`` is reached on its Unix socket, where
    this process's Unix account identifies it (one keep-alive connection per thread); otherwise
    through the hub's public URL with the service token.
    """

    def __init__(self, org: str | None = None, *, keys_socket: str | None = None, **kw):
        org = org or _env("ATOMSCALE_ORG")
        kw.setdefault("owner", os.environ.get("JUPYTERHUB_SERVICE_NAME") or data_service_name(org))
        kw.setdefault("data_root", _env("ATOMSCALE_DATA_ROOT"))
        super().__init__(org, **kw)
        self.keys_socket = keys_socket or os.environ.get("ATOMSCALE_KEYS_SOCKET") or None
        self._local = threading.local()
        self._audit = ServiceAuditSink(self)

    def _call(self, method: str, service: str | None, path: str, *, token: str | None = None, **kw):
        if service == KEYS_SERVICE and token is None and self.keys_socket:
            return self._socket_call(method, path, **kw)
        return super()._call(method, service, path, token=token, **kw)

    def _socket_call(
        self, method: str, path: str, *, params: dict | None = None, json: dict | None = None
    ):
        url = f"/services/{KEYS_SERVICE}/{path}"
        if params:
            url += "?" + urlencode(params)
        body = None if json is None else _json.dumps(json).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):  # a kept-alive connection the service closed is retried once
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = _UnixHTTPConnection(self.keys_socket, self.timeout)
            try:
                conn.request(method, url, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise KeyUnavailable(
                        f"the hub service {KEYS_SERVICE} is unreachable on its "
                        f"socket: {type(e).__name__}"
                    ) from None
                continue
            return answer(r.status, r.reason, data, KEYS_SERVICE)
        return None

    def org_keys(self):
        """The org's keys, released by ``atomscale-keys`` to this service's identity."""
        from atomscale_lab.vault.crypto import OrgKeys

        keys = OrgKeys.from_json(self._call("GET", KEYS_SERVICE, f"orgs/{self.org}/keys"))
        if keys.org != self.org:
            raise KeyUnavailable("the key service released keys of another org")
        return keys

    def heads(self) -> ServiceHeadStore:
        """The central head store (through the key service)."""
        return ServiceHeadStore(self)

    def permissions(self, user: str) -> set[str]:
        """The permissions of the request's token (nothing for a bare name)."""
        return set(user.permissions) if isinstance(user, Caller) else set()

    def actor(self, user: str) -> str:
        """Audit events name the caller (the :class:`Caller` itself, a string)."""
        return user

    def context_join(self, run_ids: Sequence[str], fields: Sequence[str], purpose: str, actor: str):
        """Labels from the context service, asked with the caller's own token (audited there
        as the caller)."""
        if not isinstance(actor, Caller):
            raise PermissionDenied("context joins need the caller's identity")
        return self._context_labels(run_ids, fields, purpose, token=actor.token)


class OrgServiceHolder:
    """Builds the org's ``OrgService`` once (keys from the key service); retries a failed start
    after :data:`RETRY_SECONDS` (the key service may come up after this one)."""

    def __init__(self, access_factory=DataServerAccess, refresh_interval: float = 1.0):
        self.access_factory = access_factory
        self.refresh_interval = refresh_interval
        self.service = None
        self.error: AtomscaleError | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def get(self):
        """The running ``OrgService``; raises the start-up error (503 for an unavailable key)."""
        if self.service is None:
            with self._lock:
                if self.service is None and time.monotonic() >= self._retry_at:
                    self._start()
        if self.service is None:
            raise self.error or KeyUnavailable("the org's data is not available yet")
        return self.service

    def _start(self) -> None:
        from atomscale_lab.server.service import OrgService

        try:
            access = self.access_factory()
            service = OrgService(access, refresh_interval=self.refresh_interval)
        except AtomscaleError as e:
            self.error = e
            self._retry_at = time.monotonic() + RETRY_SECONDS
            log.warning("org data not available yet: %s", e)
            return
        self.service = service
        self.error = None
        log.info("serving org %s (key v%s)", service.org, service.key_version)

    def warm(self, deadline: float = 120) -> None:
        """Start the service and build its catalogues before the first request (a thread)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            try:
                service = self.get()
            except AtomscaleError:
                time.sleep(RETRY_SECONDS)
                continue
            try:
                service.runs.get()
                service.metrology_index.get()
            except Exception as e:  # noqa: BLE001 - requests will raise it properly
                log.warning("could not index the org yet: %s", e)
            return


class _ScopesDecide:
    """``authorizer`` of the data server's handlers: the route decorators pass every identified
    caller; each ``OrgService`` answer checks the caller's scopes itself (and audits refusals)."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        """True for an identified caller."""
        return user is not None


class DataApiHandler(JsonHandler):
    """Host base of the REST routes in the data server: hub-token identity, the runtime's JSON
    errors."""

    logger = log
    authorizer = _ScopesDecide()
    _caller: Caller | None = None
    _audit_future: Future | None = None
    audit_pending: Callable | None = None
    _spans: dict[str, float] | None = None

    async def prepare(self):
        """Resolve the caller's token at the hub; refuse anonymous, service and foreign callers."""
        deps = self.settings["deps"]
        await deps.ready()
        hub_auth = deps.hub_auth
        match = hub_auth.auth_header_pat.match(self.request.headers.get("Authorization", ""))
        if not match:
            raise web.HTTPError(401, "a hub API token is required (Authorization: token …)")
        token = match.group(1)
        t0 = time.perf_counter()
        model = await hub_auth.user_for_token(token, sync=False)
        self._span("token", t0)
        if not model:
            raise web.HTTPError(401, "the token is not valid")
        org = self.settings["org"]
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403, "the data API serves users, not services")
        perms = permissions_from_scopes(model.get("scopes", []), org)
        caller = Caller(str(model["name"]), perms, token)
        if not perms:
            await asyncio.to_thread(
                self.settings["audit"],
                caller,
                "auth.server",
                "denied",
                reason="no scope in this org",
                path=self.request.path[:200],
                method=self.request.method,
            )
            raise web.HTTPError(403, f"no access to org {org!r}")
        self._caller = caller

    def get_current_user(self):
        """The :class:`Caller` resolved in :meth:`prepare`."""
        return self._caller

    @property
    def username(self) -> Caller:
        """The caller (a string carrying its permissions)."""
        return self._caller

    def query_params(self) -> dict[str, str]:
        """Query parameters (the last value of each), without ``token``."""
        return request_params(self)

    def finish(self, chunk=None, set_content_type: str | None = None):
        """Finish, naming the body's type as jupyter-server's ``APIHandler.finish`` does (the
        routes call it so; Tornado's own ``finish`` has no such argument)."""
        if set_content_type:
            self.set_header("Content-Type", set_content_type)
        return super().finish(chunk)

    def get_json_body(self):
        """The request body as JSON (None when empty), as jupyter-server's ``APIHandler``."""
        if not self.request.body:
            return None
        try:
            return json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "the body is not valid JSON") from None

    async def call(self, method, *args):
        """Run the ``OrgService`` method ``method`` for the caller on a worker thread, mapping
        errors."""
        try:
            service = self.settings["holder"].get()
        except AtomscaleError as e:
            raise web.HTTPError(http_status(e), str(e), reason=_reason(e)) from None
        await self._audit_done()  # a second call in one request: the first one's events first
        events: list[dict] = []
        sink = service.access.audit()
        scope = (
            partial(_collecting, events)
            if method in DEFERRED_AUDIT and isinstance(sink, ServiceAuditSink)
            else None
        )
        t0 = time.perf_counter()
        try:
            result = await run_service_call(service, self._caller, method, *args, scope=scope)
            self._span("call", t0)
        except BaseException:
            if events:  # a refusal is recorded before it is answered
                self._audit_future = AUDIT_POOL.submit(_post_all, sink, events)
                await self._audit_done()
            raise
        if events:
            self._audit_future = AUDIT_POOL.submit(_post_all, sink, events)
            self.audit_pending = self._audit_done
        return result

    async def _audit_done(self) -> None:
        """Wait for this request's events (the routes call it before writing the answer)."""
        fut, self._audit_future, self.audit_pending = self._audit_future, None, None
        if fut is None:
            return
        t0 = time.perf_counter()
        try:
            await asyncio.wrap_future(fut)
        except AtomscaleError as e:
            raise web.HTTPError(http_status(e), str(e), reason=_reason(e)) from None
        finally:
            self._span("audit_wait", t0)

    def _span(self, name: str, t0: float) -> None:
        """Note how long a step of this request took (logged at debug level when it ends)."""
        if log.isEnabledFor(logging.DEBUG):
            self._spans = self._spans or {}
            self._spans[name] = (time.perf_counter() - t0) * 1000

    def on_finish(self) -> None:
        """Log the request's steps at debug level: token resolution, the service call (read
        and audit collection), the wait for the audit post after encoding, and the total."""
        if self._spans is not None:
            steps = ", ".join(f"{k} {v:.1f} ms" for k, v in self._spans.items())
            total = self.request.request_time() * 1000
            log.debug(
                "%s %s: %s, total %.1f ms", self.request.method, self.request.path, steps, total
            )
        super().on_finish()

    def flush(self, include_footers: bool = False):
        """Send what was written, never before this request's events are recorded (a path that
        did not wait for them waits here)."""
        fut, self._audit_future, self.audit_pending = self._audit_future, None, None
        if fut is not None:
            try:
                fut.result()
            except AtomscaleError as e:
                raise web.HTTPError(http_status(e), str(e), reason=_reason(e)) from None
        return super().flush(include_footers)


class DataServiceApp(ServiceApp):
    """The data server's service runtime: the REST routes, the org, the service holder."""

    def __init__(self, org: str | None = None, holder: OrgServiceHolder | None = None):
        self.org = org or os.environ.get("ATOMSCALE_ORG", "")
        self.holder = holder or OrgServiceHolder()
        super().__init__(
            data_service_name(self.org), host_handlers(DataApiHandler, API_PREFIX.lstrip("/"))
        )

    def make_app(self, vault=None, hub_auth=None) -> web.Application:
        """The Tornado application; no vault (this service holds no root key)."""
        app = super().make_app(vault=vault, hub_auth=hub_auth, need_vault=False)
        app.settings.update(org=self.org, holder=self.holder, audit=self._audit_denial)
        return app

    def _audit_denial(self, caller, action, outcome, **detail) -> None:
        try:
            self.holder.get().access.audit().record(caller, action, outcome, **detail)
        except AtomscaleError as e:
            log.warning("could not audit %s %s of %s: %s", action, outcome, caller, e)

    def run(self) -> None:
        """Warm the org's service in a thread, then listen until SIGTERM."""
        threading.Thread(target=self.holder.warm, daemon=True, name="atomscale-warm").start()
        super().run()


def main() -> None:
    """Run the data server of ``$ATOMSCALE_ORG`` (started by the hub)."""
    _env("ATOMSCALE_ORG")
    DataServiceApp().run()


if __name__ == "__main__":
    main()
