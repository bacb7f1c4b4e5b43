"""The per-org data server in process (``DataServiceApp`` on the services' runtime): callers
resolved from a token table, keys and heads from the deployment's vault, and the answer to a
rolled-back commit log."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pyarrow as pa
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from atomscale_lab.errors import KeyUnavailable
from atomscale_lab.hub.roles import org_scope
from atomscale_lab.hub.services import keys as keys_service
from atomscale_lab.hub.services.data import (
    Caller,
    DataServiceApp,
    OrgServiceHolder,
    ServiceAuditSink,
)
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


class PostingAccess(CallerAccess):
    """As the data server in hub mode: events go through a ``ServiceAuditSink`` (here its
    "key service" appends to the local log, after ``delay`` seconds, or fails)."""

    def __init__(self, *a, delay: float = 0.0, fail: bool = False, **kw):
        super().__init__(*a, **kw)
        self.delay, self.fail = delay, fail
        self.posted: list[tuple[str, dict]] = []
        self._sink = ServiceAuditSink(self)

    def audit(self):
        return self._sink

    def _call(self, method, service, path, *, json=None, **kw):
        assert (method, service, path) == ("POST", "atomscale-keys", "orgs/acme/audit")
        self.posted.append((threading.current_thread().name, json))
        time.sleep(self.delay)  # a slow key service: the answer must still wait for it
        if self.fail:
            raise KeyUnavailable("the hub service atomscale-keys is unreachable: test")
        self.vault.audit("acme").record(
            json["actor"], json["action"], json["outcome"], **json["detail"]
        )


def _start_posting(vault, loop, monkeypatch, **kw):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    access = PostingAccess("acme", vault=vault, **kw)
    holder = OrgServiceHolder(access_factory=lambda: access)
    service = DataServiceApp(org="acme", holder=holder)
    tokens = {
        **TOKENS,
        "support-acme": {"kind": "user", "name": "sup", "scopes": [org_scope("config", "acme")]},
    }
    app = service.make_app(hub_auth=StubHubAuth(tokens))
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{port}{service.prefix}atomscale/api/v1/", access


def _reads(vault):
    return vault.audit("acme").events(actor="ann", action="data.read", limit=100)


def test_reads_are_answered_only_once_their_event_is_recorded(vault, loop, monkeypatch):
    vault.create_org("acme", "us")
    fill_org(vault, "acme", runs=3, points=20, detail_runs=2)
    server, base, access = _start_posting(vault, loop, monkeypatch, delay=0.3)
    rid = "R-00001"
    try:
        code, ctype, body = _get(loop, base + f"runs/{rid}/process?format=arrow", "sci-acme")
        assert code == 200 and ctype == ARROW_STREAM
        rows = pa.ipc.open_stream(body).read_all().num_rows
        (ev,) = _reads(vault)  # on disk when the answer arrived, despite the slow key service
        assert ev["detail"]["table"] == "process/series" and ev["detail"]["run_ids"] == [rid]
        assert ev["detail"]["rows"] == rows > 0
        # a catalogue page as JSON: one more event, the page's runs
        code, _, body = _get(loop, base + "runs?per_page=2&format=json", "sci-acme")
        assert code == 200
        page = json.loads(body)["runs"]
        ev = _reads(vault)[0]
        assert ev["detail"]["run_ids"] == [r["run_id"] for r in page]
        # posted from the audit pool (while the answer was encoded), once per request
        reads = [t for t, body in access.posted if body["action"] == "data.read"]
        assert [t.startswith("atomscale-audit") for t in reads] == [True, True]
        # a refusal is recorded before its 403 leaves, as the caller
        code, _, _ = _get(loop, base + f"runs/{rid}/process?format=arrow", "support-acme")
        assert code == 403
        (denied,) = vault.audit("acme").events(actor="sup", action="data.read")
        assert denied["outcome"] == "denied"
    finally:
        server.stop()


def test_a_read_whose_event_cannot_be_recorded_is_not_served(vault, loop, monkeypatch):
    vault.create_org("acme", "us")
    fill_org(vault, "acme", runs=3, points=20, detail_runs=2)
    server, base, access = _start_posting(vault, loop, monkeypatch)
    try:
        assert _get(loop, base + "status", "sci-acme")[0] == 200  # started (its key release)
        access.fail = True
        for path in ("runs/R-00001/process?format=arrow", "runs?per_page=2", "facets"):
            code, ctype, body = _get(loop, base + path, "sci-acme")
            assert code == 503, (path, body[:200])
            assert ctype.startswith("application/json")
            assert "atomscale-keys" in json.loads(body)["message"]
        posted = [b for _, b in access.posted if b["action"] == "data.read"]
        assert len(posted) == 3 and not _reads(vault)
    finally:
        server.stop()


def test_a_route_that_does_not_wait_still_sends_nothing_before_the_event(vault, loop, monkeypatch):
    # the host's flush() is the last guard: a route writing its answer without waiting for the
    # audit post is held there until the event is recorded
    from atomscale_lab.hub.services.data import DataApiHandler
    from atomscale_lab.server.service import OrgService

    class Hasty(DataApiHandler):
        async def get(self):
            doc = await self.call(OrgService.facets)
            self.finish({"total": doc["total"]})  # no audit_recorded()

    vault.create_org("acme", "us")
    fill_org(vault, "acme", runs=3, points=20, detail_runs=1)
    server, base, access = _start_posting(vault, loop, monkeypatch, delay=0.3)
    server.request_callback.wildcard_router.add_rules([(r"/hasty", Hasty)])
    try:
        code, _, body = _get(loop, base.split("/services/")[0] + "/hasty", "sci-acme")
        assert code == 200 and json.loads(body)["total"] == 3
        (ev,) = _reads(vault)
        assert ev["detail"]["query"] == "facets"
        access.fail = True  # and a failed post turns the answer into the post's error
        code, _, body = _get(loop, base.split("/services/")[0] + "/hasty", "sci-acme")
        assert code == 503 and "atomscale-keys" in json.loads(body)["message"]
    finally:
        server.stop()
