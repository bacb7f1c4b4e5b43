"""The Atomscale-compatible API of the ingest service: thin Tornado handlers over ``SdkApi``.

Served under ``<service base>/sdk/`` (set the SDK's ``AS_API_ENDPOINT`` to that URL with its
trailing slash); the key goes in ``X-API-KEY``. The SDK's streamer joins ``{endpoint}/tool-state``
with a slash of its own, so repeated slashes after ``sdk`` are accepted. Endpoints of the hosted
platform this deployment has no counterpart for answer 404 with a JSON body. See
``docs/atomscale-sdk.md``.
"""

from __future__ import annotations

import inspect
import json
import time

import orjson
from tornado import web

from atomscale_lab.errors import AtomscaleError
from atomscale_lab.ingest.core import BatchTooLarge
from atomscale_lab.ingest.handler import IngestHandler
from atomscale_lab.ingest.sdkapi import SPECTRUM_TYPES, SdkApi

BASE = "sdk/"
"""Path of the compatible API below the ingest service's base URL."""


class _SdkBase(IngestHandler):
    """Accepts the SDK's ``X-API-KEY`` header; errors carry ``detail`` like the hosted API."""

    def initialize(self, api: SdkApi, **kw):
        super().initialize(**kw)
        self.api = api

    def prepare(self):
        # The SDK sends its key as X-API-KEY: hand it to the ingest service's own key check
        # (one place that authenticates, audits and throttles) as the bearer token it reads.
        xkey = self.request.headers.get("X-API-KEY")
        if xkey and "Authorization" not in self.request.headers:
            self.request.headers["Authorization"] = f"Bearer {xkey}"
        return super().prepare()

    def fail(self, exc: AtomscaleError):
        """Like the ingest API's errors, with the message also as ``detail``."""
        self._detail = str(exc)
        super().fail(exc)

    def finish(self, chunk=None):
        """Add ``detail`` to JSON error bodies (the hosted API's error shape)."""
        if getattr(self, "_detail", None) and isinstance(chunk, str) and chunk.startswith("{"):
            doc = json.loads(chunk)
            doc.setdefault("detail", self._detail)
            chunk = json.dumps(doc)
        return super().finish(chunk)

    def params(self) -> dict[str, list[str]]:
        """Query arguments, each a list (repeated parameters are the SDK's lists)."""
        return {
            k: [v.decode("utf-8", "replace") for v in vs]
            for k, vs in self.request.query_arguments.items()
        }

    async def call(self, scope, action, fn, *args, status=200, body=False, **kw):
        """Authenticate (``scope`` or any, audited), then read the JSON body if ``body`` (it
        becomes the last argument), run ``fn(key, …)`` in the pool, reply."""
        try:
            key = await self.key(scope, action)
            if body:
                args = (*args, self.json_body())
            self.reply(await self.run(fn, key, *args, **kw), status)
        except AtomscaleError as e:
            self.fail(e)

    def reply(self, doc, status: int = 200):
        """Finish with a JSON document (a list too; numpy arrays as JSON arrays, NaN as null)."""
        self.set_status(status)
        self.finish(orjson.dumps(doc, default=str, option=orjson.OPT_SERIALIZE_NUMPY))


class GatewayTimeHandler(_SdkBase):
    """``GET gateway/time``: the service's clock for the SDK's clock correction (no key)."""

    def get(self):
        """Return receive and transmit times in Unix milliseconds."""
        received = time.time() * 1000.0
        self.reply({"receivedAtUnixMs": received, "transmittedAtUnixMs": time.time() * 1000.0})


class EntriesHandler(_SdkBase):
    """``GET data_entries/``: the catalogue, filtered like the hosted one."""

    async def get(self):
        """Catalogue rows of the key's org (a bare JSON array)."""
        await self.call(None, "sdk.search", self.api.search, self.params())


class TimeseriesHandler(_SdkBase):
    """``GET tool-state/{id}/timeseries/``: a run's channels."""

    async def get(self, data_id):
        """``{"properties": {channel: {unix_timestamp_ms, values, relative_time_seconds,
        units}}}``."""
        await self.call(None, "sdk.timeseries", self.api.timeseries, data_id)


class SpectrumHandler(_SdkBase):
    """``GET {xrd|xps|raman|photoluminescence}/{id}``: one metrology item's spectrum."""

    async def get(self, kind, data_id):
        """The item's spectrum in the hosted API's field names."""
        await self.call("read:metrology", "sdk.spectrum", self.api.spectrum, kind, data_id)


class SamplesHandler(_SdkBase):
    """``GET/POST physical_samples/``."""

    async def get(self):
        """The org's physical samples."""
        await self.call(None, "sdk.samples", self.api.samples)

    async def post(self):
        """Create a sample; a taken name answers 409 with the existing sample's id."""
        try:
            key = await self.key(None, "sdk.sample_create")
            body = self.json_body()
            created, doc = await self.run(self.api.create_sample, key, body)
            if not created:
                self.reply(
                    {
                        "message": "a physical sample of that name exists",
                        "reason": "Conflict",
                        "detail": doc,
                    },
                    409,
                )
            else:
                self.reply(doc, 201)
        except AtomscaleError as e:
            self.fail(e)


class LinkSampleHandler(_SdkBase):
    """``POST data_entries/physical_sample``."""

    async def post(self):
        """Give runs a physical sample."""
        await self.call(None, "sdk.link_sample", self.api.link_sample, body=True)


class ProjectsHandler(_SdkBase):
    """``GET projects/``."""

    async def get(self):
        """The projects named by the org's runs."""
        await self.call(None, "sdk.projects", self.api.projects)


class TrackingHandler(_SdkBase):
    """``POST projects/{id}/configuration/tracking_samples``."""

    async def post(self, project_id):
        """Record the project's tracked sample."""
        await self.call(None, "sdk.tracking", self.api.track_sample, project_id, body=True)


class TagsHandler(_SdkBase):
    """``GET/POST tags/``."""

    async def get(self):
        """The org's tags."""
        await self.call(None, "sdk.tags", self.api.tags)

    async def post(self):
        """Create a tag (or return the one of that name)."""
        await self.call(None, "sdk.tag_create", self.api.create_tag, status=201, body=True)


class TagItemsHandler(_SdkBase):
    """``POST tags/data-items/``."""

    async def post(self):
        """Attach tags to data items."""
        await self.call(None, "sdk.tag_attach", self.api.attach_tags, body=True)


class InitializeHandler(_SdkBase):
    """``POST tool-state/stream/initialize``."""

    async def post(self):
        """Open a stream of a new run; ``{data_id, processed_data_id}``."""
        await self.call(
            "ingest:tool_state", "sdk.stream_initialize", self.api.initialize, body=True
        )


@web.stream_request_body
class ChunkHandler(_SdkBase):
    """``POST tool-state/stream/chunk`` and ``…/chunk/multi``: one chunk of points."""

    def initialize(self, multi: bool = False, **kw):
        """``multi``: the route of multi-channel chunks."""
        super().initialize(**kw)
        self.multi = multi

    async def prepare(self):
        """Authenticate before any of the body is read, then collect it up to the batch limit."""
        res = super().prepare()
        if inspect.isawaitable(res):
            await res
        if self._finished:
            return
        self._parts: list[bytes] = []
        self._size = 0
        try:
            self._key = await self.key("ingest:tool_state", "sdk.chunk")
        except AtomscaleError as e:
            return self.fail(e)
        self.request.connection.set_max_body_size(self.max_body * 2)

    def data_received(self, chunk):
        """Accumulate the body; past the limit, drop it (answered with 413)."""
        self._size += len(chunk)
        if self._size <= self.max_body:
            self._parts.append(chunk)
        else:
            self._parts = []

    async def post(self):
        """Store the chunk (a retry is acknowledged, not stored again)."""
        try:
            if self._size > self.max_body:
                raise BatchTooLarge(
                    f"the chunk is larger than {self.max_body} bytes; send smaller chunks",
                    field="body",
                )
            body = self.json_body(b"".join(self._parts))
            self.reply(await self.run(self.api.chunk, self._key, body, multi=self.multi))
        except AtomscaleError as e:
            self.fail(e)


class FinalizeHandler(_SdkBase):
    """``POST tool-state/stream/{id}/finalize``."""

    async def post(self, data_id):
        """Close the stream once its chunks are stored; the run becomes ``success``."""
        await self.call("ingest:tool_state", "sdk.stream_finalize", self.api.finalize, data_id)


class UnavailableHandler(_SdkBase):
    """Endpoints of the hosted platform with no counterpart here: 404 with a JSON body."""

    def prepare(self):
        """Answer every method with 404."""
        self.set_status(404)
        self.finish(
            json.dumps(
                {
                    "message": "this endpoint of the hosted Atomscale platform is not available in "
                    "atomscale-lab (see docs/atomscale-sdk.md)",
                    "detail": "not available in atomscale-lab",
                    "reason": "NotFound",
                }
            )
        )


def routes(base: str, kw: dict) -> list:
    """The compatible API's routes below ``base`` (the ingest service's prefix)."""
    # no core: an application built only to list its routes (the API description test)
    kw = {**kw, "api": SdkApi(kw["core"]) if kw.get("core") is not None else None}
    p = base + BASE.rstrip("/") + "/+"
    end = "/*$"
    seg = r"([^/]+)"
    kinds = "(" + "|".join(SPECTRUM_TYPES) + ")"
    return [
        (p + "gateway/time" + end, GatewayTimeHandler, kw),
        (p + "data_entries" + end, EntriesHandler, kw),
        (p + "data_entries/physical_sample" + end, LinkSampleHandler, kw),
        (p + "tool-state/stream/initialize" + end, InitializeHandler, kw),
        (p + "tool-state/stream/chunk" + end, ChunkHandler, kw),
        (p + "tool-state/stream/chunk/multi" + end, ChunkHandler, {**kw, "multi": True}),
        (p + f"tool-state/stream/{seg}/finalize" + end, FinalizeHandler, kw),
        (p + f"tool-state/{seg}/timeseries" + end, TimeseriesHandler, kw),
        (p + f"{kinds}/{seg}" + end, SpectrumHandler, kw),
        (p + "physical_samples" + end, SamplesHandler, kw),
        (p + "projects" + end, ProjectsHandler, kw),
        (p + f"projects/{seg}/configuration/tracking_samples" + end, TrackingHandler, kw),
        (p + "tags" + end, TagsHandler, kw),
        (p + "tags/data-items" + end, TagItemsHandler, kw),
        (p + ".*", UnavailableHandler, kw),
    ]
