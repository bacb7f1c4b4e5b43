"""The ingest service as a subprocess of a test (used by the ingest suite and the benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.net import free_port


class Service:
    """The ingest service as a subprocess of the test."""

    def __init__(self, home: Path, root_key: str, extra_args=(), state_dir: Path | None = None):
        self.home, self.root_key, self.extra = home, root_key, list(extra_args)
        if state_dir is not None:  # one replica of several: its own WAL, state and TLS files
            self.extra += ["--state-dir", str(state_dir)]
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = (state_dir or home / "ingest") / "tls" / "cert.pem"
        self.log_name = "service" if state_dir is None else f"service-{Path(state_dir).name}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.http = requests.Session()
        self.http.trust_env = False

    def start(self, wait=True):
        """Start the service (and wait until it answers)."""
        env = dict(os.environ, ATOMSCALE_HOME=str(self.home), ATOMSCALE_ROOT_KEY=self.root_key)
        env.pop("ATOMSCALE_ROOT_KEY_FILE", None)
        self.log = open(self.home / f"{self.log_name}-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atomscale_lab.ingest.service",
                "--port",
                str(self.port),
                "--flush-interval",
                "0.2",
                *self.extra,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=30.0):
        """Poll /health until it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.proc.returncode}: "
                    + (self.home / f"{self.log_name}-{self.starts - 1}.log").read_text()
                )
            try:
                if self.cert.exists():
                    self.http.get(self.url + "/health", verify=str(self.cert), timeout=1)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("the ingest service did not become ready")

    def kill(self):
        """SIGKILL the service by pid and reap it."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def stop(self):
        """SIGTERM the service by pid (it flushes and exits)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc:
            self.log.close()

    def request(self, method, path, key=None, **kw):
        """One HTTPS request to the service."""
        headers = kw.pop("headers", {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(
            method, self.url + path, headers=headers, verify=str(self.cert), timeout=30, **kw
        )
