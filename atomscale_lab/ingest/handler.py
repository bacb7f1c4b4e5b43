"""The base of the ingest service's handlers (its own API and the Atomscale-compatible one)."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from tornado import web

from atomscale_lab.errors import AtomscaleError, ValidationError, http_status
from atomscale_lab.ingest.apikeys import ApiKeyStore, Throttled
from atomscale_lab.ingest.core import IngestCore
from atomscale_lab.ingest.guard import ConnectionLimits, client_address

log = logging.getLogger("atomscale_lab.ingest")

DEFAULT_MAX_DECODED = 64 * 1024 * 1024
"""Largest decoded size of one Arrow batch (the bytes its columns take once decompressed)."""


class IngestHandler(web.RequestHandler):
    """Turns ``atomscale_lab.errors`` into JSON errors; runs blocking work in the pool.

    Every request takes a slot of its client address (and, once authenticated, of its key) in
    the app's :class:`ConnectionLimits`, given back when the request ends or its connection
    closes.
    """

    def initialize(
        self,
        core: IngestCore,
        keys: ApiKeyStore,
        pool: ThreadPoolExecutor,
        max_body: int,
        limits: ConnectionLimits | None = None,
        trusted_proxies=(),
        max_decoded: int = DEFAULT_MAX_DECODED,
    ):
        """Take the service's core, key store, worker pool and limits (from the route)."""
        self.core, self.keys, self.pool, self.max_body = core, keys, pool, max_body
        self.limits, self.trusted_proxies = limits, trusted_proxies
        self.max_decoded = max_decoded
        self._slots: list[tuple[str, str]] = []

    @property
    def client(self) -> str:
        """The client's address: the socket's peer unless that is a trusted proxy."""
        return client_address(
            self.request.remote_ip or "unknown",
            self.request.headers.get("X-Forwarded-For"),
            self.trusted_proxies,
        )

    def _enter(self, kind: str, ident: str) -> None:
        if self.limits is not None:
            self.limits.enter(kind, ident)
            self._slots.append((kind, ident))

    def _leave_all(self) -> None:
        while self._slots:
            self.limits.leave(*self._slots.pop())

    def prepare(self):
        """Take the client's slot (429 past the cap)."""
        try:
            self._enter("client", self.client)
        except AtomscaleError as e:
            self.fail(e)

    def on_finish(self):
        """Give the request's slots back."""
        self._leave_all()

    def on_connection_close(self):
        """Give the slots back when the client goes away mid-request."""
        self._leave_all()
        super().on_connection_close()

    def set_default_headers(self):
        """JSON, never cached, HTTPS only."""
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Strict-Transport-Security", "max-age=31536000")

    async def run(self, fn, *args, **kw):
        """Run blocking ``fn`` in the worker pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kw))

    async def key(self, scope: str | None, action: str):
        """Authenticate the bearer key (audited, throttled)."""
        auth = self.request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        info = await self.run(
            self.keys.authenticate, token, client=self.client, scope=scope, action=action
        )
        self._enter("key", info.prefix)
        return info

    def fail(self, exc: AtomscaleError):
        """Finish with the status the exception stands for."""
        status = http_status(exc)
        body = {"message": str(exc), "reason": type(exc).__name__}
        for attr in ("field", "row"):
            if getattr(exc, attr, None) is not None:
                body[attr] = getattr(exc, attr)
        if isinstance(exc, Throttled) or getattr(exc, "retry_after", None):
            self.set_header("Retry-After", str(exc.retry_after))
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="atomscale-ingest"')
        if status >= 500:
            # a retryable 503 (another replica owns the org, the store is behind) is expected
            # behaviour, not a failure of the service
            level = logging.WARNING if getattr(exc, "retry_after", None) else logging.ERROR
            log.log(
                level,
                "ingest request %s %s failed: %s",
                self.request.method,
                self.request.path,
                exc,
            )
        self.set_status(status)
        self.finish(json.dumps(body))

    def write_error(self, status_code, **kwargs):
        """Answer an error as JSON (``{"error", "message"}``)."""
        self.finish(json.dumps({"message": self._reason, "reason": "HTTPError"}))

    def json_body(self, body: bytes | None = None) -> dict:
        """The request body as a JSON object, or a ``ValidationError``."""
        try:
            doc = json.loads((self.request.body if body is None else body) or b"{}")
        except ValueError as e:
            raise ValidationError(f"the body is not valid JSON: {e}", field="body") from None
        if not isinstance(doc, dict):
            raise ValidationError("the body must be a JSON object", field="body")
        return doc

    def reply(self, doc: dict, status: int = 200):
        """Finish with a JSON document."""
        self.set_status(status)
        self.finish(json.dumps(doc, default=str))
