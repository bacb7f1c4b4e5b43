"""REST handlers of the data API (``<base_url>/atomscale/api/v1/...``, docs/rest-api.md).

Thin on purpose: each route authenticates, authorizes against the ``atomscale`` resource, hands the
request to :class:`atomscale_lab.server.service.OrgService` on a worker thread (decryption must not
block the
event loop) and turns :class:`~atomscale_lab.errors.AtomscaleError` into an HTTP status with
:func:`~atomscale_lab.errors.http_status`.

The route classes (:data:`ROUTES`) hold only the request logic and are host-agnostic: they need a
host base that provides ``username``, ``call(OrgService.<method>, *args)``, ``query_params()``,
``current_user`` and ``authorizer`` (besides Tornado's request/response API). Two hosts exist:

- :class:`JupyterApiHandler`: the jupyter-server extension (single-user ``atomscale-lab lab ORG``);
- ``atomscale_lab.hub.services.data.DataApiHandler``: the per-org data server on JupyterHub, where
  the identity is the caller's hub token and permissions come from its filtered scopes.

:func:`host_handlers` combines each route with a host base. In hub mode a user's server holds no
key and does not load this extension: ``atomscale_lab.hub.forward`` passes the same URLs through
to the org's data server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources

import pyarrow as pa
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.ioloop import IOLoop

from atomscale_lab.errors import AtomscaleError, IntegrityError, http_status
from atomscale_lab.schema import ARROW_STREAM
from atomscale_lab.server.catalog import frame_json, rows_to_records
from atomscale_lab.server.service import OrgService

AUTH_RESOURCE = "atomscale"
API_PREFIX = "/atomscale/api/v1/"
FAST_METHODS = frozenset({OrgService.runs_page, OrgService.facets})
"""``OrgService`` methods answered from in-memory caches (see :func:`run_service_call`)."""
_FAST_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="atomscale-fast")
_CHUNK = 4 << 20
ARROW_CODECS = ("zstd", "lz4")
"""Buffer compressions of an Arrow IPC stream a client may ask for with a ``compression``
parameter of its ``Accept`` media type (``application/vnd.apache.arrow.stream; compression=zstd``).
Only on request: the lab extension's Arrow reader (apache-arrow JS) reads uncompressed streams."""


class AtomscaleHandler:
    """Base of every route: query formats and frame responses, on any host base.

    The host base (listed after the route class) provides ``username``, ``call``,
    ``query_params``, ``current_user``, ``authorizer`` and Tornado's ``RequestHandler``.
    """

    auth_resource = AUTH_RESOURCE

    def set_default_headers(self) -> None:
        """Decrypted data must not be kept in browser or proxy caches."""
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def wants_arrow(self, params: dict) -> bool:
        """``format=arrow`` (or an Accept header asking for an Arrow stream)."""
        fmt = params.get("format", "")
        if fmt not in ("", "json", "arrow"):
            raise web.HTTPError(400, f"format must be json or arrow, not {fmt!r}")
        if fmt:
            return fmt == "arrow"
        return ARROW_STREAM in (self.request.headers.get("Accept") or "")

    def arrow_options(self) -> pa.ipc.IpcWriteOptions | None:
        """IPC write options with the buffer compression the ``Accept`` header asks for (None:
        uncompressed); the answer names it in ``X-Arrow-Compression``."""
        codec = arrow_compression(self.request.headers.get("Accept") or "")
        if codec is None:
            return None
        self.set_header("X-Arrow-Compression", codec)
        return pa.ipc.IpcWriteOptions(compression=codec)

    async def audit_recorded(self) -> None:
        """Wait until the audit events of this request are recorded (raises the HTTP error of a
        failed append: an unrecorded answer is not sent). Hosts that record a request's events
        while its answer is being encoded leave an awaitable in ``audit_pending``; others have
        recorded them already."""
        pending = getattr(self, "audit_pending", None)
        if pending is not None:
            await pending()

    async def finish_json(self, doc) -> None:
        """Send a JSON document."""
        self.set_header("Content-Type", "application/json")
        body = json.dumps(doc, allow_nan=False, default=str)
        await self.audit_recorded()
        await self.finish(body)

    async def finish_arrow(self, table: pa.Table, headers: dict | None = None) -> None:
        """Send ``table`` as an Arrow IPC stream, in chunks."""
        chunks = await IOLoop.current().run_in_executor(
            None, _ipc_chunks, table, self.arrow_options()
        )
        await self.audit_recorded()
        self.set_header("Content-Type", ARROW_STREAM)
        self.set_header("Content-Length", str(sum(len(c) for c in chunks)))
        self.set_header("X-Rows", str(table.num_rows))
        for k, v in (headers or {}).items():
            self.set_header(k, str(v))
        for c in chunks:
            self.write(c)
            await self.flush()
        await self.finish(set_content_type=ARROW_STREAM)

    async def finish_frame(self, table: pa.Table, params: dict) -> None:
        """Send a frame as JSON ``{columns, data}`` or, with ``format=arrow``, an Arrow stream."""
        if self.wants_arrow(params):
            await self.finish_arrow(table)
        else:
            doc = await IOLoop.current().run_in_executor(None, frame_json, table)
            await self.finish_json(doc)


async def run_service_call(
    service: OrgService, user, method: Callable, *args, scope: Callable | None = None
):
    """Run ``method(service, user, *args)`` on a worker thread, mapping errors to HTTP.

    ``method`` is an ``OrgService`` method (``OrgService.series``): the edge from a route to the
    service is a reference that imports, type checkers and readers can follow.

    Answers from memory (catalogue pages, facets) get their own small pool: under load they would
    otherwise queue behind file reads and decryption on the shared one. A refusal because stored
    data failed verification (:class:`~atomscale_lab.errors.IntegrityError`: a rolled-back or
    tampered log) stays a 500 ("Integrity Check Failed") and is audited once as
    ``data.integrity`` (:meth:`OrgService.refuse_integrity`). ``scope``, if given, runs the call
    on the worker thread (``scope(fn)``), e.g. to collect the audit events it records.
    """
    try:
        fn = partial(method, service, user, *args)
        if scope is not None:
            fn = partial(scope, fn)
        pool = _FAST_POOL if method in FAST_METHODS else None
        return await IOLoop.current().run_in_executor(pool, fn)
    except AtomscaleError as e:
        if isinstance(e, IntegrityError):  # stored data failed verification: audited refusal
            await IOLoop.current().run_in_executor(
                None, service.refuse_integrity, user, method.__name__, e
            )
        raise web.HTTPError(http_status(e), str(e), reason=_reason(e)) from None


def request_params(handler: web.RequestHandler) -> dict[str, str]:
    """Query parameters (the last value of each), without ``token``."""
    out = {}
    for k, values in handler.request.query_arguments.items():
        if k == "token" or not values:
            continue
        out[k] = handler.decode_argument(values[-1], name=k)
    return out


class JupyterApiHandler(ExtensionHandlerMixin, APIHandler):
    """Host base of the routes in the jupyter-server extension (single-user mode)."""

    @property
    def username(self) -> str:
        """The authenticated user's name."""
        return self.current_user.username

    def query_params(self) -> dict[str, str]:
        """Query parameters (the last value of each), without ``token``."""
        return request_params(self)

    async def call(self, method: Callable, *args):
        """Run the ``OrgService`` method ``method`` for this user on a worker thread, mapping errors
        to HTTP."""
        user = self.username
        try:
            service = self.extensionapp.get_service()
        except AtomscaleError as e:
            raise web.HTTPError(http_status(e), str(e), reason=_reason(e)) from None
        return await run_service_call(service, user, method, *args)


def _reason(e: AtomscaleError) -> str:
    if isinstance(e, IntegrityError):  # names the cause: not a bug of the server, an alarm
        return "Integrity Check Failed"
    return {
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        413: "Payload Too Large",
        503: "Service Unavailable",
    }.get(http_status(e), "Internal Server Error")


def arrow_compression(accept: str) -> str | None:
    """The codec of ``ARROW_CODECS`` an ``Accept`` header asks for on the Arrow stream type, or
    None (unknown codecs are ignored: the answer is then uncompressed, which every reader reads)."""
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() != ARROW_STREAM:
            continue
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "compression" and v.strip().strip('"').lower() in ARROW_CODECS:
                return v.strip().strip('"').lower()
    return None


def _ipc_chunks(table: pa.Table, options: pa.ipc.IpcWriteOptions | None = None) -> list[bytes]:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=65_536)
    buf = memoryview(sink.getvalue())
    return [bytes(buf[i : i + _CHUNK]) for i in range(0, len(buf), _CHUNK)] or [b""]


class StatusHandler(AtomscaleHandler):
    """``GET status``: org, user, role, key version and table sizes."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer the status document."""
        await self.finish_json(await self.call(OrgService.status))


class RunsHandler(AtomscaleHandler):
    """``GET runs``: a filtered, sorted page of the run catalogue."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer ``{total, page, per_page, runs}`` (or the page's rows as Arrow)."""
        params = self.query_params()
        arrow = self.wants_arrow(params)
        meta, rows = await self.call(OrgService.runs_page, params)
        if arrow:
            await self.finish_arrow(rows, {"X-Total-Count": meta["total"]})
        else:
            await self.finish_json({**meta, "runs": rows_to_records(rows)})


class FacetsHandler(AtomscaleHandler):
    """``GET facets``: distinct projects, instruments, methods, operators and statuses."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer the distinct values of the filterable run columns."""
        await self.finish_json(await self.call(OrgService.facets))


class ContextFacetsHandler(AtomscaleHandler):
    """``GET facets/context``: runs per material system (``context:join``, audited join)."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer ``{field, total, unlabelled, values: [{value, runs}]}``."""
        await self.finish_json(await self.call(OrgService.context_facets, self.query_params()))


class RunHandler(AtomscaleHandler):
    """``GET runs/{run_id}``: one run with its channels and metrology items."""

    @web.authenticated
    @authorized
    async def get(self, run_id):
        """Answer the run record."""
        await self.finish_json(await self.call(OrgService.run, run_id))


class _SeriesHandler(AtomscaleHandler):
    category = "process"

    async def send_series(self, run_id):
        params = self.query_params()
        self.wants_arrow(params)  # reject a bad format before reading anything
        table = await self.call(OrgService.series, run_id, self.category, params)
        await self.finish_frame(table, params)


class ProcessHandler(_SeriesHandler):
    """``GET runs/{run_id}/process``: the run's process time series (long frame)."""

    category = "process"

    @web.authenticated
    @authorized
    async def get(self, run_id):
        """Answer the frame as JSON or Arrow."""
        await self.send_series(run_id)


class ToolStateHandler(_SeriesHandler):
    """``GET runs/{run_id}/tool_state``: the run's tool readback and setpoints (long frame)."""

    category = "tool_state"

    @web.authenticated
    @authorized
    async def get(self, run_id):
        """Answer the frame as JSON or Arrow."""
        await self.send_series(run_id)


class MetrologyHandler(AtomscaleHandler):
    """``GET metrology``: a page of metrology items."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer ``{total, page, per_page, items}`` or the items as Arrow."""
        params = self.query_params()
        arrow = self.wants_arrow(params)
        meta, rows = await self.call(OrgService.metrology, params)
        if arrow:
            await self.finish_arrow(rows, {"X-Total-Count": meta["total"]})
        else:
            await self.finish_json({**meta, "items": rows_to_records(rows)})

    @web.authenticated
    @authorized
    async def post(self):
        """Store derived metrology rows (an Arrow IPC body); answer 201 with what was written."""
        doc = await self.call(
            OrgService.write_metrology,
            self.query_params(),
            self.request.body,
            self.request.headers.get("Content-Type"),
        )
        self.set_status(201)
        await self.finish_json(doc)


class MetrologyItemHandler(AtomscaleHandler):
    """``GET metrology/{item_id}``: one item with its spectrum and peaks."""

    @web.authenticated
    @authorized
    async def get(self, item_id):
        """Answer the item as a JSON object or a one-row Arrow stream."""
        params = self.query_params()
        if set(params) - {"format"}:
            raise web.HTTPError(400, f"unknown parameter {sorted(set(params) - {'format'})[0]!r}")
        arrow = self.wants_arrow(params)
        table = await self.call(OrgService.metrology_item, item_id)
        if arrow:
            await self.finish_arrow(table)
        else:
            await self.finish_json(rows_to_records(table)[0])


class TableHandler(AtomscaleHandler):
    """``GET tables/{category}/{name}``: a whole table (or some runs of it) as an Arrow stream."""

    @web.authenticated
    @authorized
    async def get(self, category, name):
        """Stream the table batch by batch; ``format=json`` is refused (too large for JSON)."""
        params = self.query_params()
        if not self.wants_arrow({"format": params.get("format") or "arrow"}):
            raise web.HTTPError(400, "tables are served as Arrow only: use format=arrow")
        schema, batches, failed = await self.call(OrgService.table, f"{category}/{name}", params)
        await self.stream_arrow(schema, batches, failed)

    async def stream_arrow(self, schema, batches, failed) -> None:
        """Send batches as they are decrypted: the next batch is read and encoded on a worker
        thread while the previous one is being written to the socket."""
        loop = IOLoop.current()
        sink = _Chunks()
        writer = pa.ipc.new_stream(sink, schema, options=self.arrow_options())
        state = {"rows": 0}

        def produce() -> list[bytes] | None:
            batch = next(batches, None)
            if batch is None:
                writer.close()
                return None
            writer.write_batch(batch)
            state["rows"] += batch.num_rows
            return sink.take()

        started = False
        try:
            pending = loop.run_in_executor(None, produce)
            while True:
                try:
                    chunks = await pending
                except (OSError, pa.ArrowException, ValueError) as e:
                    if not started:  # nothing sent yet: a clean error status is still possible
                        raise web.HTTPError(
                            500, "a data file failed decryption or decoding (tampered or corrupt)"
                        ) from e
                    raise
                if chunks is None:
                    break
                pending = loop.run_in_executor(None, produce)
                if not started:
                    await self.audit_recorded()
                    self.set_header("Content-Type", ARROW_STREAM)
                    started = True
                for chunk in chunks:
                    self.write(chunk)
                await self.flush()
            if not started:
                await self.audit_recorded()
                self.set_header("Content-Type", ARROW_STREAM)
            for chunk in sink.take():  # the end-of-stream marker
                self.write(chunk)
        except BaseException as e:
            await loop.run_in_executor(None, failed, state["rows"], e)
            raise
        # APIHandler.finish() sets JSON unless told otherwise: an empty table is never flushed
        # before it, so its Arrow stream would go out labelled application/json.
        await self.finish(set_content_type=ARROW_STREAM)


class _Chunks:
    """A write-only file object collecting what the Arrow IPC writer produces."""

    closed = False

    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: chunks are taken by the handler."""

    def close(self) -> None:
        """Closing the IPC writer does not close the HTTP response."""

    def take(self) -> list[bytes]:
        """The chunks written since the last call."""
        parts, self._parts = self._parts, []
        return parts


class AuditHandler(AtomscaleHandler):
    """``GET audit``: audit events (all for org admins, own for others)."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer ``{events, limit, offset, scope}``."""
        await self.finish_json(await self.call(OrgService.audit_events, self.query_params()))


class ContextJoinHandler(AtomscaleHandler):
    """``POST context/join``: materials-system labels of some runs, from the context service."""

    @web.authenticated
    @authorized
    async def post(self):
        """Answer ``{labels: [{run_id, <field>: ...}]}``."""
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "the body is not valid JSON") from None
        await self.finish_json(await self.call(OrgService.context_join, body))


class OpenAPIHandler(AtomscaleHandler):
    """``GET openapi.json``: the checked-in description of this API."""

    @web.authenticated
    @authorized
    async def get(self):
        """Answer the OpenAPI document (to members of the org)."""
        await self.call(OrgService.describe)
        await self.finish_json(openapi_spec())


class ConfigHandler(AtomscaleHandler):
    """``GET``/``PUT``/``PATCH config``: the org's workspace configuration."""

    def json_body(self):
        """The request body as JSON (400 if it is not)."""
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "the body is not valid JSON") from None

    @web.authenticated
    @authorized
    async def get(self):
        """Answer ``{config, updated}``."""
        await self.finish_json(await self.call(OrgService.config))

    @web.authenticated
    @authorized
    async def put(self):
        """Replace the configuration (settings left out return to their defaults)."""
        await self.finish_json(await self.call(OrgService.set_config, self.json_body(), True))

    @web.authenticated
    @authorized
    async def patch(self):
        """Change only the settings in the body (``null`` restores a default)."""
        await self.finish_json(await self.call(OrgService.set_config, self.json_body(), False))


class RheedHandler(AtomscaleHandler):
    """``GET runs/{run_id}/rheed``: growth windows, layer periods and rates, and the trace."""

    @web.authenticated
    @authorized
    async def get(self, run_id):
        """Answer the analysis as JSON."""
        await self.finish_json(await self.call(OrgService.rheed, run_id, self.query_params()))


def openapi_spec() -> dict:
    """The checked-in OpenAPI document."""
    return json.loads(resources.files("atomscale_lab.server").joinpath("openapi.json").read_text())


ROUTES: list[tuple[str, type[AtomscaleHandler]]] = [
    ("status", StatusHandler),
    ("runs", RunsHandler),
    ("facets", FacetsHandler),
    ("facets/context", ContextFacetsHandler),
    ("runs/{run_id}", RunHandler),
    ("runs/{run_id}/process", ProcessHandler),
    ("runs/{run_id}/tool_state", ToolStateHandler),
    ("metrology", MetrologyHandler),
    ("metrology/{item_id}", MetrologyItemHandler),
    ("tables/{category}/{name}", TableHandler),
    ("audit", AuditHandler),
    ("context/join", ContextJoinHandler),
    ("openapi.json", OpenAPIHandler),
    ("config", ConfigHandler),
    ("runs/{run_id}/rheed", RheedHandler),
]
"""(path template relative to the API prefix, handler); the OpenAPI paths must match these."""


def _pattern(template: str, prefix: str = API_PREFIX) -> str:
    return prefix + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template.replace(".", r"\."))


def host_handlers(base: type, prefix: str = API_PREFIX) -> list[tuple[str, type]]:
    """``(URL pattern, handler class)`` of every route in :data:`ROUTES`, each route class
    combined with the host ``base`` (routes first, so their methods win)."""
    out = []
    for template, route in ROUTES:
        cls = type(
            route.__name__,
            (route, base),
            {"__doc__": route.__doc__, "__module__": route.__module__},
        )
        out.append((_pattern(template, prefix), cls))
    return out


_HOSTED: dict[str, list] = {}


def __getattr__(name: str):
    # ``default_handlers`` is built on first use, after every route of this module is defined.
    if name == "default_handlers":
        if name not in _HOSTED:
            _HOSTED[name] = host_handlers(JupyterApiHandler)
        return _HOSTED[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
