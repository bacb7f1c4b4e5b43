"""The one runtime of atomscale-lab's HTTP services: the hub services (``atomscale-keys``,
``atomscale-context``, the per-org data servers) and the ingest service.

- :class:`JsonHandler`: the base of their handlers. JSON answers no cache keeps; a domain error
  (:mod:`atomscale_lab.errors`) is answered with its status
  (:func:`~atomscale_lab.errors.http_status`) and a ``{"message", "reason"}`` body (plus
  ``field``/``row`` where the error names them); expected errors are logged in one line.
- :func:`server_tls`: the TLS context of a listening service, chosen once for all of them.
- :func:`listen`: the HTTP(S) server on a TCP address and, optionally, a Unix socket.
- :func:`serve_until_signal`: SIGTERM/SIGINT stops accepting, drains the open requests, then runs
  the service's own clean-up (the ingest service flushes its WAL there).

Authentication is not here: the hub services resolve hub tokens
(:mod:`atomscale_lab.hub.services.base`), the ingest service its API keys. This layer imports only
the base modules, so the vault and the kernel client stay free of Tornado.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from tornado import web
from tornado.httpserver import HTTPServer

from atomscale_lab.errors import AtomscaleError, ValidationError, http_status
from atomscale_lab.tls import HubSsl, ensure_self_signed, server_context

log = logging.getLogger("atomscale.service")


def _exception(kwargs: dict) -> BaseException | None:
    return kwargs.get("exc_info", (None, None, None))[1]


class JsonHandler(web.RequestHandler):
    """Base handler of every service: JSON in and out, domain errors mapped to their status."""

    logger = log
    """Where a subclass's expected errors are logged (one line each)."""

    def set_default_headers(self):
        """JSON answers that no cache keeps."""
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self):
        """Token- or key-authenticated API: no cookies are accepted, so no XSRF check applies."""

    def send_error(self, status_code=500, **kwargs):
        """Answer a domain error with the status it stands for."""
        exc = _exception(kwargs)
        if isinstance(exc, AtomscaleError):
            status_code = http_status(exc)
        super().send_error(status_code, **kwargs)

    def error_body(self, status_code: int, exc: BaseException | None) -> dict:
        """``{"message", "reason"}`` (and ``field``/``row`` of a validation error): the domain
        error's own message, an ``HTTPError``'s log message, else the status's reason phrase."""
        if isinstance(exc, AtomscaleError):
            message = str(exc)
        else:
            message = getattr(exc, "log_message", None) or self._reason
        body = {"message": message, "reason": self._reason}
        for attr in ("field", "row"):
            if getattr(exc, attr, None) is not None:
                body[attr] = getattr(exc, attr)
        return body

    def write_error(self, status_code, **kwargs):
        """Finish with :meth:`error_body` as JSON."""
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_body(status_code, _exception(kwargs)), default=str))

    def fail(self, exc: AtomscaleError) -> None:
        """Answer ``exc`` now (for handlers that catch domain errors themselves, e.g. in
        ``prepare`` before a body is read)."""
        self._log_expected(exc)
        self.send_error(exc_info=(type(exc), exc, exc.__traceback__))

    def log_exception(self, typ, value, tb):
        """Expected errors are one line; unexpected ones keep their traceback."""
        if isinstance(value, web.HTTPError | AtomscaleError):
            self._log_expected(value)
        else:
            super().log_exception(typ, value, tb)

    def _log_expected(self, error: Exception) -> None:
        # a server-side refusal (integrity, keys unavailable) is an error for whoever runs it;
        # a retryable one (another replica owns the org, the store is behind) is expected
        status = getattr(error, "status_code", None) or http_status(error)
        if status < 500:
            level = logging.INFO
        elif getattr(error, "retry_after", None):
            level = logging.WARNING
        else:
            level = logging.ERROR
        self.logger.log(
            level,
            "%s %s -> %s: %s",
            self.request.method,
            self.request.path,
            status,
            error,
        )

    def json_body(self, body: bytes | None = None) -> dict:
        """The request body (or ``body``) as a JSON object; a ``ValidationError`` (400) if it is
        not one."""
        try:
            doc = json.loads((self.request.body if body is None else body) or b"{}")
        except ValueError as e:
            raise ValidationError(f"the body is not valid JSON: {e}", field="body") from None
        if not isinstance(doc, dict):
            raise ValidationError("the body must be a JSON object", field="body")
        return doc


def server_tls(
    hub: HubSsl | None = None,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    self_signed_dir: str | Path | None = None,
) -> ssl.SSLContext | None:
    """The TLS context of a listening service, the first that applies of:

    - ``certfile`` (and ``keyfile``, default the same file): the deployment's own certificate;
    - ``hub`` with a certificate: JupyterHub's ``internal_ssl``, mutual TLS (only clients
      holding a certificate of the hub's internal CA, the proxy and the hub, connect);
    - ``self_signed_dir``: a self-signed certificate kept there (made when missing);
    - otherwise None: plain HTTP.
    """
    if certfile:
        return server_context(Path(certfile), Path(keyfile or certfile))
    if hub is not None and hub.has_cert:
        return hub.server_context()
    if self_signed_dir is not None:
        return server_context(*ensure_self_signed(self_signed_dir))
    return None


def listen(
    app: web.Application,
    port: int,
    host: str = "127.0.0.1",
    *,
    tls: ssl.SSLContext | None = None,
    unix_socket: str | None = None,
    **server_options,
) -> list[HTTPServer]:
    """Serve ``app`` on ``host:port`` (TLS with ``tls``; ``server_options`` go to Tornado's
    ``HTTPServer``) and, with ``unix_socket``, on that socket too (plain HTTP with Tornado's
    defaults: anyone may connect, the handlers identify the peer's Unix account). Returns the
    servers, TCP first."""
    server = HTTPServer(app, ssl_options=tls, **server_options)
    server.listen(port, address=host)
    servers = [server]
    if unix_socket:
        from tornado.netutil import bind_unix_socket

        local = HTTPServer(app)
        local.add_socket(bind_unix_socket(unix_socket, mode=0o666))
        servers.append(local)
    return servers


async def serve_until_signal(
    servers: Sequence[HTTPServer],
    name: str,
    *,
    on_stop: Callable[[], None] | None = None,
    drain_seconds: float | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; then stop accepting, wait for the open requests (at most
    ``drain_seconds``, None: as long as they take) and call ``on_stop``. ``ready`` is set once
    the signal handlers are in place."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("%s stopping", name)
    for server in servers:
        server.stop()
    for server in servers:
        try:
            await asyncio.wait_for(server.close_all_connections(), drain_seconds)
        except TimeoutError:
            log.warning("%s: requests still open after %ss, leaving them", name, drain_seconds)
    if on_stop is not None:
        on_stop()
