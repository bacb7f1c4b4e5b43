"""``LiveRun`` follows a run end to end: instrument → ingest service → store → Jupyter server
REST API → widget, and stops when the run is complete."""

import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.support.net import free_port


def _rows(start, n):
    t0 = datetime(2026, 4, 1, tzinfo=UTC)
    return [
        {
            "time": (t0 + timedelta(seconds=start + i)).isoformat(),
            "channel": ch,
            "value": float(start + i),
            "unit": "a.u.",
        }
        for i in range(n)
        for ch in ("rheed_intensity", "growth_rate")
    ]


@pytest.fixture
def lab_server(deployment, root_key, tmp_path):
    """A ``jupyter server`` with the extension on for acme; stopped by pid."""
    port, token = free_port(), secrets.token_hex(16)
    root = tmp_path / "lab"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB_"))}
    env.update(
        ATOMSCALE_HOME=str(deployment.home),
        ATOMSCALE_ROOT_KEY=root_key,
        JUPYTER_RUNTIME_DIR=str(root / ".rt"),
        JUPYTER_CONFIG_DIR=str(root / ".cfg"),
        JUPYTER_DATA_DIR=str(root / ".data"),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        '--ServerApp.jpserver_extensions={"atomscale_lab": True}',
        "--AtomscaleLab.org=acme",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "jupyter server did not start"
            try:
                if (
                    requests.get(
                        url + "atomscale/api/v1/status",
                        timeout=2,
                        headers={"Authorization": f"token {token}"},
                    ).status_code
                    == 200
                ):
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        yield url, token
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def _until(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_live_run_follows_until_complete(deployment, service, lab_server):
    from atomscale_lab.client.widgets.live import LiveRun
    from atomscale_lab.client.workspace import Workspace

    key = deployment.key()
    r = service.request(
        "POST", "/streams", key, json={"run_id": "live-1", "tool": "mbe1", "category": "process"}
    )
    sid = r.json()["id"]
    r = service.request(
        "POST", f"/streams/{sid}/batches", key, json={"batch_id": "1", "rows": _rows(0, 30)}
    )
    assert r.status_code == 200
    url, token = lab_server
    ws = Workspace(url=url, token=token)
    assert _until(lambda: ws.run("live-1").get("status") == "active")
    live = LiveRun(ws, "live-1", interval=0.3)
    try:
        assert _until(lambda: len(live.frame) == 60), (len(live.frame), live.error)
        assert _until(lambda: "60 rows" in live.status_line.value)
        assert live.status == "active" and live.following
        assert "active" in live.status_line.value
        assert _until(
            lambda: live.plot.outputs and "image/png" in live.plot.outputs[0].get("data", {})
        )
        service.request(
            "POST", f"/streams/{sid}/batches", key, json={"batch_id": "2", "rows": _rows(30, 20)}
        )
        assert _until(lambda: len(live.frame) == 100), (len(live.frame), live.error)
        r = service.request("POST", f"/streams/{sid}/finalize", key)
        assert r.json()["status"] == "complete"
        assert live.wait(20), "the widget did not stop after the run completed"
        assert live.status == "complete" and not live.following
        assert "complete" in live.status_line.value
        assert len(live.frame) == 100
        assert not live.frame.duplicated(["time", "channel"]).any()
        assert sorted(set(live.frame["value"])) == [float(i) for i in range(50)]
    finally:
        live.stop()
