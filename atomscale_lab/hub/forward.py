"""The server extension of a hub user's server: a keyless pass-through to the org's data server.

In hub mode the ``atomscale_lab`` extension (which decrypts in-process) is not loaded in users'
servers; this one is (``atomscale_lab.hub.configure`` writes the servers' config). It serves the
same URLs, ``<base_url>/atomscale/api/v1/*``, so the lab sidebar works unchanged, and forwards each
request of the server's owner to ``/services/atomscale-data-<org>/atomscale/api/v1/*`` through
the hub's public URL:

- the method, the query (without a ``token`` parameter), ``Accept``, ``Content-Type`` and the
  body as sent; ``Authorization: token <this server's JUPYTERHUB_API_TOKEN>``, which carries the
  owner's org scopes — so the data server checks and audits the owner;
- the answer's status, headers (hop-by-hop ones dropped) and body, streamed chunk by chunk.

Requests of anyone but the owner get 403 (they would act with the owner's scopes). Kernels get
``ATOMSCALE_LAB_URL`` naming the data server, which ``Workspace`` calls directly with the kernel's
own token. This module imports neither pyarrow nor pandas: the server starts as fast as it can.
"""

from __future__ import annotations

import os

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import httputil, web

AUTH_RESOURCE = "atomscale"
API_PREFIX = "/atomscale/api/v1/"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length", "server", "date"}


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
        """Send the request on to the data server and stream its answer back."""
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        access = self.access
        if self.current_user.username != access.owner:
            raise web.HTTPError(403, "only this server's owner can use its data API")
        url = access.data_url + path
        query = "&".join(p for p in self.request.query.split("&")
                         if p and p.split("=", 1)[0] != "token")
        if query:
            url += "?" + query
        headers = {"Authorization": f"token {access.token}"}
        for h in ("Accept", "Content-Type"):
            if self.request.headers.get(h):
                headers[h] = self.request.headers[h]
        state = {"started": False}

        def on_header(line: str) -> None:
            line = line.rstrip("\r\n")
            if not line:
                return
            if line.startswith("HTTP/"):
                start = httputil.parse_response_start_line(line)
                if start.code != 100:
                    self.set_status(start.code, start.reason)
                return
            name, _, value = line.partition(":")
            if name.strip().lower() not in _HOP_BY_HOP:
                self.set_header(name.strip(), value.strip())

        def on_chunk(chunk: bytes) -> None:
            state["started"] = True
            self.write(chunk)
            self.flush()

        method = self.request.method.upper()
        req = HTTPRequest(url, method=method, headers=headers,
                          body=self.request.body if method in ("POST", "PUT", "PATCH") else None,
                          ca_certs=access.ca_file, validate_cert=True,
                          header_callback=on_header, streaming_callback=on_chunk,
                          request_timeout=access.timeout, connect_timeout=10,
                          allow_nonstandard_methods=True, follow_redirects=False,
                          decompress_response=False)
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        if resp.code == 599 and not state["started"]:
            self.clear()
            raise web.HTTPError(503, "the org's data server is unreachable: "
                                     f"{type(resp.error).__name__}")
        await self.finish()


def _load_jupyter_server_extension(serverapp) -> None:
    from .access import HubAccess

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
