"""The server extension of a hub user's server: a keyless pass-through to the org's data server.

In hub mode the ``atomscale_lab`` extension (which decrypts in-process) is not loaded in users'
servers; this one is (``atomscale_lab.hub.configure`` writes the servers' config). It serves the
same URLs, ``<base_url>/atomscale/api/v1/*``, so the lab sidebar works unchanged, and forwards each
request of the server's owner to ``/services/atomscale-data-<org>/atomscale/api/v1/*`` through
the hub's public URL:

- the method, the query (without a ``token`` parameter), ``Accept``, ``Content-Type`` and the
  body as sent; ``Authorization: token <this server's JUPYTERHUB_API_TOKEN>``, which carries the
  owner's org scopes — so the data server checks and audits the owner;
- the answer's status, headers (hop-by-hop ones dropped) and body, streamed chunk by chunk, over
  a keep-alive connection pool.

Requests of anyone but the owner get 403 (they would act with the owner's scopes). Kernels get
``ATOMSCALE_LAB_URL`` naming the data server, which ``Workspace`` calls directly with the kernel's
own token. This module imports neither pyarrow nor pandas: the server starts as fast as it can.
"""

from __future__ import annotations

import asyncio
import os
import threading

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

AUTH_RESOURCE = "atomscale"
API_PREFIX = "/atomscale/api/v1/"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "server",
    "date",
}
_CHUNK = 1 << 20


def _jupyter_server_extension_points():
    return [{"module": "atomscale_lab.hub.forward"}]


class ForwardHandler(APIHandler):
    """``* /atomscale/api/v1/<path>``: forwarded to the org's data server as the owner."""

    auth_resource = AUTH_RESOURCE

    @property
    def access(self):
        """The server's :class:`~atomscale_lab.hub.access.HubAccess` (target, token, CA)."""
        return self.settings["atomscale_forward"]

    @web.authenticated
    @authorized
    async def get(self, path):
        """Forward a GET."""
        await self.forward(path)

    @web.authenticated
    @authorized
    async def post(self, path):
        """Forward a POST (with its body)."""
        await self.forward(path)

    @web.authenticated
    @authorized
    async def put(self, path):
        """Forward a PUT (with its body)."""
        await self.forward(path)

    @web.authenticated
    @authorized
    async def patch(self, path):
        """Forward a PATCH (with its body)."""
        await self.forward(path)

    @web.authenticated
    @authorized
    async def delete(self, path):
        """Forward a DELETE."""
        await self.forward(path)

    async def forward(self, path: str) -> None:
        """Send the request on to the data server and stream its answer back.

        The request runs in a worker thread on the access's keep-alive session (one TLS
        handshake per connection, not per request); chunks come back through a small queue, so a
        slow client slows the transfer instead of filling memory.
        """
        access = self.access
        if self.current_user.username != access.owner:
            raise web.HTTPError(403, "only this server's owner can use its data API")
        url = access.data_url + path
        query = "&".join(
            p for p in self.request.query.split("&") if p and p.split("=", 1)[0] != "token"
        )
        if query:
            url += "?" + query
        headers = {"Authorization": f"token {access.token}"}
        for h in ("Accept", "Content-Type"):
            if self.request.headers.get(h):
                headers[h] = self.request.headers[h]
        method = self.request.method.upper()
        body = self.request.body if method in ("POST", "PUT", "PATCH") else None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=8)
        gone = threading.Event()

        def put(item) -> None:
            if not gone.is_set():
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result(timeout=120)

        def fetch() -> None:
            import requests

            try:
                with access.session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    stream=True,
                    verify=access.ca_bundle,
                    timeout=access.timeout,
                    allow_redirects=False,
                ) as r:
                    put(("head", r.status_code, r.reason, list(r.raw.headers.items())))
                    for chunk in r.raw.stream(_CHUNK, decode_content=False):
                        if gone.is_set():
                            return
                        put(("chunk", chunk))
                put(("end",))
            except requests.RequestException as e:
                put(("error", e))
            except Exception as e:  # noqa: BLE001 - the handler turns it into an answer
                put(("error", e))

        worker = loop.run_in_executor(None, fetch)
        started = False
        try:
            while True:
                item = await queue.get()
                if item[0] == "head":
                    _, code, reason, hdrs = item
                    self.set_status(code, reason)
                    for name, value in hdrs:
                        if name.lower() not in _HOP_BY_HOP:
                            self.set_header(name, value)
                elif item[0] == "chunk":
                    started = True
                    self.write(item[1])
                    await self.flush()
                elif item[0] == "error":
                    if started:
                        raise item[1]
                    self.clear()
                    raise web.HTTPError(
                        503, f"the org's data server is unreachable: {type(item[1]).__name__}"
                    )
                else:
                    break
        finally:
            gone.set()
            while not queue.empty():  # let a blocked worker finish
                queue.get_nowait()
        await worker
        await self.finish()


def _load_jupyter_server_extension(serverapp) -> None:
    from atomscale_lab.hub.access import HubAccess

    org = os.environ.get("ATOMSCALE_ORG")
    if not org or not os.environ.get("JUPYTERHUB_API_TOKEN"):
        serverapp.log.warning("atomscale forward: not a hub-spawned server, nothing to do")
        return
    access = HubAccess(org)
    web_app = serverapp.web_app
    web_app.settings["atomscale_forward"] = access
    pattern = url_path_join(web_app.settings["base_url"], API_PREFIX) + "(?P<path>.*)"
    web_app.add_handlers(".*$", [(pattern, ForwardHandler)])
    # kernels started by this server call the data server directly, with their own token
    os.environ["ATOMSCALE_LAB_URL"] = access.data_url.removesuffix("atomscale/api/v1/")
    serverapp.log.info("atomscale forward: org %s is served by %s", org, access.data_url)
