"""Starting and stopping a real jupyter server for the notebook tests (by pid, loopback only)."""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.net import free_port


def kernel_env(url: str, token: str) -> dict:
    """Environment for a kernel that should use the server at ``url`` (no root key in it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATOMSCALE_ROOT_KEY", "JUPYTERHUB_"))
    }
    env.update(
        {
            "ATOMSCALE_LAB_URL": url,
            "ATOMSCALE_LAB_TOKEN": token,
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        }
    )
    return env


def start_server(env: dict, root_dir: Path, org: str, log_path: Path, extra=()):
    """Start ``jupyter server`` for ``org``; returns (process, url, token)."""
    port = free_port()
    token = secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir}",
        f"--IdentityProvider.token={token}",
        '--ServerApp.jpserver_extensions={"atomscale_lab": True}',
        f"--AtomscaleLab.org={org}",
        *extra,
    ]
    if os.geteuid() == 0:  # CI runs as root; jupyter refuses that without this flag
        cmd.append("--allow-root")
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    wait_ready(proc, url, token, log_path)
    return proc, url, token


def wait_ready(proc, url: str, token: str, log_path: Path, timeout: float = 60) -> None:
    """Wait until the extension's status endpoint answers; stop the server and raise if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter server exited: {log_path.read_text()[-3000:]}")
        try:
            r = requests.get(
                url + "atomscale/api/v1/status",
                headers={"Authorization": f"token {token}"},
                timeout=2,
            )
            if r.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"jupyter server did not answer: {log_path.read_text()[-3000:]}")


def stop_server(proc) -> None:
    """Stop a server we started, by its pid (and its process group: kernels it started)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
