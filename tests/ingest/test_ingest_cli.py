"""The admin commands: ``apikey create|list|revoke`` and ``ingest serve``."""

import json
import os
import signal
import subprocess
import time

import requests

from atomscale_lab.errors import NotFound
from tests.support.net import free_port


def _cli(venv_bin, *args, env=None):
    return subprocess.run(
        [str(venv_bin / "atomscale-lab"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _stored(deployment) -> int:
    try:
        return deployment.rows("acme", "process/series").num_rows
    except NotFound:
        return 0


def test_apikey_commands_and_serve(deployment, venv_bin):
    out = _cli(
        venv_bin,
        "apikey",
        "create",
        "acme",
        "--scope",
        "ingest:process",
        "--expires",
        "30d",
        "--name",
        "pld-2",
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    deployment.recorder.keys.append(key)
    assert key.startswith("ask_") and len(out.stdout.splitlines()) == 1
    assert "shown only now" in out.stderr and key not in out.stderr
    prefix = key.split("_")[1]
    listed = _cli(venv_bin, "apikey", "list", "acme")
    assert prefix in listed.stdout and "pld-2" in listed.stdout and key not in listed.stdout
    doc = json.loads(_cli(venv_bin, "apikey", "list", "acme", "--json").stdout)
    assert doc[0]["prefix"] == prefix and doc[0]["state"] == "active"
    bad = _cli(
        venv_bin, "apikey", "create", "nosuch", "--scope", "ingest:process", "--expires", "30d"
    )
    assert bad.returncode != 0 and "nosuch" in bad.stderr

    port = free_port()
    proc = subprocess.Popen(
        # no flush before the stop: the rows can only reach the store through the stop's flush
        [
            str(venv_bin / "atomscale-lab"),
            "ingest",
            "serve",
            "--port",
            str(port),
            "--flush-interval",
            "3600",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wal = deployment.home / "ingest" / "wal" / "acme"
    try:
        cert = deployment.home / "ingest" / "tls" / "cert.pem"
        http = requests.Session()
        http.trust_env = False
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                if cert.exists() and http.get(url + "/health", verify=str(cert), timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        h = {"Authorization": f"Bearer {key}"}
        r = http.post(
            url + "/streams",
            headers=h,
            verify=str(cert),
            json={"run_id": "cli-run", "tool": "pld-2", "category": "process"},
        )
        assert r.status_code == 201
        sid = r.json()["id"]
        rows = [
            {"time": f"2026-01-01T00:00:0{i}+00:00", "channel": "T", "value": float(i)}
            for i in range(5)
        ]
        r = http.post(
            url + f"/streams/{sid}/batches",
            headers=h,
            verify=str(cert),
            json={"batch_id": "b1", "rows": rows},
        )
        assert r.status_code == 200, r.text
        # acknowledged = in the WAL, not yet in the store
        assert list(wal.glob("*.wal")) and _stored(deployment) == 0
        assert _cli(venv_bin, "apikey", "revoke", "acme", prefix).returncode == 0
        r = http.get(url + f"/streams/{sid}", headers=h, verify=str(cert))
        assert r.status_code == 401
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # SIGTERM: a clean exit that flushed the WAL into the store and removed its segments
    assert proc.returncode == 0, err
    assert _stored(deployment) == 5 and not list(wal.glob("*.wal"))
    assert key.encode() not in err
