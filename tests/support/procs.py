"""Starting, waiting for and stopping helper processes (KMS servers) by process id."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests


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
