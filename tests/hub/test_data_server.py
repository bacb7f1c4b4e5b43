"""The per-org data server in process (``DataServiceApp`` on the services' runtime): callers
resolved from a token table, keys and heads from the deployment's vault, and the answer to a
rolled-back commit log."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from atomscale_lab.hub.roles import org_scope
from atomscale_lab.hub.services import keys as keys_service
from atomscale_lab.hub.services.data import Caller, DataServiceApp, OrgServiceHolder
from atomscale_lab.schema import ARROW_STREAM
from atomscale_lab.server.access import LocalAccess
from tests.support.hub_stub import StubHubAuth
from tests.support.labdata import fill_org

TOKENS = {
    "sci-acme": {"kind": "user", "name": "ann", "scopes": [org_scope("data:read", "acme")]},
}
TABLE = "tool_state/readings"
URL = "atomscale/api/v1/tables/tool_state/readings?format=arrow"


class CallerAccess(LocalAccess):
    """The data server's view of an org, on a local vault: permissions from each caller's
    token, audit events naming the caller."""

    def permissions(self, user):
        return set(user.permissions) if isinstance(user, Caller) else set()

    def actor(self, user):
        return str(user)


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    lp.close()


def _start(vault, loop, monkeypatch):
    """A freshly started data server of acme; returns ``(server, base_url)``."""
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    holder = OrgServiceHolder(access_factory=lambda: CallerAccess("acme", vault=vault))
    service = DataServiceApp(org="acme", holder=holder)
    app = service.make_app(hub_auth=StubHubAuth(TOKENS))
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{port}{service.prefix}"


def _get(loop, url, token):
    async def go():
        try:
            r = await AsyncHTTPClient().fetch(
                url, headers={"Authorization": f"token {token}", "Accept": ARROW_STREAM}
            )
            return r.code, r.headers.get("Content-Type"), r.body
        except HTTPClientError as e:
            return e.code, e.response.headers.get("Content-Type"), e.response.body

    return loop.run_until_complete(go())


def test_rolled_back_log_is_an_audited_integrity_refusal(vault, loop, monkeypatch):
    vault.create_org("acme", "us")
    fill_org(vault, "acme", runs=3, points=20, detail_runs=2)
    table = vault.store("acme").table(TABLE)
    log = next(table.path.rglob("commits.jsonl"))
    old_log = log.read_bytes()
    table.write(table.read().slice(0, 5), actor="test")  # the registry's head moves on
    log.write_bytes(old_log)  # the rollback: an older, valid log

    server, base = _start(vault, loop, monkeypatch)
    try:
        code, ctype, body = _get(loop, base + URL, "sci-acme")
    finally:
        server.stop()
    assert code == 500
    assert ctype.startswith("application/json")
    doc = json.loads(body)
    assert "rolled back" in doc["message"] and doc["reason"] == "Integrity Check Failed"
    events = vault.audit("acme").events(action="data.integrity")
    assert len(events) == 1, events
    (ev,) = events
    assert ev["actor"] == "ann" and ev["outcome"] == "denied"
    assert "rolled back" in ev["detail"]["reason"] and ev["detail"]["request"] == "table"
    assert not vault.audit("acme").events(actor="ann", action="data.read")  # nothing was served
    # the key service takes this event from the org's data server (hub mode posts it there)
    assert keys_service.DATA_SERVER_ACTIONS.match("data.integrity")


def test_intact_log_is_served_and_audited_as_a_read(vault, loop, monkeypatch):
    vault.create_org("acme", "us")
    fill_org(vault, "acme", runs=3, points=20, detail_runs=2)
    server, base = _start(vault, loop, monkeypatch)
    try:
        code, ctype, body = _get(loop, base + URL, "sci-acme")
    finally:
        server.stop()
    assert code == 200 and ctype == ARROW_STREAM
    assert pa.ipc.open_stream(body).read_all().num_rows == 2 * 20
    assert not vault.audit("acme").events(action="data.integrity")
    (ev,) = vault.audit("acme").events(actor="ann", action="data.read")
    assert ev["detail"]["table"] == TABLE


def test_an_empty_table_is_an_empty_arrow_stream(vault, loop, monkeypatch):
    # nothing is flushed before the stream's end: the answer must still be a complete stream
    vault.create_org("acme", "us")
    fill_org(vault, "acme", runs=3, points=20, detail_runs=0)
    server, base = _start(vault, loop, monkeypatch)
    try:
        code, ctype, body = _get(loop, base + URL, "sci-acme")
    finally:
        server.stop()
    assert code == 200 and ctype == ARROW_STREAM, body[:200]
    assert pa.ipc.open_stream(body).read_all().num_rows == 0
