"""The HTTPS ingest service (Tornado): a thin layer over :class:`~.core.IngestCore`.

Endpoints (``Authorization: Bearer ask_…`` on all but ``health``; the org comes from the key;
a domain error is answered by the runtime, :mod:`atomscale_lab.runtime`, with its status):

- ``POST /streams`` ``{"run_id", "tool", "category", "project"?, "sample"?, "method"?,
  "operator"?}`` → 201 stream
- ``POST /streams/{id}/batches`` JSON ``{"batch_id", "rows": [...]}`` or an Arrow IPC stream body
  (``Content-Type: application/vnd.apache.arrow.stream``) with ``X-Batch-Id`` → 200 ack
- ``POST /streams/{id}/finalize`` → stream; ``GET /streams/{id}`` → stream; ``GET /health``

Under attack: a batch request is authenticated from its headers before its body is read (401
without buffering it); concurrent requests are capped per client and per key (429); an Arrow body's
decoded size is read from its message headers before anything is decompressed (413); the client
address (throttle, audit) is the socket's peer unless the deployment names trusted proxies.

Run it with ``atomscale-lab ingest serve`` or ``python -m atomscale_lab.ingest.service``; as a
JupyterHub-managed service it reads ``JUPYTERHUB_SERVICE_URL``/``JUPYTERHUB_SERVICE_PREFIX``.
:func:`make_app` is the importable application factory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
from tornado import web

from atomscale_lab.errors import AtomscaleError, NotFound, ValidationError
from atomscale_lab.ingest.apikeys import ApiKeyStore
from atomscale_lab.ingest.core import BatchTooLarge, IngestCore
from atomscale_lab.ingest.guard import ConnectionLimits, check_ipc, parse_networks
from atomscale_lab.ingest.handler import DEFAULT_MAX_DECODED, IngestHandler
from atomscale_lab.ingest.options import add_serve_arguments
from atomscale_lab.runtime import listen, serve_until_signal, server_tls
from atomscale_lab.schema import ARROW_STREAM
from atomscale_lab.tls import hub_ssl

log = logging.getLogger("atomscale_lab.ingest")

DEFAULT_MAX_BODY = 64 * 1024 * 1024
SMALL_BODY = 64 * 1024
"""A refused batch request with at most this many body bytes is drained before the answer."""


class HealthHandler(IngestHandler):
    """``GET /health``: liveness, without authentication and without information."""

    def get(self):
        """Answer ``{"status": "ok"}``."""
        self.reply({"status": "ok"})


class StreamsHandler(IngestHandler):
    """``POST /streams``: open or resume a stream."""

    async def post(self):
        """Open a stream; the run record becomes ``active``."""
        doc = self.json_body()
        key = await self.key(None, "stream.open")
        fields = {k: doc.get(k) for k in ("project", "sample", "method", "operator")}
        extra = set(doc) - {"run_id", "tool", "category", *fields}
        if extra:
            raise ValidationError(f"unknown field {sorted(extra)[0]!r}", field=sorted(extra)[0])
        st = await self.run(
            self.core.open_stream,
            key,
            doc.get("run_id"),
            doc.get("tool"),
            doc.get("category"),
            **fields,
        )
        self.reply(st, 201)


class StreamHandler(IngestHandler):
    """``GET /streams/{id}``: the state of a stream."""

    async def get(self, stream_id):
        """Return the stream (rows accepted, rows flushed, status)."""
        key = await self.key(None, "stream.get")
        self.reply(await self.run(self.core.stream, key, stream_id))


class FinalizeHandler(IngestHandler):
    """``POST /streams/{id}/finalize``: flush and complete a stream."""

    async def post(self, stream_id):
        """Flush the stream's rows and mark it (and, if last, its run) complete."""
        key = await self.key(None, "stream.finalize")
        self.reply(await self.run(self.core.finalize, key, stream_id))


@web.stream_request_body
class BatchesHandler(IngestHandler):
    """``POST /streams/{id}/batches``: one batch, as JSON or Arrow IPC."""

    async def prepare(self):
        """Authenticate from the headers, then start collecting the body.

        Tornado reads no body before this returns: a request without a valid key is answered
        401 (and its connection closed) without its body being read. An oversized body is read
        and dropped, then refused with 413.
        """
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_big = False
        self._key = None
        self._refused: AtomscaleError | None = None
        try:
            self._enter("client", self.client)
            self._key = await self.key(None, "stream.batch")
        except AtomscaleError as e:
            length = self.request.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) <= SMALL_BODY:
                # A small body is read and dropped before answering: closing with unread bytes
                # would reset the connection and the client would never see the 401.
                self.request.connection.set_max_body_size(SMALL_BODY)
                self._refused = e
            else:
                self.fail(e)  # answered now; the body is never read (the connection closes)
            return
        # Only this endpoint takes large bodies: up to 4x the limit is read (and dropped) so
        # that the client gets a 413 rather than a closed connection.
        self.request.connection.set_max_body_size(self.max_body * 4)
        length = self.request.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_body:
            self._too_big = True

    def data_received(self, chunk):
        """Accumulate the body up to the limit (nothing of a refused request is kept)."""
        if self._refused is not None or self._finished:
            return
        self._size += len(chunk)
        if self._size > self.max_body:
            self._too_big = True
            self._chunks = []
        elif not self._too_big:
            self._chunks.append(chunk)

    async def post(self, stream_id):
        """Validate, write to the WAL (fsynced), acknowledge."""
        if self._refused is not None:
            raise self._refused
        if self._too_big:
            raise BatchTooLarge(
                f"the batch is larger than {self.max_body} bytes; send smaller batches",
                field="body",
            )
        body = b"".join(self._chunks)
        self._chunks = []
        self.reply(await self.run(self._accept, self._key, stream_id, body))

    def _accept(self, key, stream_id, body: bytes):
        digest = hashlib.sha256(body).hexdigest()
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype == ARROW_STREAM:
            batch_id = self.request.headers.get("X-Batch-Id")
            if not batch_id:
                raise ValidationError(
                    "an Arrow batch needs the X-Batch-Id header", field="batch_id"
                )
            # The decoded size comes from the message headers: refuse a bomb before inflating it.
            check_ipc(body, max_bytes=self.max_decoded, max_rows=self.core.max_batch_rows)
            try:
                data = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
            except (pa.ArrowInvalid, OSError) as e:
                raise ValidationError(
                    f"the body is not an Arrow IPC stream: {e}", field="body"
                ) from None
        else:
            doc = self.json_body(body)
            batch_id, data = doc.get("batch_id"), doc.get("rows")
            extra = set(doc) - {"batch_id", "rows"}
            if extra:
                raise ValidationError(f"unknown field {sorted(extra)[0]!r}", field=sorted(extra)[0])
            if not isinstance(data, list):
                raise ValidationError("'rows' must be a list of objects", field="rows")
        return self.core.add_batch(key, stream_id, batch_id, data, digest=digest)


def make_app(
    core: IngestCore,
    keys: ApiKeyStore,
    *,
    base_url: str = "/",
    max_body: int = DEFAULT_MAX_BODY,
    pool: ThreadPoolExecutor | None = None,
    max_decoded: int = DEFAULT_MAX_DECODED,
    limits: ConnectionLimits | None = None,
    trusted_proxies=(),
) -> web.Application:
    """The Tornado application (importable, e.g. for a JupyterHub-managed service).

    ``limits``: concurrent requests per client and per key (default 16 and 32);
    ``trusted_proxies``: addresses/networks whose ``X-Forwarded-For`` is believed (default none:
    the client is the socket's peer); ``max_decoded``: largest decoded size of an Arrow batch.
    The handler arguments are in ``app.settings["ingest_handler_args"]`` for added routes.
    """
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    pool = pool or ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest")
    kw = {
        "core": core,
        "keys": keys,
        "pool": pool,
        "max_body": max_body,
        "limits": limits if limits is not None else ConnectionLimits(),
        "trusted_proxies": parse_networks(trusted_proxies),
        "max_decoded": max_decoded,
    }
    sid = r"(st_[0-9a-f]{16})"
    from atomscale_lab.ingest.compat import (
        routes as sdk_routes,  # the Atomscale-compatible API (docs/atomscale-sdk.md)
    )

    return web.Application(
        [
            *sdk_routes(base, kw),
            (base + "health", HealthHandler, kw),
            (base + "streams", StreamsHandler, kw),
            (base + f"streams/{sid}", StreamHandler, kw),
            (base + f"streams/{sid}/batches", BatchesHandler, kw),
            (base + f"streams/{sid}/finalize", FinalizeHandler, kw),
        ],
        default_handler_class=_NotFound,
        default_handler_args=kw,
        xsrf_cookies=False,
        ingest_handler_args=kw,
    )


class _NotFound(IngestHandler):
    def prepare(self):
        self.fail(NotFound("no such endpoint"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m atomscale_lab.ingest.service`` (same options as the CLI)."""
    return add_serve_arguments(
        argparse.ArgumentParser(
            prog="atomscale-ingest", description="The atomscale-lab ingest service."
        )
    )


async def serve(args, vault=None, ready=None) -> None:
    """Run the service until SIGTERM/SIGINT (the services' runtime, :mod:`atomscale_lab.runtime`);
    flush the WAL on the way out."""
    from atomscale_lab.ingest.apikeys import FailureThrottle, for_vault
    from atomscale_lab.vault.facade import Vault

    vault = vault or Vault()
    hub_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    parsed = urlparse(hub_url) if hub_url else None
    host = args.host or (parsed.hostname if parsed else None) or "127.0.0.1"
    port = args.port or (parsed.port if parsed and parsed.port else 8443)
    base_url = args.base_url or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    core = IngestCore(
        vault,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        flush_interval=args.flush_interval,
        idle_timeout=args.idle_timeout,
        compact_interval=args.compact_interval,
    )
    keys = for_vault(vault, throttle=FailureThrottle(max_failures=args.max_failures))
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest")
    trusted = list(args.trusted_proxy or [])
    trusted += parse_networks(os.environ.get("ATOMSCALE_INGEST_TRUSTED_PROXIES", ""))
    if args.behind_proxy or hub_url:
        # The hub's proxy (or the named local one) connects from this machine and appends the
        # client it saw to X-Forwarded-For.
        trusted += ["127.0.0.0/8", "::1/128"]
    app = make_app(
        core,
        keys,
        base_url=base_url,
        max_body=args.max_body,
        pool=pool,
        max_decoded=args.max_decoded,
        trusted_proxies=[str(n) for n in trusted],
        limits=ConnectionLimits(args.max_client_connections, args.max_key_connections),
    )
    ssl_ctx = None
    if args.plain_http:
        if not _is_loopback(host):
            raise SystemExit(
                f"--http/--plain-http serves plain HTTP on loopback addresses only "
                f"(127.0.0.1, ::1, localhost), not {host!r}: put a TLS-terminating "
                "proxy in front, or serve HTTPS"
            )
        log.warning("serving plain HTTP on %s: only behind a TLS-terminating proxy", host)
    else:
        # The named certificate; else JupyterHub's internal_ssl one (then only clients with a
        # certificate of the hub's internal CA, the proxy, may connect); else a self-signed one.
        ssl_ctx = server_tls(
            hub_ssl(),
            certfile=args.certfile,
            keyfile=args.keyfile,
            self_signed_dir=core.state_dir / "tls",
        )
    # xheaders stays off: Tornado would believe a client-sent X-Real-Ip. The handlers read
    # X-Forwarded-For themselves, and only from trusted proxies.
    servers = listen(
        app,
        port,
        host,
        tls=ssl_ctx,
        xheaders=False,
        max_body_size=1 << 20,  # JSON requests; see batches
        idle_connection_timeout=300,
        # a client that sends headers and never its body would hold its slots for ever
        body_timeout=args.body_timeout,
    )
    core.start()
    scheme = "http" if args.plain_http else "https"
    log.info("atomscale ingest listening on %s://%s:%s%s", scheme, host, port, base_url)

    def close() -> None:
        # open requests have drained: flush the WAL, then let go of the key store
        log.info("atomscale ingest stopping: flushing the WAL")
        pool.shutdown(wait=True)
        core.close()
        keys.close()

    await serve_until_signal(servers, "atomscale ingest", on_stop=close, ready=ready)


def main(argv=None) -> int:
    """``python -m atomscale_lab.ingest.service``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except AtomscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
