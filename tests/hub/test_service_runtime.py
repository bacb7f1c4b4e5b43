"""The services' runtime (``atomscale_lab.runtime``): one JSON error shape and status map for
the hub services and ingest, one choice of TLS, the hub's TLS files from ``HubAuth``'s traits."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from atomscale_lab.errors import IntegrityError, NotFound, ValidationError
from atomscale_lab.hub.services.base import ServiceApp
from atomscale_lab.ingest.handler import IngestHandler
from atomscale_lab.runtime import JsonHandler, server_tls
from atomscale_lab.tls import HubSsl, ensure_certs

ERRORS = {
    "field": ValidationError("run_id must be a string", field="run_id"),
    "integrity": IntegrityError("the commit log was rolled back"),
    "missing": NotFound("no run 'r9'"),
    "http": web.HTTPError(403, "no access to org 'acme'"),
}


class Raises(JsonHandler):
    def get(self, name):
        raise ERRORS[name]


class IngestRaises(IngestHandler):
    def initialize(self):
        super().initialize(core=None, keys=None, pool=None, max_body=0, limits=None)

    def get(self, name):
        raise ERRORS[name]


@pytest.fixture
def fetch():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = web.Application([(r"/svc/(\w+)", Raises), (r"/ingest/(\w+)", IngestRaises)])
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])

    def get(path):
        async def go():
            try:
                r = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}")
            except HTTPClientError as e:
                r = e.response
            return r.code, r.headers.get("Content-Type"), json.loads(r.body)

        return loop.run_until_complete(go())

    yield get
    server.stop()
    asyncio.set_event_loop(None)
    loop.close()


def test_domain_errors_answer_with_their_status_and_a_json_body(fetch):
    assert fetch("/svc/field") == (
        400,
        "application/json",
        {"message": "run_id must be a string", "reason": "Bad Request", "field": "run_id"},
    )
    assert fetch("/svc/integrity")[0::2] == (
        500,
        {"message": "the commit log was rolled back", "reason": "Internal Server Error"},
    )
    assert fetch("/svc/missing")[0::2] == (404, {"message": "no run 'r9'", "reason": "Not Found"})
    assert fetch("/svc/http")[0::2] == (
        403,
        {"message": "no access to org 'acme'", "reason": "Forbidden"},
    )
    # ingest keeps its own reason (the error's class), on the same runtime
    assert fetch("/ingest/field")[0::2] == (
        400,
        {"message": "run_id must be a string", "reason": "ValidationError", "field": "run_id"},
    )
    assert fetch("/ingest/integrity")[0::2] == (
        500,
        {"message": "the commit log was rolled back", "reason": "IntegrityError"},
    )


def test_the_hub_services_take_their_tls_files_from_hub_auth(tmp_path, monkeypatch):
    from jupyterhub.services.auth import HubAuth

    for name in ("CERTFILE", "KEYFILE", "CLIENT_CA"):
        monkeypatch.delenv(f"JUPYTERHUB_SSL_{name}", raising=False)
    certs = ensure_certs(tmp_path / "certs")
    app = ServiceApp("atomscale-test", [])
    assert app.ssl_context() is None  # no internal_ssl in this environment
    auth = HubAuth(certfile=str(certs.cert), keyfile=str(certs.key), client_ca=str(certs.ca))
    assert HubSsl.of(auth) == HubSsl(str(certs.cert), str(certs.key), str(certs.ca))
    ctx = app.ssl_context(auth)
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert app.ssl_context(HubAuth(certfile="", keyfile="")) is None


def test_one_choice_of_tls_for_every_service(tmp_path):
    certs = ensure_certs(tmp_path / "certs")
    hub = HubSsl(str(certs.cert), str(certs.key), str(certs.ca))
    # the deployment's own certificate first: no client certificate asked for
    own = server_tls(hub, certfile=certs.cert, keyfile=certs.key)
    assert own.verify_mode == ssl.CERT_NONE
    # the hub's internal one next: mutual TLS
    assert server_tls(hub, self_signed_dir=tmp_path / "self").verify_mode == ssl.CERT_REQUIRED
    assert not (tmp_path / "self").exists()
    # else a self-signed one, made once
    made = server_tls(HubSsl(), self_signed_dir=tmp_path / "self")
    assert made is not None and (tmp_path / "self" / "cert.pem").exists()
    assert server_tls(HubSsl()) is None
