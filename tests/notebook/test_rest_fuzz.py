"""Property-based fuzzing of the REST API from ``atomscale_lab/server/openapi.json`` against a live
server: no response >= 500, no response outside the document, no unhandled exception logged."""

from __future__ import annotations

import requests

from atomscale_lab.server.handlers import openapi_spec
from tests.support.apifuzz import fuzz, server_errors


def test_rest_api_survives_fuzzing(live_server):
    s = requests.Session()
    s.trust_env = False
    auth = {"Authorization": f"token {live_server['token']}"}
    base = live_server["url"] + "atomscale/api/v1"
    runs = s.get(base + "/runs", headers=auth, params={"per_page": 1}, timeout=30).json()
    items = s.get(base + "/metrology", headers=auth, params={"per_page": 1}, timeout=30).json()
    log_before = live_server["log"].read_text(errors="replace")
    failures = fuzz(
        openapi_spec(),
        base,
        s,
        auth,
        examples=20,
        path_values={
            "run_id": runs["runs"][0]["run_id"],
            "item_id": items["items"][0]["item_id"],
            "category": "process",
            "name": "series",
        },
    )
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    new_log = live_server["log"].read_text(errors="replace")[len(log_before) :]
    assert not server_errors(new_log), server_errors(new_log)[:5]
    # the server still answers normally afterwards
    assert s.get(base + "/status", headers=auth, timeout=30).status_code == 200
