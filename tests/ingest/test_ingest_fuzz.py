"""The ingest API: its OpenAPI document matches the service's routes, and property-based fuzzing
from that document finds no response >= 500, none outside the document, no logged exception."""

from __future__ import annotations

import json
import re
from importlib import resources

from atomscale_lab.ingest import service as ingest_service
from tests.support.apifuzz import fuzz, server_errors
from tests.support.ingest import Service


def ingest_spec() -> dict:
    """The checked-in OpenAPI document of the ingest service."""
    return json.loads(resources.files("atomscale_lab.ingest").joinpath("openapi.json").read_text())


def _route_template(pattern: str) -> str:
    path = pattern.rstrip("$")
    return re.sub(r"\(st_\[0-9a-f\]\{16\}\)", "{stream_id}", path)


def test_the_document_matches_the_routes(tmp_path):
    # only the routing table is read: without a core the SDK-compatible routes get no API object
    app = ingest_service.make_app(core=None, keys=None)
    routed = {}
    for rule in app.wildcard_router.rules:
        handler = rule.target
        if getattr(handler, "__module__", "") != ingest_service.__name__:
            continue  # routes other modules add describe themselves
        path = _route_template(rule.matcher.regex.pattern)
        methods = {
            m.lower()
            for m in ("get", "post", "put", "patch", "delete")
            if getattr(handler, m) is not getattr(ingest_service.IngestHandler, m)
        }
        routed[path] = methods
    documented = {p: set(ops) for p, ops in ingest_spec()["paths"].items()}
    assert routed == documented


def test_ingest_api_survives_fuzzing(deployment, root_key):
    svc = Service(deployment.home, root_key, ["--max-failures", "100000"])
    svc.start()
    try:
        key = deployment.key(scopes="ingest:process,ingest:tool_state,ingest:metrology")
        auth = {"Authorization": f"Bearer {key}"}
        sid = svc.request(
            "POST", "/streams", key, json={"run_id": "fz", "tool": "t", "category": "process"}
        ).json()["id"]
        failures = fuzz(
            ingest_spec(),
            svc.url,
            svc.http,
            auth,
            examples=50,
            path_values={"stream_id": sid},
            verify=str(svc.cert),
        )
        assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
        assert svc.request("GET", "/health").status_code == 200
    finally:
        svc.stop()
    log = "".join(p.read_text(errors="replace") for p in deployment.home.glob("service-*.log"))
    assert not server_errors(log), server_errors(log)[:5]
