"""Audit appends from user servers: actions allowed per role, a size cap on the detail, a rate
limit per token; each refusal is itself audited."""

from __future__ import annotations

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient

from atomscale_lab.hub.services import keys as keys_service
from tests.hub.test_hub_services import call, loop, services  # noqa: F401 - fixtures


def _post(call, token, action, outcome="allowed", detail=None):  # noqa: F811
    return call(
        "atomscale-keys",
        "orgs/acme/audit",
        token,
        "POST",
        {"action": action, "outcome": outcome, "detail": detail or {}},
    )


def test_allowed_events_need_the_role_that_can_do_them(call, vault):  # noqa: F811
    # a viewer reads, but cannot claim an allowed write, config change or API-key creation
    assert _post(call, "view-acme", "data.read")[0] == 201
    for action in ("data.write", "config.change", "apikey.create"):
        assert _post(call, "view-acme", action)[0] == 403, action
        # ...while reporting its own refusal of that action is what servers must do
        assert _post(call, "view-acme", action, "denied")[0] == 201, action
    # support configures, but reads no data
    assert _post(call, "support-acme", "config.change")[0] == 201
    assert _post(call, "support-acme", "data.read")[0] == 403
    assert _post(call, "support-acme", "widget.open")[0] == 403
    denied = vault.audit("acme").events(action="audit.write", limit=20)
    assert {(e["actor"], e["detail"]["attempted"]) for e in denied} == {
        ("vic", "data.write"),
        ("vic", "config.change"),
        ("vic", "apikey.create"),
        ("sup", "data.read"),
        ("sup", "widget.open"),
    }
    writes = vault.audit("acme").events(action="data.write", limit=20)
    assert {(e["actor"], e["outcome"]) for e in writes} == {("vic", "denied")}


def test_detail_size_is_capped(call, vault):  # noqa: F811
    before = len(vault.audit("acme").events(limit=1000))
    code, doc = _post(call, "sci-acme", "data.read", detail={"blob": "x" * 5000})
    assert code == 413 and "at most" in doc["message"]
    code, _ = _post(call, "sci-acme", "data.read", detail={"blob": "x" * 15000})
    assert code == 413
    assert len(vault.audit("acme").events(limit=1000)) == before
    assert _post(call, "sci-acme", "data.read", detail={"table": "process/runs"})[0] == 201


def test_appends_are_rate_limited_per_token(call, vault, monkeypatch):  # noqa: F811
    monkeypatch.setattr(keys_service.AuditHandler, "BURST", 5, raising=False)
    monkeypatch.setattr(keys_service.AuditHandler, "RATE", 0.01, raising=False)
    codes = [_post(call, "sci-acme", "data.read")[0] for _ in range(8)]
    assert codes[:5] == [201] * 5 and set(codes[5:]) == {429}
    # another token is not slowed down by the first one
    assert _post(call, "view-acme", "data.read")[0] == 201
    assert len(vault.audit("acme").events(actor="ann", action="data.read", limit=100)) == 5


def test_concurrent_appends_of_the_data_server_are_each_recorded_once(services, vault):  # noqa: F811
    # the key service appends on worker threads: events arriving together share a group
    # commit, and each 201 means that caller's own event is in the (intact) chain
    async def burst():
        async def one(i):
            r = await AsyncHTTPClient().fetch(
                f"{services['atomscale-keys']}/orgs/acme/audit",
                method="POST",
                headers={"Authorization": "token data-acme"},
                body=json.dumps({"actor": f"u{i}", "action": "data.read", "detail": {"rows": i}}),
            )
            return r.code

        return await asyncio.gather(*(one(i) for i in range(40)))

    codes = asyncio.get_event_loop_policy().get_event_loop().run_until_complete(burst())
    assert codes == [201] * 40
    log = vault.audit("acme")
    events = log.events(action="data.read", limit=100)
    assert sorted((e["actor"], e["detail"]["rows"]) for e in events) == sorted(
        (f"u{i}", i) for i in range(40)
    )
    assert all(e["detail"]["via"] == "atomscale-data-acme" for e in events)
    assert log.verify() == len(log.events(limit=1000))  # the chain holds every event
