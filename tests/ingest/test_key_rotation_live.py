"""``org rotate-key --rewrite`` while a server and the ingest service run: both keep working
without a restart (they re-fetch the org's keys once, on the first unseen key version)."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.nbserver import start_server, stop_server

API = "atomscale/api/v1/"


def _rows(n, start=0):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {"time": (t0 + timedelta(seconds=start + i)).isoformat(), "channel": "T", "value": float(i)}
        for i in range(n)
    ]


@pytest.fixture
def lab_server(deployment, root_key, tmp_path):
    """A real jupyter server with the extension for ``acme``, stopped by pid."""
    from atomscale_lab.cli import demo

    demo.generate(deployment.vault, "acme", runs=4, seed=3, points_per_run=30)
    env = dict(os.environ, ATOMSCALE_HOME=str(deployment.home), ATOMSCALE_ROOT_KEY=root_key)
    env.pop("ATOMSCALE_ROOT_KEY_FILE", None)
    root = tmp_path / "nb"
    root.mkdir()
    proc, url, token = start_server(env, root, "acme", tmp_path / "server.log")
    yield url, token, env
    stop_server(proc)


def test_rotation_reaches_a_running_server_and_ingest(deployment, service, lab_server, venv_bin):
    import requests

    url, token, env = lab_server
    http = requests.Session()
    http.trust_env = False
    auth = {"Authorization": f"token {token}"}

    def runs():
        r = http.get(url + API + "runs", headers=auth, timeout=30)
        return r.status_code, r.json()

    code, before = runs()
    assert code == 200 and before["total"] == 4
    run0 = before["runs"][0]["run_id"]
    key = deployment.key()
    r = service.request(
        "POST", "/streams", key, json={"run_id": "live-1", "tool": "mbe1", "category": "process"}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert (
        service.request(
            "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b1", "rows": _rows(5)}
        ).status_code
        == 200
    )
    old_version = max(deployment.vault.org_keys("acme").keys)

    subprocess.run(
        [str(venv_bin / "atomscale-lab"), "org", "rotate-key", "acme", "--rewrite"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert max(deployment.vault.org_keys("acme").keys) == old_version + 1

    # the server: pages and one-run reads of files rewritten under the new key
    code, after = runs()
    assert code == 200, after
    assert after["total"] >= 4
    r = http.get(url + API + f"runs/{run0}/process", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    status = http.get(url + API + "status", headers=auth, timeout=30).json()
    assert status["key"]["version"] == old_version + 1
    # the ingest service: the open stream goes on, finalizes, and its rows are stored
    assert (
        service.request(
            "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b2", "rows": _rows(5, 5)}
        ).status_code
        == 200
    )
    r = service.request("POST", f"/streams/{sid}/finalize", key)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "complete"
    assert deployment.rows("acme", "process/series", "live-1").num_rows == 10
    # a key issued after the rotation (its pepper comes from the new version) is accepted
    fresh = deployment.key()
    r = service.request(
        "POST", "/streams", fresh, json={"run_id": "live-2", "tool": "mbe1", "category": "process"}
    )
    assert r.status_code == 201, r.text
    # and the server sees both ingested runs (its catalogue is rebuilt in the background when
    # the log changes, so a page answered meanwhile may still be an earlier one)
    deadline = time.monotonic() + 30
    while True:
        code, latest = runs()
        if latest.get("total") == before["total"] + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 200 and latest["total"] == before["total"] + 2, latest
    assert {"live-1", "live-2"} <= {r["run_id"] for r in latest["runs"]}
