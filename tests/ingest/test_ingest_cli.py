"""The admin commands: ``apikey create|list|revoke`` and ``ingest serve``."""

import json
import os
import signal
import subprocess
import time

import requests

from tests.support.net import free_port


def _cli(venv_bin, *args, env=None):
    return subprocess.run(
        [str(venv_bin / "atomscale-lab"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


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
        [str(venv_bin / "atomscale-lab"), "ingest", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
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
        assert _cli(venv_bin, "apikey", "revoke", "acme", prefix).returncode == 0
        r = http.get(url + f"/streams/{r.json()['id']}", headers=h, verify=str(cert))
        assert r.status_code == 401
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"flushing the WAL" in err and key.encode() not in err
